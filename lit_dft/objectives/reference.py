"""Objectives that weight a whole example by how the current model's likelihood of it compares with a
reference's: iw-SFT. The per-token loss stays elementwise in ``log p_t``; the example's weight is detached
context that the loss computes before the gradient pass (``TokenContext.sequence_log_ratio``)."""

from __future__ import annotations

import torch
from torch import Tensor

from lit_dft.errors import LitDFTError
from lit_dft.objectives.base import TokenContext, TokenObjective


class IWSFT(TokenObjective):
    """Importance-weighted SFT (arXiv 2507.12856): ``-w_s * log p_t`` for every target token ``t`` of example
    ``s``, with the stop-gradient weight ``w_s = min(exp(temperature * r_s), max_weight)`` and
    ``r_s = mean_{t in s}(log p_theta(t) - log p_ref(t))``.

    SFT on curated (filtered) data maximises a lower bound of the RL objective; the importance weight of the
    current model against the reference (the model the data came from, or the initial weights) tightens it.
    At the first step the model is the reference, every weight is 1 and the loss is SFT's; afterwards the
    examples the model has come to prefer weigh more, those it moves away from less. This is the authors'
    sequence-level loss (their code's ``IwSFTLoss`` with ``sum_over_time=True``): the log-ratio averaged over
    the example's target tokens, clipped to [0, 16], temperature 1 as in their training script (the loss
    function's own default is 2). Their per-token variant (ratios clipped to [0.2, 1.8]) is not implemented.

    Args:
        temperature: multiplies the mean log-ratio before the exponential (the authors' ``temp``).
        max_weight: upper clip of the weight (the authors: 16).
    """

    needs = frozenset({"sequence_log_ratio"})

    def __init__(self, temperature: float = 1.0, max_weight: float = 16.0) -> None:
        if temperature <= 0:
            raise LitDFTError(f"IWSFT temperature must be > 0, got {temperature}")
        if max_weight < 1:
            raise LitDFTError(f"IWSFT max_weight must be >= 1 (the weight at the first step), got {max_weight}")
        self.temperature, self.max_weight = temperature, max_weight

    def _weight(self, context: TokenContext) -> Tensor:
        return torch.exp(self.temperature * context.sequence_log_ratio).clamp(max=self.max_weight)

    def token_loss(self, target_log_probs: Tensor, context: TokenContext | None = None) -> Tensor:
        return -self._weight(context) * target_log_probs

    def log_prob_grad(self, target_log_probs: Tensor, context: TokenContext | None = None) -> Tensor:
        return -self._weight(context).to(target_log_probs.dtype)
