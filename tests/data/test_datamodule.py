import copy
import json

import pytest
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

from lit_dft.data import MathDataModule, PadCollator, Preset
from lit_dft.data.presets import read_row, resolve_preset
from lit_dft.data.sampler import EpochShuffleSampler
from lit_dft.errors import LitDFTError
from lit_dft.models import TINY_MODEL

TRAINABLE = {
    "gsm8k": "gsm8k/train.jsonl",
    "math500": "math500/test.jsonl",
    "minerva_math": "minerva_math/test.jsonl",
    "olympiadbench": "olympiadbench/test.jsonl",
    "aime24": "aime24/test.jsonl",
}


def _module(**kwargs) -> MathDataModule:
    kwargs.setdefault("tokenizer_name_or_path", TINY_MODEL)
    return MathDataModule(**kwargs)


def _source_rows(path, preset, n):
    with open(path) as handle:
        rows = [json.loads(line) for _, line in zip(range(n), handle)]
    return [read_row(row, resolve_preset(preset)) for row in rows]


def _decode_examples(dm, n):
    batch = PadCollator(dm.tokenizer.pad_token_id)([dm.train_set[i] for i in range(n)])
    for i in range(n):
        ids, labels = batch.input_ids[i], batch.labels[i]
        trained = labels[labels != -100]
        prompt = ids[: dm.train_set[i]["prompt_length"]]
        yield dm.tokenizer.decode(prompt), dm.tokenizer.decode(trained), trained


@pytest.mark.parametrize("preset", sorted(TRAINABLE))
def test_every_shared_data_set_loads_with_its_preset(shared_data, preset):
    path = shared_data / TRAINABLE[preset]
    dm = _module(preset=preset, path=str(path), limit=6, max_length=8192)
    dm.setup("fit")
    assert len(dm.train_set) == 6
    expected = _source_rows(path, preset, 6)
    formatter_prompt = dm.tokenizer.apply_chat_template
    for (prompt, response, trained), row in zip(_decode_examples(dm, 6), expected):
        assert row["answers"], "every shared row has a gold answer"
        assert response == row["solution"] + dm.tokenizer.eos_token
        assert trained[-1].item() == dm.tokenizer.eos_token_id  # the model learns to stop
        messages = [{"role": "user", "content": row["question"] + "\n" + dm.instruction}]
        assert prompt == formatter_prompt(messages, tokenize=False, add_generation_prompt=True)


def test_plain_prompt_style_for_base_models(shared_data):
    dm = _module(
        preset="gsm8k", path=str(shared_data / "gsm8k/train.jsonl"), limit=3, prompt_style="plain", boxed_answers=True
    )
    dm.setup("fit")
    row = _source_rows(shared_data / "gsm8k/train.jsonl", "gsm8k", 1)[0]
    prompt, response, _ = next(_decode_examples(dm, 1))
    assert prompt == row["question"] + "\nPlease reason step by step, and put your final answer within \\boxed{}.\n"
    assert response.endswith("The final answer is $\\boxed{72}$." + dm.tokenizer.eos_token)
    assert "####" not in response


def test_qwen_boxed_prompt_is_qwen2_5_maths_evaluation_prompt_verbatim(shared_data):
    dm = _module(preset="gsm8k", path=str(shared_data / "gsm8k/train.jsonl"), limit=3, prompt_style="qwen-boxed")
    dm.system_prompt = "ignored: qwen-boxed is the exact text"
    dm.setup("fit")
    row = _source_rows(shared_data / "gsm8k/train.jsonl", "gsm8k", 1)[0]
    prompt, response, _ = next(_decode_examples(dm, 1))
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n" + row["question"] + "\n"
        "Please reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert response.endswith("#### 72<|im_end|>")


def test_qwen_boxed_needs_a_chatml_tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from lit_dft.data.formatting import PromptFormatter

    words = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, "[UNK]")), eos_token="[UNK]"
    )
    with pytest.raises(LitDFTError, match="'qwen-boxed' needs a ChatML tokenizer"):
        PromptFormatter(words, "qwen-boxed")


