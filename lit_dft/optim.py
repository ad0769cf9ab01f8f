"""The optimiser: AdamW without decay on biases and norms, linear warm-up, then cosine decay (the paper's)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class OptimizerArgs:
    """AdamW and its learning-rate schedule; the defaults are the paper's."""

    learning_rate: float = 5e-5
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW's betas."""
    weight_decay: float = 0.01
    """Weight decay, not applied to biases and norm weights."""
    warmup_ratio: float = 0.1
    """Fraction of the optimiser steps spent in linear warm-up, before the cosine decay."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of the peak."""


def _keep_implementation(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    """A resumed run steps with its own implementation (fused or not), not the one its checkpoint saved: loading a
    state dict sets each group's settings, and every strategy's loading (FSDP2's too) goes through it."""
    own = {"fused": optimizer.defaults["fused"], "foreach": optimizer.defaults["foreach"]}
    return {**state_dict, "param_groups": [group | own for group in state_dict["param_groups"]]}


def configure_adamw(
    params: Iterable[torch.nn.Parameter], args: OptimizerArgs, total_steps: int, fused: bool = True
) -> dict[str, Any]:
    """AdamW over the trainable ``params`` and its per-step schedule, as ``configure_optimizers`` returns them;
    ``fused``: torch's one-kernel step, without the loop implementation's temporaries the size of the weights."""
    params = [p for p in params if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": args.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, betas=tuple(args.betas), fused=fused or None)
    optimizer.register_load_state_dict_pre_hook(_keep_implementation)
    total = max(1, total_steps)
    warmup = math.ceil(args.warmup_ratio * total)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
