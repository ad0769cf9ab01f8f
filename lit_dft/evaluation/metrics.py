"""Accuracy over k samples per problem, reducible across DDP ranks."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class MathAccuracy(Metric):
    """mean@k (the paper's number: the fraction of correct samples) and pass@k (problems with a correct sample).

    ``update`` takes a boolean ``(problems, k)`` tensor. The states are sums, so DDP reduces them exactly.
    """

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("correct", "samples", "solved", "problems"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, correct: Tensor) -> None:
        correct = correct.to(torch.bool)
        self.correct += correct.sum()
        self.samples += correct.numel()
        self.solved += correct.any(dim=1).sum()
        self.problems += correct.shape[0]

    def compute(self) -> dict[str, Tensor]:
        return {
            "acc": self.correct.float() / self.samples.clamp(min=1),
            "pass_at_k": self.solved.float() / self.problems.clamp(min=1),
            "problems": self.problems.float(),
        }
