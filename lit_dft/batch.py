"""The contracts between data, loss and callbacks: typed batches in, typed token outputs and predictions out.

The data module builds :class:`TrainingBatch` and :class:`PromptBatch`; the module turns a training batch
into :class:`TokenOutputs` and a prompt batch into :class:`Prediction` records; callbacks read only those.
None of them reads another's dict keys or internals. A new per-token quantity an objective or a callback
needs (a reference model's log-probabilities, say) becomes a field of :class:`TokenOutputs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

IGNORE_INDEX = -100
"""Label of positions that are not trained: the prompt and the padding."""

_STEP_KEY = "token_outputs"  # where ``training_step``'s dict carries the outputs (Lightning wants a dict with "loss")


class _Movable:
    """``.to(device)`` and ``.pin_memory()`` for a dataclass of tensors and plain values: Lightning moves batches
    with the first, a DataLoader with ``pin_memory=True`` calls the second (it leaves dataclasses alone
    otherwise). Copies to a GPU do not block the host, as Lightning's own for plain tensors (it passes
    ``non_blocking`` to nothing else); from pinned memory they overlap with the device's work."""

    def _map_tensors(self, function):
        tensors = {f.name: v for f in fields(self) if isinstance(v := getattr(self, f.name), Tensor)}
        return replace(self, **{name: function(v) for name, v in tensors.items()})

    def to(self, device: torch.device | str):
        non_blocking = torch.device(device).type == "cuda"
        return self._map_tensors(lambda v: v.to(device, non_blocking=non_blocking))

    def pin_memory(self):
        return self._map_tensors(Tensor.pin_memory)


@dataclass
class TrainingBatch(_Movable):
    """Right-padded examples with their labels: what the token objective trains and validates on."""

    input_ids: Tensor
    """``(B, T)`` token ids, prompt then response, padded on the right."""
    attention_mask: Tensor
    """``(B, T)`` 1 on real tokens, 0 on padding."""
    labels: Tensor
    """``(B, T)`` the token ids where trained (the response), ``IGNORE_INDEX`` elsewhere."""
    reference_log_probs: Tensor | None = None
    """``(B, T)`` float32: a reference model's log-probability of each trained label, at the label's position (0
    elsewhere), read from the data (``MathDataModule.reference_log_probs_column``); None without that column."""
    target_positions: Tensor | None = None
    """``(N,)`` the flat indices into ``targets.flatten()`` of the trained positions, in batch order, computed by
    the collator on the host: selecting the targets with them on a GPU needs no wait for the device, which a
    boolean mask would (its count is unknown to the host). None: :meth:`positions` computes them."""

    @property
    def targets(self) -> Tensor:
        """``(B, T-1)``: the token each position predicts (the labels shifted left), ``IGNORE_INDEX`` where untrained."""
        return self.labels[:, 1:]

    def positions(self) -> Tensor:
        """``target_positions``, or the same indices from the labels (a batch built by hand)."""
        if self.target_positions is not None:
            return self.target_positions
        return (self.targets.flatten() != IGNORE_INDEX).nonzero().flatten()

    @property
    def num_tokens(self) -> Tensor:
        """Real (non-padding) tokens in the batch, a 0-d tensor."""
        return self.attention_mask.sum()


@dataclass
class PromptBatch(_Movable):
    """Left-padded prompts of one benchmark's problems, answered by generation, with what scoring needs."""

    input_ids: Tensor
    """``(B, T)`` prompt token ids, padded on the left."""
    attention_mask: Tensor
    """``(B, T)`` 1 on prompt tokens, 0 on padding."""
    benchmark: str
    """Name of the benchmark in logs and predictions."""
    ids: list[str]
    """Problem ids."""
    questions: list[str]
    """The problems' questions as the data gives them (before any prompt formatting)."""
    answers: list[list[str]]
    """Gold answers per problem (several only for list answers, all of which must match)."""
    counted: list[bool]
    """False for padding rows that give every rank the same number of batches: answered, never scored."""
    significant_figures: bool = False
    """Match numbers at the precision the gold states (the benchmark's preset says so)."""


@dataclass
class TokenOutputs:
    """What one forward pass over a :class:`TrainingBatch` gives: the objective's loss and every target token's
    log-probability, so callbacks see them without a second forward pass."""

    loss: Tensor
    """Sum of the objective's token losses over the batch's target tokens (normalising is the module's job)."""
    target_log_probs: Tensor
    """``(B, T-1)`` detached ``log p_t`` in float32 or wider; 0 where ``target_mask`` is False."""
    target_mask: Tensor
    """``(B, T-1)`` bool: True at positions whose next token is trained."""
    target_ids: Tensor
    """``(B, T-1)`` the target token at each position, ``IGNORE_INDEX`` where ``target_mask`` is False."""
    target_entropy: Tensor
    """``(B, T-1)`` detached entropy (nats) of the next-token distribution at each position; 0 where masked."""
    target_kl: Tensor | None = None
    """``(B, T-1)`` detached ``KL(p_ref || p_theta)`` at each position for an objective with a KL term, else None."""
    target_positions: Tensor | None = None
    """``(N,)`` the flat indices of the ``target_mask`` positions in batch order (``TrainingBatch.target_positions``),
    so that :meth:`select` needs no wait for the device; None: the mask is used."""

    def select(self, per_position: Tensor) -> Tensor:
        """The values of a ``(B, T-1)`` tensor at the target positions, flat, in batch order."""
        if self.target_positions is None:
            return per_position[self.target_mask]
        return per_position.flatten().index_select(0, self.target_positions)

    @property
    def log_probs(self) -> Tensor:
        """The target tokens' log-probabilities, flat, in batch order."""
        return self.select(self.target_log_probs)

    def step_output(self) -> dict[str, Any]:
        """``training_step``'s return value: Lightning back-propagates ``loss``; callbacks get these outputs (loss
        detached) back through :meth:`of`."""
        return {"loss": self.loss, _STEP_KEY: replace(self, loss=self.loss.detach())}

    @staticmethod
    def of(outputs: Any) -> TokenOutputs | None:
        """The token outputs in what a step hook received as ``outputs``; None when the step produced none."""
        if isinstance(outputs, TokenOutputs):
            return outputs
        found = outputs.get(_STEP_KEY) if isinstance(outputs, Mapping) else None
        return found if isinstance(found, TokenOutputs) else None


@dataclass(frozen=True)
class Prediction(_Movable):
    """One generated answer to one problem, checked against the gold answers (movable, like a batch, because
    Lightning moves predict outputs to the CPU)."""

    benchmark: str
    id: str
    question: str
    sample: int
    """Index of the sample among the problem's k."""
    gold: list[str]
    generation: str
    extracted: str | None
    """The final answer read from the generation; None when there is none."""
    correct: bool
    reason: str
    """Why it is incorrect: no answer, timeout, not equivalent, checker error; empty when correct."""
