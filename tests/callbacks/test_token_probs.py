import csv

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_dft.callbacks import ProbeTokenProbabilities, TokenCategories, TokenProbabilityHistogram
from lit_dft.callbacks.token_stats import ProbabilityCounts, category_tag, paper_bin_labels
from lit_dft.cli import main
from lit_dft.data import MathDataModule
from lit_dft.errors import LitDFTError
from lit_dft.models import TINY_MODEL, load_tokenizer
from lit_dft.module import CausalLMModule
from tests.conftest import smoke_run_dir
from tests.helpers import MicroModule, loader, quiet_trainer, uneven_rows


def _events(run):
    (events,) = run.rglob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={"histograms": 0, "scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def _scalar(acc, tag):
    return {e.step: e.value for e in acc.Scalars(tag)}


def _histogram_totals(acc, tag):
    return {e.step: e.histogram_value.num for e in acc.Histograms(tag)}


def test_training_histograms_count_every_target_token_of_the_batch(smoke_run):
    acc = _events(smoke_run[1])
    totals = _histogram_totals(acc, "train/target_prob_hist")
    assert sorted(totals) == [0, 5, 10, 15]  # every_n_steps: 5 over 20 steps
    tokens = _scalar(acc, "train/target_tokens")
    assert all(totals[step] == tokens[step] for step in totals)
    assert _histogram_totals(acc, "train/target_log10_prob_hist") == totals


def test_probe_covers_the_probe_set_before_and_during_training(dft_smoke_run):
    acc = _events(dft_smoke_run[1])
    totals = _histogram_totals(acc, "probe/target_prob_hist")
    assert sorted(totals) == [0, 10, 20]  # before training, then after each validation
    dm = MathDataModule(preset="champ", tokenizer_name_or_path=TINY_MODEL, limit=40, val_split=8, max_length=192)
    dm.setup("fit")
    indices = torch.randperm(len(dm.train_set), generator=torch.Generator().manual_seed(0))[:16].tolist()
    expected = sum(len(dm.train_set[i]["input_ids"]) - dm.train_set[i]["prompt_length"] for i in indices)
    assert set(totals.values()) == {expected}
    conflicts = _scalar(acc, "probe/confident_conflicts")
    assert sorted(conflicts) == [0, 10, 20] and all(0 <= v <= 1 for v in conflicts.values())
    assert "probe/prob_entropy" in acc.Tags()["images"]  # the (p, entropy) heat map
    for step in totals:
        fractions = [_scalar(acc, f"probe/prob_bin/{label}")[step] for label in paper_bin_labels()]
        assert sum(fractions) == pytest.approx(1.0)
        category_tokens = sum(
            _scalar(acc, f"{category_tag('probe', name)}tokens").get(step, 0) for name in TokenCategories().names
        )
        assert category_tokens == expected  # the categories partition the tokens


def test_counts_bin_probabilities_like_a_direct_computation():
    probs = torch.tensor([1e-9, 5e-5, 0.005, 0.05, 0.15, 0.55, 0.95, 1.0], dtype=torch.float64)
    categories = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2])
    stats = ProbabilityCounts(["a", "b", "c"], torch.device("cpu"))
    entropy = torch.tensor([0.1, 0.3, 0.7, 2.0, 5.0, 9.0, 0.2, 0.6], dtype=torch.float64)
    stats.add(probs.log(), categories, entropy)
    expected_joint = torch.zeros(10, 16, dtype=torch.float64)
    for p, h in zip(probs.tolist(), entropy.tolist()):
        expected_joint[min(int(p * 10), 9), min(int(h / 0.5), 15)] += 1
    assert torch.equal(stats.joint, expected_joint)
    prob_hist, log_hist, paper, prob_sum = stats.split(stats.counts)
    assert paper.sum(0).tolist() == [2, 0, 1, 1, 1, 0, 0, 0, 1, 0, 0, 0, 2]
    assert prob_sum.flatten().tolist() == pytest.approx([5e-5 + 1e-9, 0.205, 2.5])
    assert prob_hist.sum().item() == log_hist.sum().item() == 8
    assert prob_hist.sum(1).tolist() == [2, 3, 3]
    expected = torch.histc(probs, bins=50, min=0, max=1)
    assert prob_hist.sum(0).tolist() == expected.tolist()


