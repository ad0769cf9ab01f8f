"""Token objectives: per-token losses computed from the target tokens' log-probabilities.

An objective maps the log-probability ``log p_t`` of each target token to that token's loss.
Everything else (masking, normalisation over the global batch, chunking over the vocabulary)
is the module's job, so a new objective is a few lines: subclass :class:`TokenObjective`,
implement :meth:`TokenObjective.token_loss`, and name it by class path in YAML::

    model:
      loss:
        class_path: my_package.MyObjective
        init_args: {temperature: 2.0}

or add it to :data:`OBJECTIVES` with :func:`register_objective` to select it by a short name.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lit_dft.errors import LitDFTError


class TokenObjective:
    """Base class: maps target log-probabilities (float32, any shape) to per-token losses.

    The loss must be elementwise in ``log p_t``: the chunked loss path relies on it to compute
    the gradient without materialising full-vocabulary logits.
    """

    def token_loss(self, target_log_probs: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, target_log_probs: Tensor) -> Tensor:
        return self.token_loss(target_log_probs)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class SFT(TokenObjective):
    """Supervised fine-tuning: the negative log-likelihood ``-log p_t``."""

    def token_loss(self, target_log_probs: Tensor) -> Tensor:
        return -target_log_probs


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

    def token_loss(self, target_log_probs: Tensor) -> Tensor:
        weight = torch.exp(self.alpha * target_log_probs.detach())
        if self.min_weight > 0:
            weight = weight.clamp(min=self.min_weight)
        return -weight * target_log_probs


OBJECTIVES: dict[str, Callable[[], TokenObjective]] = {"sft": SFT, "dft": DFT}


def register_objective(name: str, factory: Callable[[], TokenObjective]) -> None:
    """Make an objective selectable by ``name`` (e.g. ``--model.loss name``)."""
    OBJECTIVES[name] = factory


def build_objective(spec: str | TokenObjective) -> TokenObjective:
    """Resolve a registered name or pass an objective instance through."""
    if isinstance(spec, TokenObjective):
        return spec
    if spec not in OBJECTIVES:
        raise LitDFTError(
            f"Unknown objective {spec!r}. Registered objectives: {', '.join(sorted(OBJECTIVES))}; "
            "or give a class path (class_path: my_pkg.MyObjective) to a TokenObjective subclass."
        )
    return OBJECTIVES[spec]()
