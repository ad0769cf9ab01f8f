"""What a ``lit-dft`` run says when it ends: where it wrote things, the numbers that matter, what to run next."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Trainer

from lit_dft.callbacks.token_stats import PAPER_BINS
from lit_dft.plot import probe_fractions, read_scalars

_LOW, _HIGH = 0.01, 0.9  # the probe's headline shares: tokens below 1% and above 90% probability
_HEADLINE = ("train/nll", "val/nll", "train/loss")


def probe_shares(fractions: list[float]) -> tuple[float, float]:
    """The shares of tokens with p < 0.01 and p >= 0.9, from the paper-bin fractions."""
    edges = list(zip(PAPER_BINS[:-1], PAPER_BINS[1:]))
    low = sum(f for f, (_, hi) in zip(fractions, edges) if hi <= _LOW)
    high = sum(f for f, (lo, _) in zip(fractions, edges) if lo >= _HIGH)
    return low, high


def _first_last(values: dict[int, float]) -> str:
    steps = sorted(values)
    first, last = values[steps[0]], values[steps[-1]]
    return f"{last:.4g}" if len(steps) == 1 else f"{first:.4g} (step {steps[0]}) -> {last:.4g} (step {steps[-1]})"


def _headline(scalars: dict[str, dict[int, float]], fractions: dict[int, list[float]], objective: str) -> list[str]:
    lines = [f"  {tag:<10} {_first_last(scalars[tag])}" for tag in _HEADLINE if scalars.get(tag)]
    if fractions:
        steps = sorted(fractions)
        (low_0, high_0), (low_1, high_1) = probe_shares(fractions[steps[0]]), probe_shares(fractions[steps[-1]])
        lines.append(
            f"  probe      p < {_LOW}: {low_0:.1%} -> {low_1:.1%}, p >= {_HIGH}: {high_0:.1%} -> {high_1:.1%} "
            f"(step {steps[0]} -> {steps[-1]})"
        )
    loss, nll = scalars.get("train/loss"), scalars.get("train/nll")
    if loss and nll and objective != "SFT":
        step = max(loss)
        lines += [
            f"  train/loss is {objective}'s ({loss[step]:.3g}), train/nll SFT's ({nll[step]:.3g}): a DFT-family objective",
            "  weights each token's loss by (a function of) its probability, so its loss is smaller by design (DFT's:",
            "  10-20x). Compare runs on train/nll and val/nll.",
        ]
    return ["Headline numbers:", *lines] if lines else []


def run_summary(trainer: Trainer, subcommand: str, objective: str, log_dir: str | None) -> str:
    """The end-of-run summary of ``subcommand``; ``objective`` is the token objective's name (``SFT``, ``DFT``),
    ``log_dir`` the run's ``trainer.log_dir`` (read on every rank: it is a collective)."""
    log_dir = Path(log_dir) if log_dir and trainer.loggers else None
    lines = [f"lit-dft {subcommand} done."]
    if log_dir is not None:
        lines.append(f"  events:      {log_dir}")
        if (log_dir / "config.yaml").is_file():
            lines.append(f"  config:      {log_dir / 'config.yaml'}")
    last = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
    monitored = trainer.checkpoint_callback is not None and trainer.checkpoint_callback.monitor is not None
    best = trainer.checkpoint_callback.best_model_path if monitored else ""
    if subcommand == "fit" and last:
        lines.append(f"  final weights: {last}")
        if best and best != last:
            lines.append(f"  best weights:  {best}")
    scalars = read_scalars(log_dir) if log_dir is not None and subcommand == "fit" else {}
    fractions = probe_fractions(scalars)
    if scalars:
        lines += _headline(scalars, fractions, objective)
    lines.append("Next:")
    if log_dir is not None:
        lines.append(f"  tensorboard --logdir {log_dir.parent}")
    if subcommand == "fit" and last:
        if Path(last).is_file():
            lines.append(f"  lit-dft export {last} OUT_DIR")
        config = log_dir / "config.yaml" if log_dir is not None else None
        resume = f"--config {config}" if config is not None and config.is_file() else "--config ..."
        lines.append(f"  lit-dft fit {resume} --ckpt_path last      (resume, or train further with a larger max_steps)")
    if fractions:
        lines.append(f"  lit-dft plot-polarization {log_dir} -o polarization.png")
    return "\n".join(lines)
