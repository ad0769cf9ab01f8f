"""Run the benchmarks and write BENCHMARKS.md.

    python -m benchmarks.run [--quick] [--only NAME ...]

Each benchmark's table is kept in benchmarks/results/NAME.md; BENCHMARKS.md is assembled from all of
them, so ``--only`` reruns one and keeps the others. Needs the bench extra (pip install -e '.[bench]')
for the TRL comparison and ../shared/data for GSM8K and MATH-500.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
from pathlib import Path

from benchmarks.common import RESULTS, machine

BENCHMARKS = {
    "step_time": "a. Step time of every objective against SFT",
    "loss_memory": "b. Chunked vs naive loss (DFT objective, float32, forward + backward)",
    "trl_compare": "c. End to end against TRL's SFTTrainer(loss_type='dft')",
    "data_pipeline": "d. GSM8K data pipeline: tokenisation speed and padding",
    "generation": "e. Evaluation: batched vs one-at-a-time generation, answer checks per second",
    "lora": "f. LoRA against full fine-tuning (DFT, same batch)",
    "continuous_batching": "g. Generation: padded batches vs continuous batching (same prompts)",
    "large_vocab": "h. A 151,936-token vocabulary against TRL's SFTTrainer(loss_type='dft')",
    "rank0_loading": "i. FSDP2 loading: every rank vs rank 0 only (a non-zero rank's peak host memory)",
}
OUT = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def _other_sections() -> list[str]:
    """The sections of BENCHMARKS.md that other commands write (the GPU check, answer checking): kept as they are."""
    if not OUT.exists():
        return []
    titles = {f"## {title}" for title in BENCHMARKS.values()}
    sections = ["## " + part for part in OUT.read_text().split("\n## ")[1:]]
    return [section.rstrip("\n") + "\n" for section in sections if section.splitlines()[0] not in titles]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--quick", action="store_true", help="small shapes: checks the benchmarks run, numbers mean little"
    )
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS))
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    for name in args.only or BENCHMARKS:
        table = importlib.import_module(f"benchmarks.{name}").main(args.quick)
        command = f"python -m benchmarks.{name}" + (" --quick" if args.quick else "")
        section = f"## {BENCHMARKS[name]}\n\n`{command}` ({machine()}; {datetime.date.today()})\n\n{table}\n"
        print(f"\n{section}", flush=True)
        (RESULTS / f"{name}.md").write_text(section)
    sections = [(RESULTS / f"{name}.md").read_text() for name in BENCHMARKS if (RESULTS / f"{name}.md").exists()]
    sections += _other_sections()
    header = (
        "# Benchmarks\n\n"
        "All of them: `python -m benchmarks.run` (one: `--only NAME`; raw results in `benchmarks/results/`).\n"
        "Every ratio is measured side by side in one invocation (runs alternate; medians), on the machine named\n"
        "in each section.\n\n"
    )
    OUT.write_text(header + "\n".join(sections))
    print(f"Wrote {OUT}")


if __name__ == "__main__":
    main()
