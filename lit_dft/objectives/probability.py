"""Objectives of the target token's own probability: SFT, DFT and the probability family of "Beyond Log
Likelihood", with focal loss as the opposite weighting. Each is ``f(p_t)``; what matters is its gradient with
respect to ``log p_t``, the weight it gives a token of probability ``p_t`` (SFT: 1 for every token)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lit_dft.errors import LitDFTError
from lit_dft.objectives.base import TokenContext, TokenObjective


class SFT(TokenObjective):
    """Supervised fine-tuning: the negative log-likelihood ``-log p_t``."""

    def token_loss(self, target_log_probs: Tensor) -> Tensor:
        return -target_log_probs

    def log_prob_grad(self, target_log_probs: Tensor, context: TokenContext | None = None) -> Tensor:
        return torch.full_like(target_log_probs, -1.0)


class DFT(TokenObjective):
    """Dynamic Fine-Tuning (arXiv 2508.05629): ``-sg(p_t)**alpha * log p_t``.

    The stop-gradient weight cancels the implicit ``1/p_t`` importance weight of the SFT gradient.

    Args:
        alpha: exponent of the weight; 0 is SFT, 1 is the paper's DFT.
        min_weight: floor on the weight, so that tokens the model finds unlikely still learn
            (the paper's authors suggest 0.1 when long answers stop improving).
    """

    def __init__(self, alpha: float = 1.0, min_weight: float = 0.0) -> None:
        if alpha < 0:
            raise LitDFTError(f"DFT alpha must be >= 0, got {alpha}")
        if not 0.0 <= min_weight <= 1.0:
            raise LitDFTError(f"DFT min_weight must lie in [0, 1], got {min_weight}")
        self.alpha = alpha
        self.min_weight = min_weight

    def _weight(self, target_log_probs: Tensor) -> Tensor:
        weight = torch.exp(self.alpha * target_log_probs.detach())
        return weight.clamp(min=self.min_weight) if self.min_weight > 0 else weight

    def token_loss(self, target_log_probs: Tensor) -> Tensor:
        return -self._weight(target_log_probs) * target_log_probs

    def log_prob_grad(self, target_log_probs: Tensor, context: TokenContext | None = None) -> Tensor:
        return -self._weight(target_log_probs)


class ASFT(DFT):
    """Anchored SFT (arXiv 2509.23753): DFT's loss plus ``kl_weight * KL(p_ref || p_theta)`` at every target
    position, ``p_ref`` the frozen initial model's next-token distribution (``model.reference``).

    DFT alone can drift: its weights vanish on the tokens it unlearns. The KL term, the forward
    (mass-covering) direction of the authors' code (``kl_div(log_softmax(policy), softmax(ref))``), anchors
    the whole distribution to the reference. The loss computes it chunk by chunk from both models' final hidden
    states and adds its logit gradient ``kl_weight * (p_theta - p_ref)`` in the same pass; ``train/kl_ref``
    logs its token mean. Defaults differ between the authors' code (0.1) and README (0.05); 0.05 here.

    Args:
        kl_weight: lambda, the weight of the KL term.
        alpha: exponent of DFT's weight (1: the paper).
    """

    def __init__(self, kl_weight: float = 0.05, alpha: float = 1.0) -> None:
        super().__init__(alpha=alpha)
        if kl_weight <= 0:
            raise LitDFTError(f"ASFT kl_weight must be > 0 (0 is DFT), got {kl_weight}")
        self.kl_weight = kl_weight


class Prob(TokenObjective):
    """``1 - p_t`` ("-p" in "Beyond Log Likelihood", arXiv 2510.00526): the gradient weight is ``p_t``, as DFT's,
    but through the probability itself rather than under stop-gradient (the same gradient, another loss value)."""

    def token_loss(self, target_log_probs: Tensor) -> Tensor:
        return -torch.expm1(target_log_probs)

    def log_prob_grad(self, target_log_probs: Tensor, context: TokenContext | None = None) -> Tensor:
        return -target_log_probs.exp()


class ProbPower(TokenObjective):
    """``(1 - p_t**alpha) / alpha`` (arXiv 2510.00526, its code's ``GeneralFamily-alpha``): weight ``p_t**alpha``;
    ``alpha`` -> 0 is SFT, 1 is ``prob``, larger values lean harder on the model's prior (the paper's math
    runs: 10).

    Args:
        alpha: the exponent, > 0.
    """

    def __init__(self, alpha: float = 10.0) -> None:
        if alpha <= 0:
            raise LitDFTError(f"ProbPower alpha must be > 0 (alpha -> 0 is SFT), got {alpha}")
        self.alpha = alpha

    def token_loss(self, target_log_probs: Tensor) -> Tensor:
        return -torch.expm1(self.alpha * target_log_probs) / self.alpha

    def log_prob_grad(self, target_log_probs: Tensor, context: TokenContext | None = None) -> Tensor:
        return -torch.exp(self.alpha * target_log_probs)


class ProbThreshold(TokenObjective):
    """The thresholded variants of arXiv 2510.00526: ``1 - p_t`` (``loss: prob``) or ``-log p_t`` (``log_prob``)
    on the tokens with ``p_t >= threshold`` (``keep: above``) or ``p_t <= threshold`` (``below``), 0 on the others.

    The paper's code averages over the tokens that pass the threshold; here, as for every objective, the sum
    is normalised by all target tokens of the global batch, so the loss scale follows the share that passes.
    Its code names no default threshold; 0.5 is this package's choice.

    Args:
        threshold: the probability threshold, in [0, 1].
        keep: which side of the threshold is trained.
        loss: the loss on the kept tokens.
    """

    def __init__(
        self,
        threshold: float = 0.5,
        keep: Literal["above", "below"] = "above",
        loss: Literal["prob", "log_prob"] = "prob",
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise LitDFTError(f"ProbThreshold threshold must lie in [0, 1], got {threshold}")
        self.threshold, self.keep, self.loss = threshold, keep, loss

    def _kept(self, target_log_probs: Tensor) -> Tensor:
        probs = target_log_probs.detach().exp()
        return probs >= self.threshold if self.keep == "above" else probs <= self.threshold

    def token_loss(self, target_log_probs: Tensor) -> Tensor:
        loss = -torch.expm1(target_log_probs) if self.loss == "prob" else -target_log_probs
        return torch.where(self._kept(target_log_probs), loss, torch.zeros_like(loss))

    def log_prob_grad(self, target_log_probs: Tensor, context: TokenContext | None = None) -> Tensor:
        grad = -target_log_probs.exp() if self.loss == "prob" else torch.full_like(target_log_probs, -1.0)
        return torch.where(self._kept(target_log_probs), grad, 0.0)


class Focal(TokenObjective):
    """Focal loss ``-(1 - p_t)**gamma * log p_t`` (Lin et al., 2017), differentiated through the factor as usual:
    it weights tokens the model finds *unlikely* more, the opposite of DFT; a control for the DFT family.

    Args:
        gamma: focusing exponent; 0 is SFT.
    """

    def __init__(self, gamma: float = 2.0) -> None:
        if gamma < 0:
            raise LitDFTError(f"Focal gamma must be >= 0, got {gamma}")
        self.gamma = gamma

    @staticmethod
    def _unlikely(target_log_probs: Tensor) -> tuple[Tensor, Tensor]:
        """``1 - p`` floored at the smallest normal number (at p = 1, log p = 0, a power below 1 has no finite
        gradient), and where the floor does not apply."""
        unlikely = -torch.expm1(target_log_probs)
        tiny = torch.finfo(target_log_probs.dtype).tiny
        return unlikely.clamp_min(tiny), unlikely >= tiny

    def token_loss(self, target_log_probs: Tensor) -> Tensor:
        return -(self._unlikely(target_log_probs)[0] ** self.gamma) * target_log_probs

    def log_prob_grad(self, target_log_probs: Tensor, context: TokenContext | None = None) -> Tensor:
        unlikely, unfloored = self._unlikely(target_log_probs)  # d(1 - p) / d log p = -p where not floored
        through_factor = self.gamma * unlikely ** (self.gamma - 1) * target_log_probs.exp() * target_log_probs
        return -(unlikely**self.gamma) + torch.where(unfloored, through_factor, 0.0)
