import json

import lightning.pytorch as L
import pytest

import lit_dft.module
from lit_dft.callbacks import SampleWriter
from lit_dft.callbacks.samples import sample_rows
from lit_dft.data import MathDataModule
from lit_dft.data.datamodule import EvalSet
from lit_dft.errors import LitDFTError
from lit_dft.models import TINY_MODEL
from lit_dft.module import CausalLMModule
from tests.conftest import SHARED_DATA

GSM8K_TRAIN = str(SHARED_DATA / "gsm8k" / "train.jsonl")


def _golds(n: int) -> list[str]:
    return [json.loads(line)["answer"].split("####")[-1].strip() for line, _ in zip(open(GSM8K_TRAIN), range(n))]


def _stand_in(golds: list[str]):
    """Problem i's four samples: right, the same right answer again, a wrong one, and nothing."""

    def generate(model, tokenizer, batch, sampling, should_stop=None):
        texts = []
        for problem in batch.ids:
            gold = golds[int(problem)]
            texts += [f"So it is \\boxed{{{gold}}}.", f"So it is \\boxed{{{gold}}}.  ", "It is \\boxed{-1}.", " "]
        return texts[: len(batch.ids) * sampling.num_samples]

    return generate


def _sample(tmp_path, monkeypatch, keep: str, deduplicate: bool, problems: int = 6) -> tuple[list[dict], SampleWriter]:
    monkeypatch.setattr(lit_dft.module, "generate", _stand_in(_golds(problems)))
    data = MathDataModule(
        tokenizer_name_or_path=TINY_MODEL, eval_sets=[EvalSet("gsm8k", GSM8K_TRAIN, limit=problems)], batch_size=4
    )
    module = CausalLMModule(TINY_MODEL, generation={"num_samples": 4, "temperature": 1.0, "max_new_tokens": 8})
    writer = SampleWriter(str(tmp_path / "samples.jsonl"), keep=keep, deduplicate=deduplicate)
    L.seed_everything(7)
    trainer = L.Trainer(accelerator="cpu", callbacks=[writer], logger=False, enable_progress_bar=False)
    trainer.predict(module, datamodule=data)
    module.checker.close()
    return [json.loads(line) for line in (tmp_path / "samples.jsonl").open()], writer


def test_rejection_sampling_keeps_each_distinct_correct_answer_and_counts_the_rest(tmp_path, monkeypatch):
    rows, writer = _sample(tmp_path, monkeypatch, keep="correct", deduplicate=True)
    golds = _golds(6)
    assert [(r["id"], r["sample"]) for r in rows] == [(str(i), 0) for i in range(6)]
    assert [r["gold"] for r in rows] == [[g] for g in golds] and all(r["correct"] for r in rows)
    first = json.loads(next(open(GSM8K_TRAIN)))
    assert rows[0]["question"] == first["question"] and rows[0]["response"] == f"So it is \\boxed{{{golds[0]}}}."
    assert (rows[0]["model"], rows[0]["checkpoint"], rows[0]["seed"], rows[0]["extracted"]) == (
        TINY_MODEL,
        None,
        7,
        golds[0],
    )
    assert dict(writer.counts) == {
        "samples": 24,
        "problems": 6,
        "correct": 12,
        "dropped: empty": 6,
        "dropped: incorrect": 6,
        "dropped: duplicate": 6,
        "written": 6,
        "problems written": 6,
    }


def test_keep_all_without_deduplication_keeps_every_nonempty_answer_and_trains(tmp_path, monkeypatch):
    rows, writer = _sample(tmp_path, monkeypatch, keep="all", deduplicate=False)
    assert len(rows) == writer.counts["written"] == 18 and writer.counts["dropped: empty"] == 6
    assert [r["correct"] for r in rows[:3]] == [True, True, False]
    data = MathDataModule(tokenizer_name_or_path=TINY_MODEL, preset="sampled", path=str(tmp_path / "samples.jsonl"))
    data.max_length, data.batch_size = 256, 6
    trainer = L.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(CausalLMModule(TINY_MODEL, loss="dft"), datamodule=data)
    assert data.report["train examples"] == 18 and trainer.global_step == 2
    assert trainer.callback_metrics["train/nll"].isfinite()


