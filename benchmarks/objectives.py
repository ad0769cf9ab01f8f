"""Every objective of the DFT family trained on the same data, seed and order (``configs/objectives.yaml``), then
one table (train/nll, val/nll, entropy, the probe's low- and high-probability shares) in
``benchmarks/results/objectives.md`` and the polarisation figure with all runs in ``docs/objectives.png``, both
shown in ``docs/objectives.md``.

    python -m benchmarks.objectives [--names sft dft eaft] [--steps 16] [--reuse]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from benchmarks.common import RESULTS
from lit_dft.callbacks.token_stats import paper_bin_labels
from lit_dft.cli import main as lit_dft
from lit_dft.objectives import OBJECTIVES
from lit_dft.plot import plot_polarization, polarization_table

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "objectives.yaml"
RUNS = ROOT / "runs" / "objectives"


def _last(run: Path, tag: str) -> float:
    (events,) = run.rglob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
    accumulator.Reload()
    return accumulator.Scalars(tag)[-1].value


def _probe_shares(fractions: list[float]) -> tuple[float, float]:
    """Shares of probe tokens below 0.01 and above 0.9 (the paper's bins)."""
    labels = paper_bin_labels()
    low = sum(f for f, label in zip(fractions, labels) if float(label.split("_")[1].split("-")[1]) <= 0.01)
    return low, fractions[-1]


def main(names: list[str], steps: int, reuse: bool = False) -> tuple[str, Path]:
    for name in names:
        if reuse and list((RUNS / name).rglob("events.out.tfevents.*")):
            continue
        lit_dft(
            [
                "fit",
                "--config",
                str(CONFIG),
                f"--model.loss={name}",
                f"--trainer.max_steps={steps}",
                f"--trainer.val_check_interval={steps}",
                f"--trainer.default_root_dir={RUNS / name}",
            ]
        )
    runs = [RUNS / name for name in names]
    table = polarization_table(runs, names)
    figure, _ = plot_polarization(runs, ROOT / "docs" / "objectives.png", names)
    rows = [
        "| objective | train/nll (last step) | val/nll | val/entropy | probe p < 0.01 | probe p > 0.9 |",
        "|---|---|---|---|---|---|",
    ]
    base_low, base_high = _probe_shares(table["base"])
    rows.append(f"| base model | | | | {100 * base_low:.1f}% | {100 * base_high:.1f}% |")
    for name, run in zip(names, runs):
        low, high = _probe_shares(table[name])
        rows.append(
            f"| {name} | {_last(run, 'train/nll'):.3f} | {_last(run, 'val/nll'):.3f} | {_last(run, 'val/entropy'):.3f} "
            f"| {100 * low:.1f}% | {100 * high:.1f}% |"
        )
    return "\n".join(rows), figure


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--names", nargs="+", default=sorted(OBJECTIVES, key=lambda n: (n not in ("sft", "dft"), n)))
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--reuse", action="store_true", help="keep the runs already under runs/objectives")
    args = parser.parse_args()
    table, figure = main(args.names, args.steps, args.reuse)
    (RESULTS / "objectives.md").write_text(table + "\n")
    print(f"{table}\nfigure: {figure}, table: {RESULTS / 'objectives.md'}")