def test_amc23_answers_read_but_training_refused(shared_data):
    row = _source_rows(shared_data / "amc23/test.jsonl", "amc23", 1)[0]
    assert row["answers"] == ["27.0"] and row["question"].startswith("Cities")
    with pytest.raises(LitDFTError, match="evaluation only"):
        _module(preset="amc23", path=str(shared_data / "amc23/test.jsonl")).setup("fit")


def test_champ_loads_from_the_package():
    dm = _module(preset="champ", max_length=4096)
    dm.setup("fit")
    assert len(dm.train_set) == 270 and dm.report["rows"] == 270
    _, response, _ = next(_decode_examples(dm, 1))
    assert response.startswith("Let x_n, y_n, z_n be the number") and response.endswith("<|im_end|>")


def test_local_folder_loads_through_the_hub_code_path(tmp_path, shared_data):
    folder = tmp_path / "my_gsm8k"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(open(shared_data / "gsm8k/train.jsonl").readlines()[:5]))
    via_hub = _module(preset=Preset(solution="answer", answer_format="gsm8k", hub_id=str(folder)))
    via_path = _module(preset="gsm8k", path=str(folder))
    for dm in (via_hub, via_path):
        dm.setup("fit")
    assert via_hub.train_set["input_ids"] == via_path.train_set["input_ids"]


def test_column_mapping_and_messages(tmp_path):
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({"prompt_txt": "What is 1+1?", "worked": "1+1=2, so \\boxed{2}.", "final": 2}) + "\n")
    dm = _module(preset={"question": "prompt_txt", "solution": "worked", "answer": "final"}, path=str(odd))
    dm.setup("fit")
    assert next(_decode_examples(dm, 1))[1] == "1+1=2, so \\boxed{2}.<|im_end|>"
    chat = tmp_path / "chat.jsonl"
    messages = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It is 4."}]
    chat.write_text(json.dumps({"messages": messages}) + "\n")
    dm = _module(preset=Preset(messages="messages", answer=None), path=str(chat))
    dm.setup("fit")
    prompt, response, _ = next(_decode_examples(dm, 1))
    assert "What is 2+2?" in prompt and response == "It is 4.<|im_end|>"


def test_parquet_and_csv_files(tmp_path):
    import datasets

    rows = datasets.Dataset.from_list([{"question": f"q{i}", "solution": f"s{i}", "answer": str(i)} for i in range(4)])
    rows.to_parquet(tmp_path / "d.parquet")
    rows.to_csv(tmp_path / "d.csv", index=False)
    for name in ("d.parquet", "d.csv"):
        dm = _module(preset=Preset(), path=str(tmp_path / name))
        dm.setup("fit")
        assert len(dm.train_set) == 4


def test_validation_split_is_seeded_and_limit_random_samples(shared_data):
    path = str(shared_data / "gsm8k/train.jsonl")

    def val_ids(seed, **kw):
        dm = _module(preset="gsm8k", path=path, limit=40, val_split=0.25, seed=seed, **kw)
        dm.setup("fit")
        assert len(dm.val_set) == 10 and len(dm.train_set) == 30
        return dm.val_set["input_ids"]

    assert val_ids(1) == val_ids(1)
    assert val_ids(1) != val_ids(2)
    assert val_ids(1, limit_random=True) != val_ids(1)
    dm = _module(preset="gsm8k", path=path, limit=20, val_split=5)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (15, 5)


