"""What an objective is: a map from the target tokens' log-probabilities, and the per-token context it declares,
to per-token losses. Masking, normalisation and chunking are the loss's and the module's job."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from lit_dft.errors import LitDFTError


@dataclass
class TokenContext:
    """Detached per-token quantities besides ``log p_t``, one value per target token (flat, like the log-probs).

    Only the fields an objective declares in ``needs`` are filled (``entropy`` always is: it is logged as
    ``train/entropy``); the others are None. The chunked loss computes them chunk by chunk, so no
    full-vocabulary tensor exists for the batch.
    """

    entropy: Tensor | None = None
    """Entropy of the next-token distribution, in nats."""
    topk_entropy: Tensor | None = None
    """Entropy of the ``top_k`` largest probabilities renormalised to sum to 1 (the objective's ``top_k``)."""
    sum_sq_probs: Tensor | None = None
    """``sum_v p_v**2``: 1 for a one-hot distribution, ``1/V`` for a uniform one."""
    special: Tensor | None = None
    """Bool: the target is a special or template token (EOS, end of turn, ...)."""
    sequence: Tensor | None = None
    """Index of the example the token belongs to, numbered 0, 1, ... over the batch's examples that have target
    tokens (so below the number of target tokens)."""
    reference_log_probs: Tensor | None = None
    """``log p_ref`` of the target token under the reference: the frozen reference model, or the data's column
    (``model.reference: data``)."""
    sequence_log_ratio: Tensor | None = None
    """``mean(log p_t - log p_ref)`` over the target tokens of the token's example: how much more likely the
    current model finds the example than the reference does, per token (needs ``sequence`` and
    ``reference_log_probs``, which the loss then also computes)."""

    def __getitem__(self, index: slice) -> TokenContext:
        return TokenContext(
            **{f.name: None if (v := getattr(self, f.name)) is None else v[index] for f in fields(self)}
        )


_LOSS_METHODS = ("log_prob_grad", "token_loss", "__call__")
CONTEXT_FIELDS = frozenset(f.name for f in fields(TokenContext))
REFERENCE_FIELDS = frozenset({"reference_log_probs", "sequence_log_ratio"})
"""Context fields that take the reference's log-probabilities."""


class TokenObjective:
    """Base class: maps target log-probabilities (float32 or wider) to per-token losses.

    A one-argument ``token_loss(target_log_probs)`` is enough for objectives of ``log p_t`` alone. One that
    needs more declares it, e.g. ``needs = frozenset({"entropy"})``, and implements
    ``token_loss(target_log_probs, context)`` with a :class:`TokenContext`. The loss must be elementwise in
    ``log p_t`` given the (detached) context: the chunked path relies on it to compute the gradient without
    full-vocabulary logits.
    """

    needs: frozenset[str] = frozenset()
    """Context fields the objective reads (see :class:`TokenContext`)."""
    kl_weight: float = 0.0
    """Weight of a ``KL(p_ref || p_theta)`` term the loss adds at every target position, against a frozen
    reference model (``model.reference``); 0: no KL term."""

    @property
    def needs_reference(self) -> bool:
        """Whether the loss needs a reference: for its KL term or for the reference log-probabilities."""
        return self.kl_weight > 0 or bool(self.needs & REFERENCE_FIELDS)

    def token_loss(self, target_log_probs: Tensor, context: TokenContext | None = None) -> Tensor:
        raise NotImplementedError

    def log_prob_grad(self, target_log_probs: Tensor, context: TokenContext | None = None) -> Tensor | None:
        """``d token_loss / d log p_t`` of every token in closed form, or None (the default): the chunked loss then
        differentiates :meth:`token_loss` with autograd, one call per chunk. The built-in objectives give it (and
        tests hold it to autograd's); a new objective need not."""
        return None

    def known_log_prob_grad(self, target_log_probs: Tensor, context: TokenContext | None = None) -> Tensor | None:
        """:meth:`log_prob_grad`, if it is that of this loss: a subclass that redefines only :meth:`token_loss` or
        ``__call__`` (``class MyDFT(DFT)``) does not inherit its parent's derivative, it gets autograd's. (A subclass
        that changes a helper both use must redefine ``log_prob_grad`` too.)"""
        grad, *loss = (next(c for c in type(self).__mro__ if name in vars(c)) for name in _LOSS_METHODS)
        return self.log_prob_grad(target_log_probs, context) if all(issubclass(grad, c) for c in loss) else None

    def __call__(self, target_log_probs: Tensor, context: TokenContext | None = None) -> Tensor:
        if self.needs:
            return self.token_loss(target_log_probs, context)
        return self.token_loss(target_log_probs)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


def check_needs(objective: TokenObjective) -> TokenObjective:
    unknown = set(objective.needs) - CONTEXT_FIELDS
    if unknown:
        raise LitDFTError(
            f"{type(objective).__name__} needs {', '.join(sorted(unknown))}, which no loss provides; "
            f"the context has: {', '.join(sorted(CONTEXT_FIELDS))}"
        )
    if "topk_entropy" in objective.needs and not (getattr(objective, "top_k", None) or 0) >= 1:
        raise LitDFTError(f"{type(objective).__name__} needs topk_entropy and so a top_k >= 1")
    return objective


class ProtectSpecialTokens(TokenObjective):
    """Any objective, with the SFT loss ``-log p_t`` on special and template tokens (EOS, end of turn), so that
    objectives that down-weight unlikely tokens still learn when to stop."""

    def __init__(self, objective: TokenObjective) -> None:
        self.objective = objective
        self.needs = objective.needs | {"special"}
        self.top_k = getattr(objective, "top_k", None)
        self.kl_weight = objective.kl_weight

    def token_loss(self, target_log_probs: Tensor, context: TokenContext | None = None) -> Tensor:
        return torch.where(context.special, -target_log_probs, self.objective(target_log_probs, context))

    def log_prob_grad(self, target_log_probs: Tensor, context: TokenContext | None = None) -> Tensor | None:
        inner = self.objective.known_log_prob_grad(target_log_probs, context)
        return None if inner is None else torch.where(context.special, -1.0, inner)

    def __repr__(self) -> str:
        return f"ProtectSpecialTokens({self.objective!r})"
