"""``lit-dft plot-polarization``: the paper's token-probability figure from logged runs.

For each run it reads the probe's bin fractions (``probe/prob_bin/*``) at the last logged step; the
first run's step-0 probe is the base model. Bars per bin, log y axis, one series per run, as in
section 4.3.1 of the DFT paper; the numbers go to a CSV beside the figure.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_dft.callbacks.token_stats import PROBE, paper_bin_labels, prob_bin_tag
from lit_dft.errors import LitDFTError

_TAG = prob_bin_tag(PROBE)


def read_scalars(run_dir: Path, prefix: str = "") -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of the scalars whose tag starts with ``prefix``, from every event file under
    ``run_dir``."""
    scalars: dict[str, dict[int, float]] = {}
    for events in sorted(run_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            if tag.startswith(prefix):
                scalars.setdefault(tag, {}).update({event.step: event.value for event in accumulator.Scalars(tag)})
    return scalars


def probe_fractions(scalars: dict[str, dict[int, float]]) -> dict[int, list[float]]:
    """The probe's fraction of tokens in each paper bin, by step, from a run's scalars (:func:`read_scalars`)."""
    by_step: dict[int, dict[str, float]] = {}
    for tag, values in scalars.items():
        if not tag.startswith(_TAG):
            continue
        for step, value in values.items():
            by_step.setdefault(step, {})[tag[len(_TAG) :]] = value
    labels = paper_bin_labels()
    return {step: [bins[label] for label in labels] for step, bins in by_step.items() if set(labels) <= set(bins)}


def polarization_table(run_dirs: list[Path], names: list[str] | None = None) -> dict[str, list[float]]:
    """``{series name: fraction per paper bin}``: the base model (first run, step 0), then each run's last probe."""
    names = names or [run.name for run in run_dirs]
    table: dict[str, list[float]] = {}
    for run, name in zip(run_dirs, names):
        fractions = probe_fractions(read_scalars(run, _TAG))
        if not fractions:
            raise LitDFTError(
                f"No probe token-probability scalars ({_TAG}*) under {run}: was ProbeTokenProbabilities on?"
            )
        if not table and 0 in fractions:
            table["base"] = fractions[0]
        table[name] = fractions[max(fractions)]
    return table


def plot_polarization(run_dirs: list[Path], out: Path, names: list[str] | None = None) -> tuple[Path, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = polarization_table(run_dirs, names)
    labels = [label.split("_", 1)[1] for label in paper_bin_labels()]
    out.parent.mkdir(parents=True, exist_ok=True)
    csv_path = out.with_suffix(".csv")
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["bin", *table])
        writer.writerows([label, *(f"{100 * table[s][i]:.4f}" for s in table)] for i, label in enumerate(labels))
    figure, axis = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(table)
    colours = plt.get_cmap("tab10" if len(table) <= 10 else "tab20").colors  # one colour per run
    for k, (series, fractions) in enumerate(table.items()):
        positions = [i + (k - (len(table) - 1) / 2) * width for i in range(len(labels))]
        heights = [max(100 * f, 1e-3) for f in fractions]
        axis.bar(positions, heights, width=width, label=series, color=colours[k % len(colours)])
    axis.set_yscale("log")
    axis.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axis.set_xlabel("target-token probability")
    axis.set_ylabel("% of tokens")
    axis.set_title("Token probability distribution on the probe set")
    if len(table) > 4:  # many runs: beside the bars, not over the low-probability ones
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        axis.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out, csv_path


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lit-dft plot-polarization", description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run folders (each with TensorBoard events)")
    parser.add_argument("-o", "--output", type=Path, default=Path("polarization.png"), help="figure path (.png)")
    parser.add_argument("--names", nargs="+", help="series names, one per run (default: folder names)")
    args = parser.parse_args(argv)
    figure, table = plot_polarization(args.run_dirs, args.output, args.names)
    print(f"Wrote {figure} and {table}")