@pytest.mark.parametrize("group_by_length", [False, True])
def test_ddp_shards_are_disjoint_and_equal(shared_data, group_by_length):
    dm = _module(
        preset="gsm8k", path=str(shared_data / "gsm8k/train.jsonl"), limit=101, group_by_length=group_by_length
    )
    dm.setup("fit")
    sampler = dm.train_dataloader().sampler  # each rank holds its own copy, as in separate processes
    shards = [
        list(DistributedSamplerWrapper(copy.deepcopy(sampler), num_replicas=2, rank=r, shuffle=False)) for r in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == 51
    assert len(set(shards[0]) | set(shards[1])) == 101  # all rows covered; one repeated to even out


def test_length_grouping_cuts_padding():
    lengths = torch.randint(20, 400, (2000,), generator=torch.Generator().manual_seed(0)).tolist()

    def padding(order):
        batches = [order[i : i + 8] for i in range(0, len(order), 8)]
        return sum(max(lengths[j] for j in b) * len(b) - sum(lengths[j] for j in b) for b in batches)

    grouped = list(EpochShuffleSampler(2000, seed=0, lengths=lengths, batch_size=8))
    shuffled = torch.randperm(2000, generator=torch.Generator().manual_seed(0)).tolist()
    assert sorted(grouped) == list(range(2000))
    assert padding(grouped) < 0.2 * padding(shuffled)


# ---- bad input -----------------------------------------------------------------------------------


def test_missing_column_is_named_with_the_existing_ones(shared_data):
    with pytest.raises(LitDFTError, match=r"missing column\(s\) question; the columns are: problem, solution"):
        _module(preset="gsm8k", path=str(shared_data / "math500/test.jsonl")).setup("fit")


def test_unusable_rows_are_skipped_and_counted(tmp_path):
    data = tmp_path / "d.jsonl"
    rows = [
        {"question": "", "solution": "s"},
        {"question": 5, "solution": "s"},
        {"question": "q", "solution": None},
        {"question": "q", "solution": "s"},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dm = _module(preset=Preset(answer=None), path=str(data))
    dm.setup("fit")
    assert len(dm.train_set) == 1
    assert dm.report["skipped: empty or non-string question"] == 2
    assert dm.report["skipped: empty or non-string solution"] == 1


def test_malformed_json_line_names_file_and_line(tmp_path):
    data = tmp_path / "broken.jsonl"
    data.write_text('{"question": "q", "solution": "s"}\n{"question": "q", \n')
    with pytest.raises(LitDFTError, match=r"broken.jsonl:2: malformed JSON line"):
        _module(preset=Preset(), path=str(data)).setup("fit")


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(LitDFTError, match="Known presets: aime24, amc23, champ, gsm8k"):
        _module(preset="gsm8", path="x.jsonl")


def test_missing_file_is_named():
    with pytest.raises(LitDFTError, match="not found: nowhere.jsonl"):
        _module(preset="gsm8k", path="nowhere.jsonl").setup("fit")


def test_overlong_prompts_dropped_and_responses_truncated_or_dropped(shared_data):
    path = str(shared_data / "gsm8k/train.jsonl")
    dm = _module(preset="gsm8k", path=path, limit=50, max_length=150)
    dm.setup("fit")
    truncated = dm.report.get("truncated: response cut at max_length", 0)
    dropped = dm.report.get("dropped: prompt reaches max_length", 0)
    assert truncated > 0 and len(dm.train_set) == 50 - dropped
    assert max(len(ids) for ids in dm.train_set["input_ids"]) == 150
    dm = _module(preset="gsm8k", path=path, limit=50, max_length=150, overlong="drop")
    dm.setup("fit")
    assert dm.report["dropped: response exceeds max_length"] == truncated
    assert len(dm.train_set) == 50 - dropped - truncated


def test_empty_after_filtering_says_why(shared_data):
    with pytest.raises(LitDFTError, match="no training examples left.*dropped: prompt reaches max_length: 5"):
        _module(preset="gsm8k", path=str(shared_data / "gsm8k/train.jsonl"), limit=5, max_length=20).setup("fit")


@pytest.mark.parametrize(
    "rows, preset",
    [
        ([{"question": "q", "solution": None}] * 3, Preset(answer=None)),
        ([{"messages": [{"role": "user", "content": "q"}]}] * 2, Preset(messages="messages", answer=None)),
    ],
    ids=["null solutions", "no assistant turn"],
)
def test_a_file_whose_every_row_is_skipped_says_so(tmp_path, rows, preset):
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(LitDFTError, match=r"d.jsonl: no training examples left after filtering \(rows: \d, skipped"):
        _module(preset=preset, path=str(data)).setup("fit")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.jsonl", b"", r"empty.jsonl: no rows"),
        ("blank.jsonl", b"\n  \n\n", r"blank.jsonl: no rows"),
        (
            "latin1.jsonl",
            b'{"question": "q", "solution": "s"}\n{"question": "caf\xe9", "solution": "s"}\n',
            r"latin1.jsonl:2: not UTF-8 text \(byte 0xe9",
        ),
        ("empty.json", b"[]", r"empty.json: no rows"),
        ("empty.csv", b"", r"Cannot read .*empty.csv as csv"),
        ("header.csv", b"question,solution\n", r"header.csv: no rows"),
        ("bad.parquet", b"not parquet", r"Cannot read .*bad.parquet as parquet"),
        (
            "control.jsonl",
            b'{"question": "a\tb", "solution": "s"}\n',
            r"control.jsonl:1: malformed JSON line \(Invalid control character at column 16\)",
        ),
    ],
)
def test_unreadable_files_get_one_line_naming_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(LitDFTError, match=message):
        _module(preset=Preset(answer=None), path=str(tmp_path / name)).setup("fit")


