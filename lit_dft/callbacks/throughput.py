"""Training throughput in the logs: tokens/s (all and target tokens) and, where the device's peak is known, MFU."""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch import Callback, LightningModule, Trainer

from lit_dft.batch import TokenOutputs, TrainingBatch
from lit_dft.strategies import FSDP2Strategy, top_level_models


class TokenThroughput(Callback):
    """Every ``every_n_steps`` optimiser steps logs ``perf/tokens_per_s``, ``perf/target_tokens_per_s``
    (summed over ranks) and ``perf/mfu`` (model FLOPs utilisation, with :func:`flops_per_token`;
    only on devices whose peak FLOPs Lightning knows, i.e. not on CPUs). The peak is that of the dtype the
    matrix products run in: FSDP2's ``param_dtype`` or the trainer's precision. Time spent in validation
    (and the probe and checkpointing that follow it) does not count.

    Args:
        every_n_steps: optimiser steps per measurement window.
    """

    def __init__(self, every_n_steps: int = 10) -> None:
        self.every_n_steps = every_n_steps
        self._counts: torch.Tensor | None = None
        self._start: float | None = None
        self._peak_flops: float | None = None
        self._step_at_batch_start = 0
        self._paused_at: float | None = None
        self._clock = time.perf_counter

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._peak_flops = get_available_flops(pl_module.device, compute_dtype(trainer, pl_module))
        self.flops_per_token = sum(flops_per_token(model) for model in top_level_models(pl_module))

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._start is not None and not trainer.sanity_checking:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)  # the training work queued so far belongs to training
            self._paused_at = self._clock()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._step_at_batch_start = trainer.global_step
        if self._paused_at is not None:  # validation, the probe and checkpointing since the pause do not count
            self._start += self._clock() - self._paused_at
            self._paused_at = None

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._start is None:
            self._start = self._clock()
            self._counts = torch.zeros(2, device=pl_module.device)
            return  # the first batch carries warm-up costs: start the clock after it
        token_outputs = TokenOutputs.of(outputs)
        batch_tokens = batch.num_tokens if isinstance(batch, TrainingBatch) else torch.tensor(0)
        batch_targets = token_outputs.target_mask.sum() if token_outputs is not None else torch.tensor(0)
        self._counts += torch.stack([batch_tokens.to(self._counts), batch_targets.to(self._counts)])
        step_done = trainer.global_step > self._step_at_batch_start
        if step_done and trainer.global_step % self.every_n_steps == 0:
            tokens, targets = trainer.strategy.reduce(self._counts, reduce_op="sum").tolist()  # waits for the GPU
            seconds = self._clock() - self._start
            metrics = {"perf/tokens_per_s": tokens / seconds, "perf/target_tokens_per_s": targets / seconds}
            if self._peak_flops:
                metrics["perf/mfu"] = self.flops_per_token * tokens / seconds / (self._peak_flops * trainer.world_size)
            if trainer.is_global_zero:
                for logger in trainer.loggers:
                    logger.log_metrics(metrics, step=trainer.global_step)
            self._counts.zero_()
            self._start = self._clock()


def compute_dtype(trainer: Trainer, pl_module: LightningModule) -> torch.dtype:
    """The dtype the matrix products run in: FSDP2's ``param_dtype``, else the precision's, else the weights'."""
    if isinstance(trainer.strategy, FSDP2Strategy) and trainer.strategy.policy.param_dtype is not None:
        return trainer.strategy.policy.param_dtype
    if str(trainer.precision).startswith("bf16"):
        return torch.bfloat16
    if str(trainer.precision).startswith("16"):
        return torch.float16
    return next(pl_module.parameters()).dtype


def flops_per_token(model: torch.nn.Module) -> int:
    """6 FLOPs per trained parameter (forward, input and weight gradients), 4 per frozen parameter of a model that
    trains (a LoRA model's base: forward and input gradient), 2 per parameter of a frozen model (a reference)."""
    trains = any(p.requires_grad for p in model.parameters())
    return sum((6 if p.requires_grad else 4 if trains else 2) * p.numel() for p in model.parameters())