def test_sample_rows_orders_by_problem_and_sample():
    from lit_dft.batch import Prediction

    def p(problem, sample, text, correct=True):
        return Prediction("b", problem, "q", sample, ["1"], text, "1", correct, "")

    kept, counts = sample_rows([p("2", 1, "x"), p("1", 0, "y"), p("2", 0, "x")], keep="correct", deduplicate=True)
    assert [(k.id, k.sample) for k in kept] == [("1", 0), ("2", 0)] and counts["dropped: duplicate"] == 1


def test_unknown_keep_is_refused():
    with pytest.raises(LitDFTError, match="keep must be 'correct' or 'all'"):
        SampleWriter(keep="best")


@pytest.mark.slow
def test_two_processes_sample_each_problem_once_into_one_file(tmp_path):
    """3 problems on 2 ranks (one rank pads with a problem it answers but does not count): 3 x k rows, each once."""
    data = MathDataModule(tokenizer_name_or_path=TINY_MODEL, eval_sets=[EvalSet("gsm8k", GSM8K_TRAIN, limit=3)])
    data.batch_size = 1
    module = CausalLMModule(TINY_MODEL, generation={"num_samples": 2, "temperature": 1.0, "max_new_tokens": 4})
    writer = SampleWriter(str(tmp_path / "samples.jsonl"), keep="all", deduplicate=False)
    L.seed_everything(0)
    trainer = L.Trainer(
        accelerator="cpu", strategy="ddp_spawn", devices=2, callbacks=[writer], logger=False, enable_progress_bar=False
    )
    trainer.predict(module, datamodule=data, return_predictions=False)
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").open()]
    assert sorted((r["id"], r["sample"]) for r in rows) == [(str(i), j) for i in range(3) for j in range(2)]
    assert not list(tmp_path.glob("samples.rank*"))


def test_a_run_stopped_early_keeps_the_answers_it_has(tmp_path, monkeypatch):
    answer = _stand_in(_golds(8))
    calls = []

    def stopped_at_the_second_batch(model, tokenizer, batch, sampling, should_stop=None):
        calls.append(batch.ids)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C; Lightning treats SIGTERM's exception the same way
        return answer(model, tokenizer, batch, sampling)

    monkeypatch.setattr(lit_dft.module, "generate", stopped_at_the_second_batch)
    data = MathDataModule(
        tokenizer_name_or_path=TINY_MODEL, eval_sets=[EvalSet("gsm8k", GSM8K_TRAIN, limit=8)], batch_size=4
    )
    module = CausalLMModule(TINY_MODEL, generation={"num_samples": 4, "temperature": 1.0, "max_new_tokens": 8})
    writer = SampleWriter(str(tmp_path / "samples.jsonl"))
    trainer = L.Trainer(accelerator="cpu", callbacks=[writer], logger=False, enable_progress_bar=False)
    with pytest.raises(SystemExit):
        trainer.predict(module, datamodule=data)
    module.checker.close()
    assert not (tmp_path / "samples.jsonl").exists()
    rows = [json.loads(line) for line in (tmp_path / "samples.partial.rank0.jsonl").open()]
    assert [r["id"] for r in rows] == calls[0] == ["0", "1", "2", "3"] and writer.counts["samples"] == 16
    monkeypatch.setattr(lit_dft.module, "generate", answer)  # run again, to the end: the partial file goes
    L.Trainer(accelerator="cpu", callbacks=[writer], logger=False, enable_progress_bar=False).predict(module, data)
    module.checker.close()
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 8
    assert not list(tmp_path.glob("*partial*"))
