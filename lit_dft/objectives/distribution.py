"""Objectives that weight a token by the shape of the whole next-token distribution, not only by ``p_t``: EAFT
by its top-K entropy, DEFT by its concentration. Both read detached context that the loss computes chunk by
chunk from the logits (see ``TokenContext``)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lit_dft.errors import LitDFTError
from lit_dft.objectives.base import TokenContext, TokenObjective


class EAFT(TokenObjective):
    """Entropy-adaptive fine-tuning (arXiv 2601.02151): ``-sg(H_topK / ln K)**alpha * log p_t``, with ``H_topK``
    the entropy of the ``top_k`` largest probabilities renormalised to sum to 1.

    A confident prediction (low entropy) that disagrees with the target is a "confident conflict": its weight
    is small, so the model is not forced against a strong prior; uncertain positions keep SFT's weight. The
    authors' code (LLaMA-Factory's ``_eaft_cross_entropy``) divides by the constant 3.0, which is ``ln 20``
    to 0.15%; dividing by ``ln K`` keeps the weight in [0, 1] for any ``top_k``. Axolotl's port does not
    normalise (weights up to ~3 at K=20).

    Args:
        top_k: K, how many of the largest probabilities the entropy is taken over (the paper: 20).
        alpha: exponent of the normalised entropy (the paper: 1).
    """

    needs = frozenset({"topk_entropy"})

    def __init__(self, top_k: int = 20, alpha: float = 1.0) -> None:
        if top_k < 2:
            raise LitDFTError(f"EAFT top_k must be >= 2 (the entropy of one probability is 0), got {top_k}")
        if alpha < 0:
            raise LitDFTError(f"EAFT alpha must be >= 0, got {alpha}")
        self.top_k, self.alpha = top_k, alpha

    def _weight(self, context: TokenContext) -> Tensor:
        return (context.topk_entropy / math.log(self.top_k)).clamp(0.0, 1.0) ** self.alpha

    def token_loss(self, target_log_probs: Tensor, context: TokenContext | None = None) -> Tensor:
        return -self._weight(context) * target_log_probs

    def log_prob_grad(self, target_log_probs: Tensor, context: TokenContext | None = None) -> Tensor:
        return -self._weight(context).to(target_log_probs.dtype).expand_as(target_log_probs)


class DEFT(TokenObjective):
    """DEFT (arXiv 2602.11424), parameter-free: ``(1 - p_t**a) / a`` with ``a = sg(sum_v p_v**2)``, the
    concentration of the next-token distribution (``exp(-H_2)``, the Rényi-2 entropy's).

    The gradient weight is ``p_t**a``: where the model is spread out (``a`` small) it is close to SFT's 1,
    where it is concentrated (``a`` near 1) close to DFT's ``p_t``. The authors' code divides by
    ``a + 1e-6``; here ``a >= 1/V > 0``, so no epsilon is added.
    """

    needs = frozenset({"sum_sq_probs"})

    def token_loss(self, target_log_probs: Tensor, context: TokenContext | None = None) -> Tensor:
        concentration = context.sum_sq_probs
        return -torch.expm1(concentration * target_log_probs) / concentration

    def log_prob_grad(self, target_log_probs: Tensor, context: TokenContext | None = None) -> Tensor:
        return -torch.exp(context.sum_sq_probs * target_log_probs)
