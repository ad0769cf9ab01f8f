import json
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.fabric.plugins.environments.lightning import find_free_network_port

import lit_dft.module
from lit_dft.batch import PromptBatch
from lit_dft.cli import main
from lit_dft.data import MathDataModule
from lit_dft.data.datamodule import EvalSet
from lit_dft.errors import LitDFTError
from lit_dft.evaluation import MathAccuracy
from lit_dft.generation import GenerationArgs
from lit_dft.models import TINY_MODEL
from lit_dft.module import CausalLMModule
from tests.conftest import SHARED_DATA, micro_llama, smoke_run_dir

BENCHMARKS = {
    "math500": "math500/test.jsonl",
    "minerva_math": "minerva_math/test.jsonl",
    "olympiadbench": "olympiadbench/test.jsonl",
    "aime24": "aime24/test.jsonl",
    "amc23": "amc23/test.jsonl",
    "gsm8k": "gsm8k/test.jsonl",
}


def _reference_solution(benchmark: str, row: dict) -> str:
    """What a perfect model would write: the data set's own solution where it states the answer in its
    standard form (GSM8K's ####, a final box), else a sentence boxing the gold answer."""
    if benchmark in ("gsm8k", "minerva_math"):
        return row["answer"] if benchmark == "gsm8k" else row["solution"]
    return "The answer is \\boxed{" + ", ".join(row["gold"]) + "}."


def _run_with_stand_in(monkeypatch, emit) -> dict[str, dict]:
    """Evaluate every benchmark with generation replaced by ``emit(benchmark, source_row)``."""
    sources = {name: {} for name in BENCHMARKS}
    for name, path in BENCHMARKS.items():
        for i, line in zip(range(4), open(SHARED_DATA / path)):
            sources[name][i] = json.loads(line)
    data = MathDataModule(
        tokenizer_name_or_path=TINY_MODEL,
        eval_sets=[EvalSet(n, str(SHARED_DATA / p), limit=4) for n, p in BENCHMARKS.items()],
    )
    data.setup("test")
    module = CausalLMModule(TINY_MODEL)

    def fake_generate(model, tokenizer, batch, sampling, should_stop=None):
        texts = []
        for i, problem_id in enumerate(batch.ids):
            source = next(
                r
                for j, r in sources[batch.benchmark].items()
                if str(next((r[c] for c in ("id", "unique_id", "idx") if r.get(c) is not None), j)) == problem_id
            )
            texts.append(emit(batch.benchmark, {**source, "gold": batch.answers[i]}))
        return texts

    monkeypatch.setattr(lit_dft.module, "generate", fake_generate)
    for loader in data.test_dataloader():
        for batch in loader:
            module._answer(batch)
    results = {name: metric.compute() for name, metric in module.eval_metrics.items()}
    module.checker.close()
    return results


def test_perfect_stand_in_scores_one_and_garbage_scores_zero_on_every_benchmark(monkeypatch):
    perfect = _run_with_stand_in(monkeypatch, _reference_solution)
    garbage = _run_with_stand_in(monkeypatch, lambda benchmark, row: "I think it is \\boxed{banana}.")
    assert set(perfect) == set(BENCHMARKS)
    for name in BENCHMARKS:
        assert perfect[name]["problems"] == 4
        assert perfect[name]["acc"] == 1.0, name
        assert garbage[name]["acc"] == 0.0, name


def test_metric_reports_mean_and_pass_at_k():
    metric = MathAccuracy()
    metric.update(torch.tensor([[True, False, False, False], [False, False, False, False], [True, True, True, True]]))
    values = metric.compute()
    assert values["acc"] == pytest.approx(5 / 12) and values["pass_at_k"] == pytest.approx(2 / 3)
    scores = [0.25, 0.0, 1.0]  # each problem's mean@4: the standard error of their mean, written out
    mean = sum(scores) / 3
    stderr = math.sqrt(sum((s - mean) ** 2 for s in scores) / 2 / 3)
    assert values["acc_stderr"] == pytest.approx(stderr, rel=1e-6)
    single = MathAccuracy()
    single.update(torch.tensor([[True, False]]))
    assert single.compute()["acc_stderr"] == 0.0  # one problem: no spread to estimate


