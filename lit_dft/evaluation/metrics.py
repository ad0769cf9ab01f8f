"""Accuracy over k samples per problem, with its standard error over problems, reducible across DDP ranks."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class MathAccuracy(Metric):
    """mean@k (the paper's number: the fraction of correct samples), its standard error over problems, and
    pass@k (problems with a correct sample).

    ``update`` takes a boolean ``(problems, k)`` tensor. The states are sums, so DDP reduces them exactly. The
    standard error treats the problems as a sample of the benchmark's population: ``std(s_i) / sqrt(n)`` over the
    problems' own mean@k ``s_i`` (sample standard deviation; 0 with fewer than two problems). The k samples of a
    problem are not independent draws of the benchmark, so they narrow it only through ``s_i``.
    """

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("correct", "samples", "solved", "problems"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        for name in ("score_sum", "score_squares"):  # of the problems' mean@k, for the standard error
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, correct: Tensor) -> None:
        correct = correct.to(torch.bool)
        self.correct += correct.sum()
        self.samples += correct.numel()
        self.solved += correct.any(dim=1).sum()
        self.problems += correct.shape[0]
        scores = correct.to(torch.float64).mean(dim=1)
        self.score_sum += scores.sum()
        self.score_squares += scores.square().sum()

    def compute(self) -> dict[str, Tensor]:
        n = self.problems.to(torch.float64)
        stderr = torch.zeros_like(n)
        if self.problems > 1:
            variance = (self.score_squares - self.score_sum**2 / n) / (n - 1)
            stderr = (variance.clamp(min=0) / n).sqrt()  # clamp: rounding can leave a variance of -1e-17
        return {
            "acc": self.correct.float() / self.samples.clamp(min=1),
            "acc_stderr": stderr.float(),
            "pass_at_k": self.solved.float() / self.problems.clamp(min=1),
            "problems": self.problems.float(),
        }
