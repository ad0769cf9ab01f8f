"""Run every benchmark and write BENCHMARKS.md.

    python -m benchmarks.run [--quick] [--only NAME ...]

Needs the bench extra (pip install -e '.[bench]') for the TRL comparison and ../shared/data for GSM8K.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
from pathlib import Path

from benchmarks.common import machine

BENCHMARKS = {
    "step_time": "a. DFT vs SFT step time",
    "loss_memory": "b. Chunked vs naive loss (DFT objective, float32, forward + backward)",
    "trl_compare": "c. End to end against TRL's SFTTrainer(loss_type='dft')",
    "data_pipeline": "d. GSM8K data pipeline: tokenisation speed and padding",
}
OUT = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small shapes: checks the benchmarks run, numbers mean little")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS))
    args = parser.parse_args()
    sections = []
    for name, title in BENCHMARKS.items():
        if args.only and name not in args.only:
            continue
        table = importlib.import_module(f"benchmarks.{name}").main(args.quick)
        print(f"\n{title}\n{table}", flush=True)
        command = f"python -m benchmarks.{name}" + (" --quick" if args.quick else "")
        sections.append(f"## {title}\n\n`{command}`\n\n{table}\n")
    if args.only:
        return  # a partial run prints its tables but leaves BENCHMARKS.md to full runs
    header = (
        "# Benchmarks\n\n"
        f"Command: `python -m benchmarks.run{' --quick' if args.quick else ''}` (raw results: `benchmarks/results/*.json`).\n"
        f"Machine: {machine()}; {datetime.date.today()}.\n"
        "Every ratio is measured side by side in one invocation (runs alternate; medians).\n\n"
    )
    OUT.write_text(header + "\n".join(sections))
    print(f"\nWrote {OUT}")


if __name__ == "__main__":
    main()
