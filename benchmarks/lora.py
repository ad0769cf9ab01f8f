"""LoRA against full fine-tuning: peak memory, tokens/s and checkpoint size, DFT on the same model and batch.

Each run is a fresh process (a clean peak-memory mark) that loads the model, then trains through Lightning's
loop on one batch repeated (forward, backward, AdamW); peak resident memory is measured above the level after
loading, the first step is warm-up, and the checkpoint is written with ``trainer.save_checkpoint``. Variants
alternate; medians are reported.

    python -m benchmarks.lora [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as L
from torch.utils.data import DataLoader

from benchmarks.common import PeakMemory, markdown_table, median, run_worker, save
from lit_dft.data import MathDataModule
from lit_dft.lora import LoraArgs
from lit_dft.models import EMBEDDED_MODEL, TINY_MODEL
from lit_dft.module import CausalLMModule

# name: (adapters, gradient checkpointing); LoRA's dropout (0.05) copies each adapted layer's input
VARIANTS = {
    "full": (LoraArgs(), False),
    "lora r=16": (LoraArgs(r=16), False),
    "lora r=16, dropout 0": (LoraArgs(r=16, dropout=0.0), False),
    "full, checkpointing": (LoraArgs(), True),
    "lora r=16, checkpointing": (LoraArgs(r=16), True),
}
GOAL_MEMORY = 0.6  # the goal: LoRA's peak memory at most 0.6x full fine-tuning's


class _StepTimer(L.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def worker(variant: str, model_name: str, steps: int) -> dict:
    data = MathDataModule(preset="champ", tokenizer_name_or_path=model_name, limit=4, max_length=512, batch_size=4)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    lora, checkpointing = VARIANTS[variant]
    module = CausalLMModule(model_name, loss="dft", lora=lora, gradient_checkpointing=checkpointing)
    module.configure_model()
    timer = _StepTimer()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps + 1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    with PeakMemory() as memory:
        trainer.fit(module, train_dataloaders=DataLoader([batch] * (steps + 1), batch_size=None))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "last.ckpt"
        trainer.save_checkpoint(path)
        size = path.stat().st_size
    trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {
        "peak_mb": memory.mb,
        "seconds": median(timer.seconds[1:]),
        "tokens": int(batch.num_tokens),
        "checkpoint_mb": size / 2**20,
        "trained_parameters": trained,
    }


def main(quick: bool = False) -> str:
    model_name, steps, rounds = (TINY_MODEL, 2, 1) if quick else (EMBEDDED_MODEL, 3, 2)
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for _ in range(rounds):
        for name in VARIANTS:
            runs[name].append(run_worker("benchmarks.lora", name, model_name, str(steps)))
    save("lora", {"model": model_name, "runs": runs})
    summary = {name: {key: median([r[key] for r in results]) for key in results[0]} for name, results in runs.items()}
    rows = []
    for name, s in summary.items():
        full = summary["full, checkpointing" if VARIANTS[name][1] else "full"]
        rows.append(
            [
                name,
                f"{int(s['trained_parameters']):,}",
                f"{s['peak_mb']:.0f} ({s['peak_mb'] / full['peak_mb']:.2f}x)",
                f"{s['tokens'] / s['seconds']:.0f} ({full['seconds'] / s['seconds']:.2f}x)",
                f"{s['checkpoint_mb']:.1f} ({s['checkpoint_mb'] / full['checkpoint_mb']:.3f}x)",
            ]
        )
    tokens = int(summary["full"]["tokens"])
    return (
        f"{model_name}, DFT, one batch of 4 CHAMP examples ({tokens} tokens) repeated, {steps} timed steps after "
        f"one warm-up, float32, {rounds} round(s); goal: LoRA's peak memory <= {GOAL_MEMORY}x full fine-tuning's\n\n"
        + markdown_table(
            ["variant", "trained parameters", "peak MB above the loaded model", "tokens/s", "checkpoint MB"], rows
        )
        + "\n\nRatios are against full fine-tuning with the same gradient checkpointing setting."
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        print(json.dumps(worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
    else:
        parser = argparse.ArgumentParser()
        parser.add_argument("--quick", action="store_true")
        print(main(parser.parse_args().quick))
