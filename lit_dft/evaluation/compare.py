"""``lit-dft compare``: each run's accuracy per benchmark with a 95% interval, and paired differences between runs.

A run is one or more predictions files (``PredictionWriter``'s ``predictions.jsonl``, per-rank files included):
a file, a folder (every ``predictions*.jsonl`` under it) or ``LABEL=PATH[,PATH...]``. Several files of one run,
say several seeds, pool their samples of each problem. A problem's score is its mean@k, the fraction of its
correct samples; the accuracy is the mean over problems and its standard error ``std / sqrt(n)`` over problems,
as ``MathAccuracy`` logs it. The difference of two runs is paired: the mean over the problems both answered of
the difference of their scores, with the standard error of those differences, which is far narrower than the two
intervals side by side when the runs agree on most problems. Intervals are normal: ``+-1.96`` standard errors.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from lit_dft.errors import LitDFTError

Z95 = 1.959963984540054  # the normal distribution's two-sided 95% quantile
MEAN = "mean"  # the row averaging the benchmarks every run answered


@dataclass
class Run:
    """The correctness of every sample of every problem of one run."""

    label: str
    samples: dict[str, dict[str, list[bool]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    """benchmark -> problem id -> correct, one entry per sample (pooled over the run's files)."""
    skipped: Counter = field(default_factory=Counter)
    """Lines left out, by reason."""
    files: list[Path] = field(default_factory=list)
    """The predictions files read."""

    def scores(self, benchmark: str) -> dict[str, float]:
        """Each problem's mean@k."""
        return {problem: sum(c) / len(c) for problem, c in self.samples[benchmark].items()}


@dataclass(frozen=True)
class Estimate:
    """A mean with its standard error over ``n`` problems."""

    mean: float
    stderr: float
    n: int

    @property
    def interval(self) -> tuple[float, float]:
        return self.mean - Z95 * self.stderr, self.mean + Z95 * self.stderr


def estimate(values: list[float]) -> Estimate:
    """The mean and ``sample std / sqrt(n)`` (0 for fewer than two values)."""
    n = len(values)
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return Estimate(mean, math.sqrt(variance / n), n)


def average(estimates: list[Estimate]) -> Estimate:
    """The mean of independent estimates (one per benchmark): ``sqrt(sum of squared errors) / count``."""
    count = len(estimates)
    stderr = math.sqrt(sum(e.stderr**2 for e in estimates)) / count
    return Estimate(sum(e.mean for e in estimates) / count, stderr, sum(e.n for e in estimates))


def paired_difference(run: Run, baseline: Run, benchmark: str) -> Estimate | None:
    """``run - baseline`` over the problems both answered; None when they share none."""
    a, b = baseline.scores(benchmark), run.scores(benchmark)
    shared = sorted(a.keys() & b.keys())
    return estimate([b[p] - a[p] for p in shared]) if shared else None


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(path.rglob("predictions*.jsonl"))
        if not found:
            raise LitDFTError(f"No predictions*.jsonl under {path} (lit-dft test writes one with PredictionWriter)")
        return found
    raise LitDFTError(f"Predictions not found: {path}")


def read_run(spec: str) -> Run:
    """A run from ``PATH`` or ``LABEL=PATH[,PATH...]`` (an existing path is a path, even with ``=`` in it);
    unreadable lines are counted, not fatal."""
    label, _, paths = ("", "", spec) if Path(spec).exists() or "=" not in spec else spec.partition("=")
    paths_list = [Path(p) for p in paths.split(",") if p]
    if not paths_list:
        raise LitDFTError(f"No path in {spec!r}: give PATH or LABEL=PATH[,PATH...]")
    run = Run(label or paths_list[0].name)
    for file in (f for p in paths_list for f in _files(p)):
        run.files.append(file)
        with file.open(encoding="utf-8", errors="replace") as handle:  # a bad byte spoils one line, not the file
            for line in handle:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    benchmark, problem, correct = record["benchmark"], str(record["id"]), record["correct"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    run.skipped[f"{file}: not a prediction (JSON with benchmark, id, correct)"] += 1
                    continue
                if not isinstance(correct, bool) or not isinstance(benchmark, str):
                    run.skipped[f"{file}: correct not true/false or benchmark not a name"] += 1
                    continue
                run.samples[benchmark][problem].append(correct)
    if not run.samples:
        raise LitDFTError(f"{spec}: no predictions in {', '.join(str(p) for p in paths_list)}")
    return run


@dataclass(frozen=True)
class Row:
    """One run on one benchmark (or the mean), with its difference to the first run."""

    benchmark: str
    run: str
    accuracy: Estimate
    samples: int
    difference: Estimate | None
    """Paired ``run - first run``; None for the first run itself."""


def compare(runs: list[Run]) -> list[Row]:
    """Rows per benchmark (in the order the runs name them) and the mean over the benchmarks all runs answered."""
    baseline = runs[0]
    benchmarks = list(dict.fromkeys(b for run in runs for b in run.samples))
    common = [b for b in benchmarks if all(b in run.samples for run in runs)]
    rows = []
    for benchmark in benchmarks:
        for run in runs:
            if benchmark not in run.samples:
                continue
            samples = sum(len(c) for c in run.samples[benchmark].values())
            accuracy = estimate(list(run.scores(benchmark).values()))
            difference = (
                paired_difference(run, baseline, benchmark)
                if run is not baseline and benchmark in baseline.samples
                else None
            )
            rows.append(Row(benchmark, run.label, accuracy, samples, difference))
    if len(common) > 1:
        for run in runs:
            own = [r for r in rows if r.run == run.label and r.benchmark in common]
            differences = [r.difference for r in own if r.difference is not None]
            difference = average(differences) if run is not baseline and len(differences) == len(own) else None
            accuracy = average([r.accuracy for r in own])
            rows.append(Row(MEAN, run.label, accuracy, sum(r.samples for r in own), difference))
    return rows


def _percent(e: Estimate, signed: bool = False) -> str:
    """``mean ± half-width`` in percent; ``± n/a`` for a single problem, which has no spread to estimate."""
    sign = "+" if signed else ""
    spread = f"{100 * Z95 * e.stderr:.1f}" if e.n > 1 else "n/a"
    return f"{100 * e.mean:{sign}.1f} ± {spread}"


def markdown(rows: list[Row], runs: list[Run]) -> str:
    """Benchmarks down, runs across: accuracy ± 95% half-width (problems), then each run minus the first."""
    labels = [run.label for run in runs]
    header = ["benchmark", *labels, *(f"{label} − {labels[0]}" for label in labels[1:])]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for benchmark in dict.fromkeys(r.benchmark for r in rows):
        cells = {r.run: r for r in rows if r.benchmark == benchmark}
        accuracy = [f"{_percent(cells[x].accuracy)} ({cells[x].accuracy.n})" if x in cells else "" for x in labels]
        differences = [
            f"{_percent(cells[x].difference, signed=True)} ({cells[x].difference.n})"
            if x in cells and cells[x].difference is not None
            else ""
            for x in labels[1:]
        ]
        lines.append("| " + " | ".join([benchmark, *accuracy, *differences]) + " |")
    return "\n".join(lines)


def write_csv(rows: list[Row], path: Path, baseline: str) -> None:
    columns = ["benchmark", "run", "problems", "samples", "acc", "acc_stderr", "acc_ci95_low", "acc_ci95_high"]
    columns += ["baseline", "diff", "diff_stderr", "diff_ci95_low", "diff_ci95_high", "paired_problems"]
    try:
        handle = path.open("w", newline="", encoding="utf-8")
    except OSError as error:
        raise LitDFTError(f"Cannot write {path}: {error.strerror or error}") from None
    with handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for r in rows:
            a, d = r.accuracy, r.difference
            row = [r.benchmark, r.run, a.n, r.samples, a.mean, a.stderr, *a.interval]
            row += [baseline, d.mean, d.stderr, *d.interval, d.n] if d is not None else [""] * 6
            writer.writerow(row)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="lit-dft compare",
        description="Accuracy per benchmark with 95%% intervals, and each run's paired difference to the first.",
    )
    parser.add_argument(
        "runs", nargs="+", metavar="RUN", help="a predictions file, a run folder, or LABEL=PATH[,PATH...] (seeds)"
    )
    parser.add_argument("--csv", default="compare.csv", help="where to write the table as CSV (default: %(default)s)")
    args = parser.parse_args(argv)
    runs = [read_run(spec) for spec in args.runs]
    labels = [run.label for run in runs]
    if len(set(labels)) < len(labels):
        raise LitDFTError(f"Two runs share a label ({', '.join(labels)}): name them, e.g. sft=PATH dft=PATH")
    for run in runs:
        if len(run.files) > 1:  # seeds or ranks, meant to pool; or reruns in one folder, not meant to
            print(f"{run.label}: pooled {len(run.files)} files: {', '.join(map(str, run.files))}", file=sys.stderr)
        for reason, count in run.skipped.items():
            print(f"{run.label}: skipped {count} line(s): {reason}", file=sys.stderr)
    rows = compare(runs)
    for row in rows:
        if row.difference is not None and row.difference.n < row.accuracy.n:
            print(
                f"{row.run} answered {row.accuracy.n} {row.benchmark} problems, {row.difference.n} of them shared with "
                f"{labels[0]}: its accuracy is over all {row.accuracy.n}, the difference over the shared ones",
                file=sys.stderr,
            )
    print(markdown(rows, runs))
    write_csv(rows, Path(args.csv), labels[0])
    print("\nAccuracy in % ± the 95% interval's half-width (problems); differences paired over shared problems.")
    print(f"Wrote {args.csv}")
