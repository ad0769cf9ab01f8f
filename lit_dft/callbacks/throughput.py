"""Training throughput in the logs: tokens/s (all and target tokens) and, where the device's peak is known, MFU."""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch import Callback, LightningModule, Trainer


class TokenThroughput(Callback):
    """Every ``every_n_steps`` optimiser steps logs ``perf/tokens_per_s``, ``perf/target_tokens_per_s``
    (summed over ranks) and ``perf/mfu`` (model FLOPs utilisation, 6 FLOPs per parameter per token;
    only on devices whose peak FLOPs Lightning knows, i.e. not on CPUs).

    Args:
        every_n_steps: optimiser steps per measurement window.
    """

    def __init__(self, every_n_steps: int = 10) -> None:
        self.every_n_steps = every_n_steps
        self._counts: torch.Tensor | None = None
        self._start: float | None = None
        self._peak_flops: float | None = None
        self._step_at_batch_start = 0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dtype = next(pl_module.parameters()).dtype
        if trainer.precision.startswith("bf16"):
            dtype = torch.bfloat16
        elif trainer.precision.startswith("16"):
            dtype = torch.float16
        self._peak_flops = get_available_flops(pl_module.device, dtype)
        self._params = sum(p.numel() for p in pl_module.parameters())

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._start is None:
            self._start = time.perf_counter()
            self._counts = torch.zeros(2, device=pl_module.device)
            return  # the first batch carries warm-up costs: start the clock after it
        tokens = (
            batch["attention_mask"].sum() if "attention_mask" in batch else torch.tensor(batch["input_ids"].numel())
        )
        targets = (
            outputs["target_mask"].sum() if isinstance(outputs, dict) and "target_mask" in outputs else torch.tensor(0)
        )
        self._counts += torch.stack([tokens, targets]).to(self._counts)
        step_done = trainer.global_step > self._step_at_batch_start
        if step_done and trainer.global_step % self.every_n_steps == 0:
            totals = trainer.strategy.reduce(self._counts, reduce_op="sum")
            seconds = time.perf_counter() - self._start
            metrics = {
                "perf/tokens_per_s": float(totals[0]) / seconds,
                "perf/target_tokens_per_s": float(totals[1]) / seconds,
            }
            if self._peak_flops:
                metrics["perf/mfu"] = (
                    6 * self._params * float(totals[0]) / seconds / (self._peak_flops * trainer.world_size)
                )
            if trainer.is_global_zero:
                for logger in trainer.loggers:
                    logger.log_metrics(metrics, step=trainer.global_step)
            self._counts.zero_()
            self._start = time.perf_counter()