def test_token_categories_partition_the_vocabulary_and_rules_are_configurable():
    tokenizer = load_tokenizer(TINY_MODEL)
    table = TokenCategories().table(tokenizer)
    names = TokenCategories().names
    assert len(table) == len(tokenizer) and int(table.max()) < len(names)

    def category(text):
        return names[int(table[tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))[0]])]

    assert [category(t) for t in ("7", " the", " triangle", ",", "\\frac")] == [
        "number",
        "function_word",
        "word",
        "punctuation",
        "math",
    ]
    custom = TokenCategories(rules={"digit": r"^\d$"})
    assert custom.names == ["digit", "other"]
    assert custom.table(tokenizer)[tokenizer.convert_tokens_to_ids("7")] == 0
    with pytest.raises(LitDFTError, match=r"Token category 'bad': '\(' is not a regular expression"):
        TokenCategories(rules={"bad": "("}).table(tokenizer)


def _histogram_run(tmp_path, **trainer_kwargs):
    module = MicroModule()
    trainer = quiet_trainer(
        max_steps=1,
        precision="64-true",
        logger=TensorBoardLogger(tmp_path, name=""),
        callbacks=[TokenProbabilityHistogram(every_n_steps=1)],
        **trainer_kwargs,
    )
    per_step = trainer_kwargs.get("devices", 1) * trainer_kwargs.get("accumulate_grad_batches", 1)
    trainer.fit(module, loader(uneven_rows(), 8 // per_step))  # one global batch of 8
    acc = _events(tmp_path)
    (event,) = acc.Histograms("train/target_prob_hist")
    return event.histogram_value


@pytest.mark.slow
def test_two_process_ddp_logs_the_same_counts_as_one_process(tmp_path):
    one = _histogram_run(tmp_path / "one")
    two = _histogram_run(tmp_path / "two", strategy="ddp_spawn", devices=2)
    assert two.num == one.num == sum(len(r["input_ids"]) - r["prompt_length"] for r in uneven_rows())
    assert list(two.bucket) == list(one.bucket)


def _probe_tokens(tmp_path, **trainer_kwargs) -> dict[int, float]:
    """Probe-histogram totals by step of a 1-step fit of the tiny model, its 7-example probe in batches of 2."""
    data = MathDataModule(tokenizer_name_or_path=TINY_MODEL, limit=12, max_length=128, batch_size=2)
    trainer = quiet_trainer(
        max_steps=1,
        logger=TensorBoardLogger(tmp_path, name=""),
        callbacks=[ProbeTokenProbabilities(num_examples=7, batch_size=2, seed=5)],
        **trainer_kwargs,
    )
    trainer.fit(CausalLMModule(TINY_MODEL), data)
    return _histogram_totals(_events(tmp_path), "probe/target_prob_hist")


@pytest.mark.slow
def test_two_process_probe_measures_every_probe_token_once(tmp_path):
    data = MathDataModule(tokenizer_name_or_path=TINY_MODEL, limit=12, max_length=128)
    data.setup("fit")
    indices = torch.randperm(len(data.train_set), generator=torch.Generator().manual_seed(5))[:7].tolist()
    expected = sum(len(data.train_set[i]["input_ids"]) - data.train_set[i]["prompt_length"] for i in indices)
    # 7 rows on 2 ranks: 4 and 3, so rank 1 runs a padding row that must count nothing
    assert _probe_tokens(tmp_path, strategy="ddp_spawn", devices=2) == {0: expected}


def test_histogram_counts_every_micro_batch_of_an_accumulation_window(tmp_path):
    histogram = _histogram_run(tmp_path, accumulate_grad_batches=4)  # 4 micro-batches of 2 rows
    assert histogram.num == sum(len(r["input_ids"]) - r["prompt_length"] for r in uneven_rows())


def test_without_tensorboard_it_warns_once_and_logs_fractions_as_scalars(tmp_path):
    module = MicroModule()
    trainer = quiet_trainer(
        max_steps=3,
        precision="64-true",
        logger=CSVLogger(tmp_path, name=""),
        callbacks=[TokenProbabilityHistogram(every_n_steps=1)],
    )
    with pytest.warns(UserWarning, match="need a TensorBoardLogger") as record:
        trainer.fit(module, loader(uneven_rows(), 2))
    assert sum("TensorBoardLogger" in str(w.message) for w in record) == 1
    (metrics,) = tmp_path.rglob("metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    column = f"train/prob_bin/{paper_bin_labels()[0]}"
    assert sum(1 for row in rows if row.get(column)) == 3


def test_plot_polarization_writes_each_runs_last_probe(tmp_path, tmp_path_factory):
    runs = [smoke_run_dir(loss, tmp_path_factory) for loss in ("sft", "dft")]
    main(["plot-polarization", *map(str, runs), "--names", "SFT", "DFT", "-o", str(tmp_path / "fig.png")])
    assert (tmp_path / "fig.png").stat().st_size > 10_000
    rows = list(csv.reader((tmp_path / "fig.csv").open()))
    assert rows[0] == ["bin", "base", "SFT", "DFT"] and len(rows) == 14
    logged = [{label: _scalar(_events(run), f"probe/prob_bin/{label}") for label in paper_bin_labels()} for run in runs]
    expected = {
        "base": [logged[0][label][0] for label in paper_bin_labels()],  # the first run's probe before training
        "SFT": [logged[0][label][max(logged[0][label])] for label in paper_bin_labels()],  # each run's last probe
        "DFT": [logged[1][label][max(logged[1][label])] for label in paper_bin_labels()],
    }
    assert expected["SFT"] != expected["base"], "the last probe must differ from the first for the test to bite"
    for column, series in enumerate(rows[0][1:], start=1):
        assert [float(row[column]) for row in rows[1:]] == pytest.approx([100 * f for f in expected[series]], abs=1e-4)


def test_callbacks_keep_their_configured_settings_on_resume():
    """A checkpoint holds state, not settings: a resumed run uses what its YAML says now."""
    histogram = TokenProbabilityHistogram(every_n_steps=3)
    histogram.load_state_dict(TokenProbabilityHistogram(every_n_steps=10).state_dict())
    assert histogram.every_n_steps == 3
    probe = ProbeTokenProbabilities(num_examples=8, source="val", seed=1)
    probe.load_state_dict(ProbeTokenProbabilities(num_examples=64).state_dict())
    assert (probe.num_examples, probe.source, probe.seed) == (8, "val", 1)


class _AutocastRecorder(CausalLMModule):
    def __init__(self) -> None:
        super().__init__(TINY_MODEL, loss="dft")
        self.probe_autocast: list[bool] = []

    def token_outputs(self, batch):
        if not self.training:  # the probe measures in eval mode
            self.probe_autocast.append(torch.is_autocast_enabled("cpu"))
        return super().token_outputs(batch)


def test_probe_measures_under_the_trainer_precision(tmp_path):
    module = _AutocastRecorder()
    data = MathDataModule(tokenizer_name_or_path=TINY_MODEL, limit=8, max_length=128, batch_size=4)
    trainer = quiet_trainer(
        max_steps=1,
        precision="bf16-mixed",
        logger=TensorBoardLogger(tmp_path, name=""),
        callbacks=[ProbeTokenProbabilities(num_examples=4, batch_size=4)],
    )
    trainer.fit(module, data)
    assert module.probe_autocast == [True]
