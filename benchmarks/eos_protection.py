"""Does ``model.protect_special_tokens`` let a DFT run learn when to stop? SFT, DFT and DFT with protection
trained by ``configs/objectives.yaml`` (the same data, seed and order as the objectives comparison), the probe
measuring the mean probability of its special target tokens (SmolLM2's end of turn, ``<|im_end|>``, which is
also its EOS) every 4 steps; the table goes to ``benchmarks/results/eos_protection.md``.

    python -m benchmarks.eos_protection [--steps 16] [--every 4]
"""

from __future__ import annotations

import argparse

from benchmarks.common import RESULTS
from benchmarks.objectives import CONFIG, ROOT
from lit_dft.cli import main as lit_dft
from lit_dft.plot import read_scalars

RUNS = ROOT / "runs" / "eos_protection"
VARIANTS = {
    "sft": ["--model.loss=sft"],
    "dft": ["--model.loss=dft"],
    "dft, protect_special_tokens": ["--model.loss=dft", "--model.protect_special_tokens=true"],
}
PROBE = """\
trainer:
  callbacks:
    - class_path: lit_dft.callbacks.ProbeTokenProbabilities
      init_args:
        num_examples: 32
        categories: {rules: {special: '^<\\|[a-z_]+\\|>$'}}
"""
SPECIAL = "vocab_category/probe/special/mean_prob"


def main(steps: int, every: int) -> str:
    RUNS.mkdir(parents=True, exist_ok=True)
    probe = RUNS / "probe.yaml"
    probe.write_text(PROBE)
    curves = {}
    for index, (name, args) in enumerate(VARIANTS.items()):
        run = RUNS / f"run{index}"
        lit_dft(
            ["fit", "--config", str(CONFIG), "--config", str(probe), *args, f"--trainer.max_steps={steps}"]
            + [f"--trainer.val_check_interval={every}", f"--trainer.default_root_dir={run}"]
        )
        curves[name] = read_scalars(run, SPECIAL)[SPECIAL]
    measured = sorted(next(iter(curves.values())))
    rows = ["| objective | " + " | ".join(f"step {s}" for s in measured) + " |", "|---" * (len(measured) + 1) + "|"]
    rows += [f"| {name} | " + " | ".join(f"{curve[s]:.3f}" for s in measured) + " |" for name, curve in curves.items()]
    return "\n".join(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--every", type=int, default=4, help="probe every this many steps")
    args = parser.parse_args()
    table = main(args.steps, args.every)
    (RESULTS / "eos_protection.md").write_text(table + "\n")
    print(table)