def test_a_utf8_byte_order_mark_is_read_as_the_utf8_it_is(tmp_path):
    rows = "\n".join(json.dumps({"question": f"q{i}", "solution": f"s{i}"}) for i in range(3))
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + rows.encode() + b"\n\n")
    dm = _module(preset=Preset(answer=None), path=str(tmp_path / "bom.jsonl"))
    dm.setup("fit")
    assert len(dm.train_set) == 3


def test_missing_columns_are_listed_once(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"problem": "q", "text": "s"}) + "\n")
    with pytest.raises(LitDFTError, match=r"missing column\(s\) question, answer; the columns are: problem, text$"):
        _module(preset="gsm8k", path=str(data)).setup("fit")


def test_question_template_joins_columns_and_gold_units_are_dropped(tmp_path):
    from lit_dft.data.datamodule import EvalSet
    from lit_dft.evaluation import AnswerChecker

    data = tmp_path / "story.jsonl"
    rows = [
        {"Body": "Tom has 4 apples and buys 5 more.", "Question": "How many apples has he?", "Answer": "9 (apples)"},
        {"Body": "A box holds 3 pens.", "Question": "How many pens in 2 boxes?", "Answer": 6},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    preset = {"question": "{Body} {Question}", "solution": None, "answer": "Answer"}
    dm = _module(eval_sets=[EvalSet(preset, str(data), name="story")])
    dm.setup("test")
    problems = dm.eval_data["story"]
    assert [p["question"] for p in problems] == [f"{r['Body']} {r['Question']}" for r in rows]
    assert [p["answers"] for p in problems] == [["9"], ["6"]]
    checker = AnswerChecker()
    try:
        assert checker.check("9", problems[0]["answers"]).correct
        assert not checker.check("90", problems[0]["answers"]).correct
    finally:
        checker.close()
    missing = _module(eval_sets=[EvalSet({**preset, "question": "{Body} {Query}"}, str(data), name="story")])
    with pytest.raises(LitDFTError, match=r"missing column\(s\) Query"):
        missing.setup("test")


@pytest.mark.parametrize(
    "gold, expected",
    [("9 (apples)", "9"), ("12.5 (square meters)", "12.5"), ("(1, 2)", "(1, 2)"), ("f(x)", "f(x)"), ("x (1)", "x (1)")],
)
def test_only_a_trailing_word_unit_is_stripped(gold, expected):
    from lit_dft.data.presets import strip_unit

    assert strip_unit(gold) == expected


def test_a_preset_without_path_hub_or_package_is_refused_with_one_line(tmp_path):
    from lit_dft.data.datamodule import EvalSet

    assert resolve_preset("champ").source == "package" and resolve_preset("gsm8k").source == "hub"
    assert Preset().source == "local"  # the default columns are not CHAMP: they name no source
    with pytest.raises(LitDFTError, match=r"Preset \(inline\): no data source.*set data.path"):
        _module(preset={"question": "q", "solution": "s"}).setup("fit")
    with pytest.raises(LitDFTError, match="Eval set 'minerva_math': no data source.*set its path"):
        _module(eval_sets=[EvalSet("minerva_math")]).setup("test")
    with pytest.raises(LitDFTError, match="hub .* or a package .*, not both"):
        Preset(hub_id="org/data", package="champ-dataset")


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_probe_is_the_seeded_sample_measured_once_over_the_ranks(ranks):
    from types import SimpleNamespace

    dm = _module(preset="champ", limit=20, max_length=256)
    dm.setup("fit")
    indices = torch.randperm(20, generator=torch.Generator().manual_seed(3))[:7].tolist()
    expected = sum(len(dm.train_set[i]["input_ids"]) - dm.train_set[i]["prompt_length"] for i in indices)
    targets, batches = 0, set()
    for rank in range(ranks):
        dm.trainer = SimpleNamespace(
            distributed_sampler_kwargs={"num_replicas": ranks, "rank": rank},
            strategy=SimpleNamespace(root_device=torch.device("cpu")),
        )
        loader = list(dm.probe_dataloader(num_examples=7, seed=3, batch_size=2))
        batches.add(len(loader))
        targets += sum(int((batch.targets != -100).sum()) for batch in loader)
    assert targets == expected and len(batches) == 1  # every example once; every rank runs as many forwards


def _response_lengths(path, **kwargs) -> list[int]:
    dm = _module(preset=Preset(answer=None), path=str(path), **kwargs)
    dm.setup("fit")
    return [len(ids) - start for ids, start in zip(dm.train_set["input_ids"], dm.train_set["prompt_length"])]


def test_reference_log_probs_reach_the_label_positions_and_bad_ones_are_counted(tmp_path):
    data = tmp_path / "d.jsonl"
    rows = [{"question": f"What is {i} + {i}?", "solution": f"It is \\boxed{{{2 * i}}}."} for i in range(4)]
    rows.append({"question": "Count.", "solution": " ".join(["step"] * 300)})  # cut at max_length
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    n = _response_lengths(data)
    references = [
        [-0.1 * (k + 1) for k in range(n[0])],  # one per response token
        [-0.1] * (n[1] - 1),  # one short
        [0.5] + [-0.1] * (n[2] - 1),  # a probability above 1
        None,
        [-0.01 * (k + 1) for k in range(n[4])],
    ]
    data.write_text("\n".join(json.dumps({**r, "ref": v}) for r, v in zip(rows, references)) + "\n")
    dm = _module(preset=Preset(answer=None), path=str(data), reference_log_probs_column="ref", max_length=128)
    dm.setup("fit")
    assert dm.report["dropped: reference log-probs not one per response token"] == 1
    assert dm.report["skipped: ref not a list of finite log-probabilities (<= 0)"] == 2
    assert dm.report["truncated: response cut at max_length"] == 1 and len(dm.train_set) == 2
    batch = next(iter(dm.train_dataloader()))
    trained = batch.labels != -100
    assert torch.all(batch.reference_log_probs[~trained] == 0)
    got = sorted((batch.reference_log_probs[i][trained[i]].tolist() for i in range(2)), key=len)
    assert got[0] == pytest.approx(references[0])
    assert len(got[1]) == 128 - dm.train_set["prompt_length"][1] and got[1] == pytest.approx(
        references[4][: len(got[1])]
    )


def test_a_missing_reference_column_is_named(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "q", "solution": "s"}) + "\n")
    with pytest.raises(LitDFTError, match="missing column.*ref_lp.*the columns are: question, solution"):
        _module(preset=Preset(answer=None), path=str(data), reference_log_probs_column="ref_lp").setup("fit")


