from types import SimpleNamespace

import pytest

from lit_dft.plot import probe_fractions, read_scalars
from lit_dft.summary import probe_shares, run_summary


def _trainer(run):
    (last,) = run.rglob("last.ckpt")
    log_dir = last.parents[1]  # lightning_logs/version_0
    checkpoint = SimpleNamespace(last_model_path=str(last), best_model_path="", monitor=None)
    return SimpleNamespace(log_dir=str(log_dir), loggers=["tensorboard"], checkpoint_callback=checkpoint), log_dir


def test_fit_summary_names_the_run_its_headline_numbers_and_the_next_commands(smoke_run):
    loss, run = smoke_run
    trainer, log_dir = _trainer(run)
    summary = run_summary(trainer, "fit", loss.upper(), trainer.log_dir)
    last = trainer.checkpoint_callback.last_model_path
    for line in (
        f"events:      {log_dir}",
        f"config:      {log_dir / 'config.yaml'}",
        f"final weights: {last}",
        f"tensorboard --logdir {log_dir.parent}",
        f"lit-dft export {last} OUT_DIR",
        f"lit-dft fit --config {log_dir / 'config.yaml'} --ckpt_path last",
        f"lit-dft plot-polarization {log_dir} -o polarization.png",
    ):
        assert line in summary, line
    nll = read_scalars(log_dir, "train/nll")["train/nll"]
    first, last_step = min(nll), max(nll)
    assert f"train/nll  {nll[first]:.4g} (step {first}) -> {nll[last_step]:.4g} (step {last_step})" in summary
    assert "val/nll" in summary
    fractions = probe_fractions(read_scalars(log_dir))
    before, after = fractions[min(fractions)], fractions[max(fractions)]
    low = sum(before[:3]), sum(after[:3])  # the bins below 1e-4, 1e-3 and 1e-2
    assert f"p < 0.01: {low[0]:.1%} -> {low[1]:.1%}, p >= 0.9: {before[-1]:.1%} -> {after[-1]:.1%}" in summary
    assert ("smaller by design" in summary) == (loss != "sft"), "only a DFT-family run explains its small loss"


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_evaluation_summaries_name_the_events_and_no_training_commands(dft_smoke_run, subcommand):
    trainer, log_dir = _trainer(dft_smoke_run[1])
    summary = run_summary(trainer, subcommand, "DFT", trainer.log_dir)
    assert summary.startswith(f"lit-dft {subcommand} done.") and f"events:      {log_dir}" in summary
    assert "export" not in summary and "Headline" not in summary


def test_probe_shares_add_the_paper_bins_below_one_percent_and_above_ninety():
    fractions = [0.01 * (i + 1) for i in range(13)]  # bins: 0-1e-4, 1e-4-1e-3, 1e-3-1e-2, 0.01-0.1, ..., 0.9-1
    assert probe_shares(fractions) == pytest.approx((0.01 + 0.02 + 0.03, 0.13))
