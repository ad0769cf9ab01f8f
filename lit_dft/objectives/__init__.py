"""Token objectives: per-token losses from the target tokens' log-probabilities and, where declared, their context.

An objective maps the log-probability ``log p_t`` of each target token (and the per-token context it declares
in ``needs``: entropy, top-K entropy, the distribution's concentration, whether the token is special, the
reference's log-probabilities) to that token's loss. Everything else (masking, normalisation over the global
batch, chunking over the vocabulary) is the loss's and the module's job, so a new objective is a few lines:
subclass :class:`TokenObjective`, implement :meth:`TokenObjective.token_loss`, and name it by class path in YAML::

    model:
      loss:
        class_path: my_package.MyObjective
        init_args: {temperature: 2.0}

or add it to :data:`OBJECTIVES` with :func:`register_objective` to select it by a short name.
"""

from __future__ import annotations

from collections.abc import Callable

from lit_dft.errors import LitDFTError
from lit_dft.objectives.base import (
    CONTEXT_FIELDS,
    REFERENCE_FIELDS,
    ProtectSpecialTokens,
    TokenContext,
    TokenObjective,
    check_needs,
)
from lit_dft.objectives.distribution import DEFT, EAFT
from lit_dft.objectives.probability import ASFT, DFT, SFT, Focal, Prob, ProbPower, ProbThreshold
from lit_dft.objectives.reference import IWSFT

OBJECTIVES: dict[str, Callable[[], TokenObjective]] = {
    "sft": SFT,
    "dft": DFT,
    "eaft": EAFT,
    "deft": DEFT,
    "asft": ASFT,
    "iw_sft": IWSFT,
    "prob": Prob,
    "prob_power": ProbPower,
    "prob_threshold": ProbThreshold,
    "focal": Focal,
}
"""Objectives by the short name ``--model.loss`` takes, with their default settings."""


def register_objective(name: str, factory: Callable[[], TokenObjective]) -> None:
    """Make an objective selectable by ``name`` (e.g. ``--model.loss name``)."""
    OBJECTIVES[name] = factory


def build_objective(spec: str | TokenObjective) -> TokenObjective:
    """Resolve a registered name or pass an objective instance through; its declared context is checked."""
    if isinstance(spec, TokenObjective):
        return check_needs(spec)
    if spec not in OBJECTIVES:
        raise LitDFTError(
            f"Unknown objective {spec!r}. Registered objectives: {', '.join(sorted(OBJECTIVES))}; "
            "or give a class path (class_path: my_pkg.MyObjective) to a TokenObjective subclass."
        )
    return check_needs(OBJECTIVES[spec]())


__all__ = [
    "ASFT",
    "CONTEXT_FIELDS",
    "DEFT",
    "DFT",
    "EAFT",
    "IWSFT",
    "OBJECTIVES",
    "REFERENCE_FIELDS",
    "SFT",
    "Focal",
    "Prob",
    "ProbPower",
    "ProbThreshold",
    "ProtectSpecialTokens",
    "TokenContext",
    "TokenObjective",
    "build_objective",
    "register_objective",
]