def test_a_reference_column_unusable_in_its_first_thousand_rows_is_still_read(tmp_path):
    """datasets types a column from the first rows it writes: skipped rows must not make it a column of nulls."""
    data = tmp_path / "d.jsonl"
    good = {"question": "What is 1 + 1?", "solution": "\\\\boxed{2}"}
    data.write_text(json.dumps(good) + "\n")
    (n,) = _response_lengths(data)
    rows = [{**good, "ref": None}] * 1000 + [{**good, "ref": [float("nan")] * n}, {**good, "ref": [-0.5] * n}]
    rows.append({**good, "ref": [1e-6] + [-0.5] * (n - 1)})  # another engine's rounding of log 1 is kept, as 0
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dm = _module(preset=Preset(answer=None), path=str(data), reference_log_probs_column="ref")
    dm.setup("fit")
    assert dm.report["skipped: ref not a list of finite log-probabilities (<= 0)"] == 1001
    assert dm.train_set["reference_log_probs"] == [[-0.5] * n, [0.0] + [-0.5] * (n - 1)]


# ---- pinned memory -------------------------------------------------------------------------------


def _loaders_module(shared_data) -> MathDataModule:
    from lit_dft.data.datamodule import EvalSet

    benchmark = EvalSet("aime24", str(shared_data / "aime24/test.jsonl"), limit=3)
    dm = _module(
        preset="gsm8k", path=str(shared_data / "gsm8k/train.jsonl"), limit=8, val_split=2, eval_sets=[benchmark]
    )
    dm.setup("fit")
    dm.setup("test")
    return dm