def _ddp_worker(rank: int, world: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    metric = MathAccuracy()
    rows = torch.tensor([[True, False], [False, False], [True, True], [False, True], [True, True]])
    metric.update(rows[rank::world])  # each rank sees different problems, unequal counts
    values = metric.compute()
    results[rank] = tuple(float(values[key]) for key in ("acc", "pass_at_k", "problems", "acc_stderr"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_metric_reduces_across_two_processes():
    results = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(2, find_free_network_port(), results), nprocs=2)
    scores = [0.5, 0.0, 1.0, 0.5, 1.0]  # the problems' mean@2 over both ranks
    stderr = math.sqrt(sum((s - 0.6) ** 2 for s in scores) / 4 / 5)
    assert results[0] == results[1] == pytest.approx((6 / 10, 4 / 5, 5.0, stderr))


def test_benchmark_without_gold_answers_is_refused(tmp_path):
    data = tmp_path / "no_answers.jsonl"
    data.write_text(json.dumps({"question": "1+1?", "answer": ""}) + "\n")
    dm = MathDataModule(tokenizer_name_or_path=TINY_MODEL, eval_sets=[EvalSet("amc23", str(data))])
    with pytest.raises(LitDFTError, match="none of its 1 problems has a question, a gold answer"):
        dm.setup("test")
    dm = MathDataModule(
        tokenizer_name_or_path=TINY_MODEL, eval_sets=[EvalSet({"question": "question", "answer": None}, str(data))]
    )
    with pytest.raises(LitDFTError, match="has no gold answers"):
        dm.setup("test")


def test_lit_dft_test_end_to_end_writes_accuracies_and_predictions(tmp_path):
    predictions = tmp_path / "predictions.jsonl"
    main(
        [
            "test",
            "--config",
            "configs/eval.yaml",
            "--model.model_name_or_path=tiny",
            "--model.generation.max_new_tokens=8",
            "--data.eval_limit=2",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.callbacks.init_args.path={predictions}",
        ]
    )
    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(records) == 2 * len(BENCHMARKS)
    assert {r["benchmark"] for r in records} == set(BENCHMARKS)
    assert all(set(r) >= {"id", "gold", "generation", "extracted", "correct", "reason"} for r in records)
    assert all(r["reason"] for r in records if not r["correct"])


def test_checkpoint_of_another_model_is_reported(tmp_path_factory, tokenizer):
    (ckpt,) = smoke_run_dir("dft", tmp_path_factory).rglob("last.ckpt")
    module = CausalLMModule.from_model(micro_llama(vocab_size=49_152), tokenizer)  # the tiny model's vocabulary
    module.configure_model()
    with pytest.raises(LitDFTError, match="Checkpoint does not match model"):
        module.on_load_checkpoint(torch.load(ckpt, weights_only=True))


@pytest.mark.slow
def test_two_processes_answer_each_problem_exactly_once(tmp_path, shared_data):
    """3 problems on 2 ranks: Lightning's sampler would pad to 4 and count one twice."""
    import lightning.pytorch as L

    from lit_dft.callbacks import PredictionWriter

    data = MathDataModule(
        tokenizer_name_or_path=TINY_MODEL,
        eval_sets=[EvalSet("aime24", str(shared_data / "aime24/test.jsonl"), limit=3)],
        eval_batch_size=1,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=False,
        enable_progress_bar=False,
        callbacks=[PredictionWriter(str(tmp_path / "p.jsonl"))],
    )
    trainer.test(CausalLMModule(TINY_MODEL, generation=GenerationArgs(max_new_tokens=2)), data)
    assert trainer.callback_metrics["test/aime24/problems"] == 3
    records = [json.loads(line) for rank in (0, 1) for line in (tmp_path / f"p.rank{rank}.jsonl").open()]
    assert sorted(r["id"] for r in records) == sorted({r["id"] for r in records}) and len(records) == 3


def test_score_reads_the_k_samples_of_each_problem_in_order():
    from lit_dft.generation import score

    prompts = torch.ones(3, 2, dtype=torch.long)
    batch = PromptBatch(prompts, prompts, "toy", ["a", "b", "c"], ["qa", "qb", "qc"], [["1"], ["2"], ["3"]], [True] * 3)
    # problem i's sample j is right exactly when j == i: each sample is in its own place
    texts = [f"\\boxed{{{i + 1 if j == i else 9}}}" for i in range(3) for j in range(4)]
    checker = AnswerCheckerForTest()
    correct, records = score(texts, batch, 4, checker)
    assert correct.tolist() == [[j == i for j in range(4)] for i in range(3)]
    assert [(r.id, r.sample, r.correct) for r in records[:5]] == [
        ("a", 0, True),
        ("a", 1, False),
        ("a", 2, False),
        ("a", 3, False),
        ("b", 0, False),
    ]


class AnswerCheckerForTest:
    """Exact string comparison: enough for digits, no worker process."""

    def check(self, prediction, golds, significant_figures=False):
        from lit_dft.evaluation import Verdict

        return Verdict(prediction == golds[0], "" if prediction == golds[0] else "not equivalent")


def test_lit_dft_test_logs_each_benchmark_accuracy_and_the_mean(monkeypatch, tmp_path):
    from lit_dft.cli import LitDFTCLI

    def perfect_on_math500(model, tokenizer, batch, sampling, should_stop=None):
        right = batch.benchmark == "math500"
        return [f"The answer is \\boxed{{{gold[0] if right else 'banana'}}}." for gold in batch.answers]

    monkeypatch.setattr(lit_dft.module, "generate", perfect_on_math500)
    args = ["test", "--config", "configs/eval.yaml", "--model.model_name_or_path=tiny", "--data.eval_limit=3"]
    cli = LitDFTCLI(CausalLMModule, MathDataModule, args=[*args, f"--trainer.default_root_dir={tmp_path}"])
    metrics = cli.trainer.callback_metrics
    assert metrics["test/math500/acc"] == 1.0 and metrics["test/gsm8k/acc"] == 0.0
    assert metrics["test/acc"] == pytest.approx(1 / len(BENCHMARKS))
    assert metrics["test/math500/acc_stderr"] == metrics["test/gsm8k/acc_stderr"] == 0.0  # every problem alike