@pytest.mark.parametrize("device, pinned", [(None, False), ("cpu", False), ("cuda", True)])
def test_loaders_pin_memory_only_for_a_cuda_device(shared_data, device, pinned):
    """Pinned host memory makes Lightning's copy to the GPU asynchronous; on the CPU it would be a wasted copy."""
    from types import SimpleNamespace

    dm = _loaders_module(shared_data)
    if device is not None:  # None: no trainer, as in a notebook
        strategy = SimpleNamespace(root_device=torch.device(device))
        dm.trainer = SimpleNamespace(strategy=strategy, distributed_sampler_kwargs=None)
    loaders = [dm.train_dataloader(), *dm.val_dataloader(), dm.probe_dataloader(2), *dm.test_dataloader()]
    assert [loader.pin_memory for loader in loaders] == [pinned] * 4


def test_pinning_a_batch_pins_its_tensors_and_keeps_its_type_and_values(shared_data, monkeypatch):
    """torch's DataLoader pinning leaves a dataclass as it is unless it has a ``pin_memory`` method. Pinning needs
    an accelerator, so ``Tensor.pin_memory`` here is a stand-in that copies and records what it was given."""
    from dataclasses import fields

    from torch.utils.data._utils.pin_memory import pin_memory

    dm = _loaders_module(shared_data)
    batches = [next(iter(dm.train_dataloader())), next(iter(dm.test_dataloader()[0]))]
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda tensor, *args: pinned.append(tensor) or tensor.clone())
    for batch in batches:
        tensors = [getattr(batch, f.name) for f in fields(batch) if isinstance(getattr(batch, f.name), torch.Tensor)]
        pinned.clear()
        copy = pin_memory(batch)
        assert type(copy) is type(batch) and len(pinned) == len(tensors) >= 2
        assert all(any(t is p for p in pinned) for t in tensors), "every tensor goes through Tensor.pin_memory"
        for f in fields(batch):
            value, copied = getattr(batch, f.name), getattr(copy, f.name)
            if isinstance(value, torch.Tensor):
                assert copied is not value and torch.equal(copied, value), f.name
            else:
                assert copied == value, f.name
