"""Objective losses over target tokens, from logits (naive) or from hidden states (chunked).

Both paths give the *sum* of per-token losses (normalisation over the global batch is the module's job),
the detached float32 log-probabilities of the target tokens and the entropy of each next-token
distribution, plus whatever context the objective declares (:class:`~lit_dft.objectives.TokenContext`);
:class:`TokenLoss` returns them as :class:`~lit_dft.batch.TokenOutputs`, which the module hands to
callbacks. The chunked path never materialises full-vocabulary logits for the batch: it projects
``chunk_size`` target tokens at a time, and computes each chunk's gradient during the forward (as fused
linear cross-entropy kernels do), so backward costs no second projection.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, NamedTuple

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.distributed.fsdp import FSDPModule

from lit_dft.batch import IGNORE_INDEX, TokenOutputs, TrainingBatch
from lit_dft.errors import LitDFTError
from lit_dft.lora import adapters_disabled, base_model, decoder
from lit_dft.objectives import REFERENCE_FIELDS, TokenContext, TokenObjective


def _at_least_float32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def target_log_probs_from_logits(logits: Tensor, targets: Tensor) -> Tensor:
    """``log p_t`` in (at least) float32 via logsumexp: no full softmax or log-softmax copy is kept."""
    target_logits = _at_least_float32(logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1))
    return target_logits - torch.logsumexp(_at_least_float32(logits), dim=-1)


def target_log_probs_chunked(hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int | None = None) -> Tensor:
    """Detached ``log p_t`` from hidden states ``(N, H)`` and a head ``(V, H)``, ``chunk_size`` tokens at a time: the
    reference's log-probabilities, and the pass an objective that weights whole examples needs before its
    gradient pass."""
    chunk_size = chunk_size or default_chunk_size(weight.shape[0], hidden.device.type)
    log_probs = torch.empty(
        hidden.shape[0], dtype=torch.promote_types(hidden.dtype, torch.float32), device=hidden.device
    )
    matmul = _matmul_dtype(hidden)
    w = weight.to(matmul)  # once, not once per chunk as autocast would
    with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
        for start in range(0, hidden.shape[0], chunk_size):
            chunk = slice(start, start + chunk_size)
            logits = hidden[chunk].to(matmul) @ w.T  # in the gradient pass's dtype
            log_probs[chunk] = target_log_probs_from_logits(logits, targets[chunk])
    return log_probs


def _sequence_mean(values: Tensor, sequence: Tensor) -> Tensor:
    """Each value replaced by the mean of the values of its sequence (the same index in ``sequence``, which is
    below the number of values: no wait for the device to learn the largest index, as ``bincount`` would)."""
    counts, sums = (torch.zeros_like(values).index_add_(0, sequence, v) for v in (torch.ones_like(values), values))
    return sums.index_select(0, sequence) / counts.index_select(0, sequence)


def _with_sequence_log_ratio(context: TokenContext, log_probs: Tensor, objective: TokenObjective) -> TokenContext:
    """The context with ``sequence_log_ratio`` from the detached ``log_probs``, if the objective needs it."""
    if "sequence_log_ratio" not in objective.needs:
        return context
    if context.sequence is None or context.reference_log_probs is None:
        raise LitDFTError(f"{objective!r} needs sequence_log_ratio: give the context sequence and reference_log_probs")
    ratio = log_probs - context.reference_log_probs.to(log_probs.dtype)
    return replace(context, sequence_log_ratio=_sequence_mean(ratio, context.sequence))


class TokenTerms(NamedTuple):
    """What the loss computes for N target tokens."""

    loss: Tensor
    """The objective's loss summed over the tokens (with ``kl_weight`` times the summed KL, if any)."""
    log_probs: Tensor
    """``(N,)`` detached ``log p_t``."""
    entropy: Tensor
    """``(N,)`` detached entropy of each next-token distribution."""
    kl_ref: Tensor | None = None
    """``(N,)`` detached ``KL(p_ref || p_theta)`` at each position, when the objective has a KL term."""


_BLOCK_ELEMENTS = 2**20  # rows of a chunk handled at once for its statistics: 4 MB float32 temporaries, in cache


def _xlogy(x: Tensor, y: Tensor) -> Tensor:
    """``x * y`` with 0 where ``x`` is 0 (the ``0 * -inf`` of a masked logit counts as 0)."""
    return torch.where(x > 0, x * y, torch.zeros((), dtype=x.dtype, device=x.device))


_TOP_BLOCK = 64  # vocabulary entries per block when searching the top K of a row


def _top_values(rows: Tensor, k: int) -> Tensor:
    """The ``k`` largest values of every row, as ``rows.topk(k).values``, about twice as fast on a CPU for a large
    vocabulary (other devices use ``topk``): the k largest values lie in the k blocks of ``_TOP_BLOCK`` entries
    with the largest maxima, so one pass of block maxima narrows the search to ``k * _TOP_BLOCK`` entries a row."""
    n, width = rows.shape
    blocks = width // _TOP_BLOCK
    if blocks <= 2 * k or rows.device.type != "cpu":  # measured on CPUs only
        return rows.topk(k, dim=1).values
    tiled = rows[:, : blocks * _TOP_BLOCK].view(n, blocks, _TOP_BLOCK)
    chosen = tiled.amax(dim=2).topk(k, dim=1).indices
    candidates = tiled.gather(1, chosen.unsqueeze(2).expand(n, k, _TOP_BLOCK)).view(n, k * _TOP_BLOCK)
    candidates = torch.cat([candidates, rows[:, blocks * _TOP_BLOCK :]], dim=1)  # the last, partial block
    return candidates.topk(k, dim=1).values


def _row_statistics(shifted: Tensor, objective: TokenObjective, reference_logits: Tensor | None) -> dict[str, Tensor]:
    """Entropy, the declared statistics and, with reference logits, ``KL(p_ref || p)`` of every row of ``shifted``
    (logits minus their row maximum), a block of rows at a time so that no second chunk-sized buffer is made;
    the reference logits are turned into the reference probabilities in place (the KL gradient needs them)."""
    stats = {"entropy": torch.empty(shifted.shape[0], dtype=shifted.dtype, device=shifted.device)}
    if "sum_sq_probs" in objective.needs:
        stats["sum_sq_probs"] = torch.empty_like(stats["entropy"])
    if reference_logits is not None:
        stats["kl_ref"] = torch.empty_like(stats["entropy"])
    if "topk_entropy" in objective.needs:
        top = _top_values(shifted, objective.top_k).log_softmax(dim=1)
        stats["topk_entropy"] = -_xlogy(top.exp(), top).sum(dim=1)
    block = max(1, _BLOCK_ELEMENTS // max(1, shifted.shape[1]))
    for start in range(0, shifted.shape[0], block):
        rows = slice(start, start + block)
        exp = shifted[rows].exp()
        sums = exp.sum(dim=1)
        log_probs = shifted[rows] - sums.log().unsqueeze(1)
        stats["entropy"][rows] = -_xlogy(exp, log_probs).sum(dim=1) / sums
        if "sum_sq_probs" in stats:
            stats["sum_sq_probs"][rows] = exp.square().sum(dim=1) / sums**2
        if reference_logits is not None:
            reference_log_probs = reference_logits[rows].log_softmax(dim=1)
            reference_probs = reference_log_probs.exp()
            stats["kl_ref"][rows] = _xlogy(reference_probs, reference_log_probs - log_probs).sum(dim=1)
            reference_logits[rows] = reference_probs
    return stats


def _distribution_terms(
    logits: Tensor, targets: Tensor, objective: TokenObjective, reference_logits: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor], Tensor, Tensor]:
    """From logits ``(n, V)`` in float32 or wider, overwritten in place: ``log p_t``, the distribution's
    statistics (the entropy, ``kl_ref`` with reference logits, which become the reference probabilities in
    place, and what the objective needs), and ``exp(logits - max)`` with its row sums, from which the chunked
    gradient is built."""
    target_logits = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
    row_max = logits.amax(dim=1, keepdim=True)
    shifted = logits.sub_(row_max)
    stats = _row_statistics(shifted, objective, reference_logits)
    exp = shifted.exp_()  # in place: the policy's one chunk-sized buffer
    sums = exp.sum(dim=1)
    return target_logits - row_max.squeeze(1) - sums.log(), stats, exp, sums


def _chunked_statistics(logits: Tensor, objective: TokenObjective) -> dict[str, Tensor]:
    """The statistics of full logits ``(N, V)``, from a float32 copy of one chunk of rows at a time."""
    chunk_size = default_chunk_size(logits.shape[1], logits.device.type)
    chunks = []
    for start in range(0, max(1, logits.shape[0]), chunk_size):
        rows = _at_least_float32(logits[start : start + chunk_size]).clone()
        chunks.append(_row_statistics(rows.sub_(rows.amax(dim=1, keepdim=True)), objective, None))
    return {name: torch.cat([chunk[name] for chunk in chunks]) for name in chunks[0]}


def _objective_context(context: TokenContext, stats: dict[str, Tensor]) -> TokenContext:
    return replace(context, **{k: v for k, v in stats.items() if k != "kl_ref"})


def naive_objective_loss(
    logits: Tensor,
    targets: Tensor,
    objective: TokenObjective,
    context: TokenContext | None = None,
    reference_logits: Tensor | None = None,
) -> TokenTerms:
    """The loss terms from logits ``(N, V)`` of the N target tokens (and the reference model's, for an objective
    with a KL term); ``context`` holds the target-side fields (``special``, ``sequence``,
    ``reference_log_probs``) the objective needs."""
    log_probs = target_log_probs_from_logits(logits, targets)
    context = _with_sequence_log_ratio(context or TokenContext(), log_probs.detach(), objective)
    with torch.no_grad(), torch.autocast(logits.device.type, enabled=False):
        stats = _chunked_statistics(logits.detach(), objective)
    loss = objective(log_probs, _objective_context(context, stats)).sum()
    if reference_logits is None:
        return TokenTerms(loss, log_probs.detach(), stats["entropy"])
    reference = _at_least_float32(reference_logits.detach()).log_softmax(dim=-1)
    kl_ref = _xlogy(reference.exp(), reference - _at_least_float32(logits).log_softmax(dim=-1)).sum(dim=-1)
    return TokenTerms(loss + objective.kl_weight * kl_ref.sum(), log_probs.detach(), stats["entropy"], kl_ref.detach())


def _loss_and_log_prob_grad(
    objective: TokenObjective, log_probs: Tensor, context: TokenContext
) -> tuple[Tensor, Tensor]:
    """The summed loss of detached ``log_probs`` and its gradient with respect to each: in closed form where the
    objective gives it, else by one autograd call."""
    grad = objective.known_log_prob_grad(log_probs, context)
    if grad is not None:
        return objective(log_probs, context).sum(), grad
    with torch.enable_grad():
        leaf = log_probs.detach().requires_grad_()
        loss = objective(leaf, context).sum()
        (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad


@functools.cache
def _adds_into_float32(device: str) -> bool:
    """Whether this device's ``addmm`` takes half-precision factors and adds their product into a float32 tensor in
    place (``out_dtype``; CUDA in recent torch): checked once on a 2 x 2 product, not assumed from a version."""
    if not device.startswith("cuda"):
        return False
    total = torch.ones(2, 2, device=device)
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]], device=device, dtype=torch.bfloat16)
    try:
        torch.addmm(total, a, a, out_dtype=torch.float32, out=total)
    except (RuntimeError, TypeError, NotImplementedError):
        return False
    return torch.equal(total.cpu(), torch.tensor([[8.0, 11.0], [16.0, 23.0]]))


def _add_product(total: Tensor, a: Tensor, b: Tensor) -> None:
    """``total += a @ b`` with ``total`` (the head gradient) summed in its own dtype and ``a``, ``b`` multiplied in
    theirs (bf16 tensor cores under bf16-mixed; TF32 for float32 with ``float32_matmul_precision: high``), in place
    where the device can (no temporary the size of ``total`` per chunk), else through one temporary."""
    if a.dtype == total.dtype:
        total.addmm_(a, b)
    elif _adds_into_float32(str(total.device)):
        torch.addmm(total, a, b, out_dtype=total.dtype, out=total)
    else:
        total += a @ b


def _matmul_dtype(hidden: Tensor) -> torch.dtype:
    """Autocast's dtype when autocast is on (bf16 tensor cores under bf16-mixed), else the hidden states' dtype."""
    device = hidden.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype


class _ChunkedObjectiveLoss(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        hidden: Tensor,
        weight: Tensor,
        targets: Tensor,
        objective: TokenObjective,
        chunk_size: int,
        context: TokenContext,
        reference_hidden: Tensor | None,
        reference_weight: Tensor | None,
    ):
        n = hidden.shape[0]
        matmul = _matmul_dtype(hidden)
        w = weight.to(matmul)  # once, not once per chunk as autocast would
        w_ref = reference_weight.to(matmul) if reference_weight is not None else None
        kl_weight = objective.kl_weight if w_ref is not None else 0.0
        accumulate = torch.promote_types(hidden.dtype, torch.float32)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=accumulate, device=weight.device) if ctx.needs_input_grad[1] else None
        )
        loss_sum = torch.zeros((), dtype=accumulate, device=hidden.device)
        log_probs = torch.empty(n, dtype=accumulate, device=hidden.device)
        entropy = torch.empty(n, dtype=accumulate, device=hidden.device)
        kl_ref = torch.empty(n if w_ref is not None else 0, dtype=accumulate, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):  # the dtypes below are chosen explicitly
            for start in range(0, n, chunk_size):
                chunk = slice(start, start + chunk_size)
                h, y = hidden[chunk].to(matmul), targets[chunk]
                reference_probs = (  # logits first, then the reference probabilities, in place
                    None if w_ref is None else _at_least_float32(reference_hidden[chunk].to(matmul) @ w_ref.T)
                )
                chunk_log_probs, stats, exp_logits, sums = _distribution_terms(
                    _at_least_float32(h @ w.T), y, objective, reference_probs
                )
                chunk_loss, d_log_probs = _loss_and_log_prob_grad(
                    objective, chunk_log_probs, _objective_context(context[chunk], stats)
                )
                loss_sum += chunk_loss
                log_probs[chunk] = chunk_log_probs
                entropy[chunk] = stats["entropy"]
                # d loss / d logits = g * (onehot - softmax) [+ kl_weight * (softmax - p_ref)], in the same buffer.
                grad_logits = exp_logits.mul_(((kl_weight - d_log_probs) / sums).unsqueeze(1))
                grad_logits.scatter_add_(1, y.unsqueeze(1), d_log_probs.unsqueeze(1))
                if reference_probs is not None:
                    grad_logits.sub_(reference_probs, alpha=kl_weight)
                    kl_ref[chunk] = stats["kl_ref"]
                    loss_sum += kl_weight * stats["kl_ref"].sum()
                grad_logits = grad_logits.to(matmul)
                if grad_hidden is not None:
                    grad_hidden[chunk] = grad_logits @ w
                if grad_weight is not None:
                    _add_product(grad_weight, grad_logits.T, h)
                del exp_logits, grad_logits, reference_probs  # before the next chunk's logits exist
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(log_probs, entropy, kl_ref)
        return loss_sum, log_probs, entropy, kl_ref

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: Tensor, _grad_log_probs: Tensor, _grad_entropy: Tensor, _grad_kl_ref: Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors  # scaled in place: backward runs once, no copies
        if grad_hidden is not None:
            grad_hidden.mul_(grad_loss.to(grad_hidden.dtype))
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(grad_loss).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None, None, None


def default_chunk_size(vocab_size: int, device_type: str = "cpu") -> int:
    """Tokens per chunk so that one chunk's float32 logits take about 128 MB (512 MB on a GPU, where fewer,
    larger chunks keep the matrix products efficient and the head gradient's float32 sums fewer)."""
    return max(64, (2**27 if device_type == "cuda" else 2**25) // vocab_size)


def _chunked_loss_only(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    objective: TokenObjective,
    chunk_size: int,
    context: TokenContext,
    reference: tuple[Tensor, Tensor] | None,
) -> TokenTerms:
    """The chunked loss when no gradient is wanted (validation, the probe, ``torch.inference_mode``)."""
    compute = torch.promote_types(hidden.dtype, torch.float32)
    loss_sum = torch.zeros((), dtype=compute, device=hidden.device)
    log_probs, entropy = (torch.empty(hidden.shape[0], dtype=compute, device=hidden.device) for _ in range(2))
    kl_ref = torch.empty(hidden.shape[0], dtype=compute, device=hidden.device) if reference else None
    matmul = _matmul_dtype(hidden)  # autocast's dtype under mixed precision, as the model's own head
    w = weight.to(matmul)  # once, not once per chunk as autocast would
    w_ref = reference[1].to(matmul) if reference else None
    for start in range(0, hidden.shape[0], chunk_size):
        chunk = slice(start, start + chunk_size)
        with torch.autocast(hidden.device.type, enabled=False):
            logits = hidden[chunk].to(matmul) @ w.T
            reference_logits = reference[0][chunk].to(matmul) @ w_ref.T if reference else None
            if reference_logits is not None:
                reference_logits = _at_least_float32(reference_logits)
            log_probs[chunk], stats, _, _ = _distribution_terms(
                _at_least_float32(logits), targets[chunk], objective, reference_logits
            )
            del logits, reference_logits
            entropy[chunk] = stats["entropy"]
            loss_sum += objective(log_probs[chunk], _objective_context(context[chunk], stats)).sum()
            if kl_ref is not None:
                kl_ref[chunk] = stats["kl_ref"]
                loss_sum += objective.kl_weight * stats["kl_ref"].sum()
    return TokenTerms(loss_sum, log_probs, entropy, kl_ref)


def chunked_objective_loss(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    objective: TokenObjective,
    chunk_size: int | None = None,
    context: TokenContext | None = None,
    reference: tuple[Tensor, Tensor] | None = None,
) -> TokenTerms:
    """The loss terms from hidden states ``(N, H)`` and the output projection ``(V, H)``.

    Requires an elementwise objective (every :class:`TokenObjective` is, given its detached context) and a
    head without bias, scaling or soft-capping. ``context`` holds the target-side fields (``special``,
    ``sequence``, ``reference_log_probs``) the objective needs; the distribution's statistics are computed
    here, chunk by chunk (``sequence_log_ratio`` in a no-grad pass over all tokens first), and
    so is the KL term from the reference model's hidden states and head (``reference``) for an objective with
    a ``kl_weight``. ``chunk_size`` defaults to :func:`default_chunk_size`. Without grad mode, or when neither
    input requires a gradient, no gradient is computed.
    """
    chunk_size = chunk_size or default_chunk_size(weight.shape[0], hidden.device.type)
    if chunk_size < 1:
        raise LitDFTError(f"loss_chunk_size must be >= 1 (or 0 for full logits), got {chunk_size}")
    context = context or TokenContext()
    if "sequence_log_ratio" in objective.needs:
        log_probs = target_log_probs_chunked(hidden.detach(), weight.detach(), targets, chunk_size)
        context = _with_sequence_log_ratio(context, log_probs, objective)
    if not (torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)):
        return _chunked_loss_only(hidden, weight, targets, objective, chunk_size, context, reference)
    reference_hidden, reference_weight = reference if reference is not None else (None, None)
    loss, log_probs, entropy, kl_ref = _ChunkedObjectiveLoss.apply(
        hidden, weight, targets, objective, chunk_size, context, reference_hidden, reference_weight
    )
    return TokenTerms(loss, log_probs, entropy, kl_ref if reference is not None else None)


class _Targets(NamedTuple):
    """Where a batch's N target tokens are, as indices whose number the host knows: selecting with them needs no
    wait for the device, as a boolean mask would."""

    ids: Tensor
    """``(N,)`` the target tokens."""
    grid: Tensor
    """``(N,)`` their flat indices in the ``(B, T-1)`` grid of targets."""
    inputs: Tensor
    """``(N,)`` the flat indices in the ``(B, T)`` inputs of the positions that predict them."""
    examples: Tensor
    """``(N,)`` the example each belongs to, numbered 0, 1, ... over the examples that have targets."""
    shape: torch.Size
    """``(B, T-1)``: the grid's."""

    @staticmethod
    def of(batch: TrainingBatch) -> _Targets:
        grid = batch.positions()
        rows = grid // batch.targets.shape[1]
        starts = torch.zeros_like(rows)
        starts[1:] = rows[1:] != rows[:-1]  # the positions are in batch order
        targets = batch.targets
        return _Targets(targets.flatten().index_select(0, grid), grid, grid + rows, starts.cumsum(0), targets.shape)

    def at(self, per_input: Tensor) -> Tensor:
        """``(N, ...)``: the values of a ``(B, T, ...)`` tensor at the positions that predict the targets."""
        return per_input.flatten(0, 1).index_select(0, self.inputs)

    def on_grid(self, values: Tensor) -> Tensor:
        """The ``(N,)`` values back at their places in the ``(B, T-1)`` grid, 0 elsewhere."""
        zeros = torch.zeros(self.shape.numel(), dtype=values.dtype, device=values.device)
        return zeros.index_copy_(0, self.grid, values).view(self.shape)


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Evaluation mode (no dropout) for one forward of a frozen model; the mode Lightning sees is unchanged."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _forward_with_hook(model: torch.nn.Module, inputs: dict, hook_fn: Any) -> None:
    """``model``'s forward with ``hook_fn`` on its decoder's output, projecting no position to the vocabulary."""
    hook = decoder(model).register_forward_hook(hook_fn)
    try:
        model(**inputs, logits_to_keep=torch.empty(0, dtype=torch.long, device=inputs["input_ids"].device))
    finally:
        hook.remove()


_SCALED_HEAD_KEYS = (
    "final_logit_softcapping",
    "logit_scale",
    "logits_scaling",
    "lm_head_multiplier",
    "logits_soft_cap",
)
_HEAD_CHECK_TOLERANCE = 1e-2  # relative to the largest logit (bf16 rounding is 4e-3); scaled heads differ by more


class TokenLoss:
    """The objective over a causal LM's target tokens, from full logits or chunked from the final hidden states.

    Built once per model (the module's ``configure_model``). Whether to chunk is decided once, on the first
    call (the first batch, when the model is on its device and sharded): the chunked path needs a
    plain linear head (no bias) whose projection of the final hidden states *is* the model's logits. That
    is checked by computing both on a fixed 16-token input rather than by a list of config keys, so an
    architecture that scales or caps its logits under a new name falls back to full logits with a warning.
    Every rank runs the same check, so sharded models (FSDP2) stay in step.

    Args:
        model: a Hugging Face causal LM.
        objective: the token objective.
        chunk_size: target tokens per chunk; ``None`` chunks when the vocabulary has >= 32,768 entries
            (chunks of :func:`default_chunk_size`); ``0`` always uses full logits.
        special_ids: the special and template token ids (for objectives that need ``special``).
        reference: the frozen reference model of an objective that needs one (``needs_reference``), or ``model``
            itself when it is a LoRA model: the reference is then its base, with the adapters off. ``None`` for
            an objective that needs only the reference's log-probabilities: the batches then carry them
            (``TrainingBatch.reference_log_probs``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        objective: TokenObjective,
        chunk_size: int | None = None,
        special_ids: Sequence[int] = (),
        reference: torch.nn.Module | None = None,
    ) -> None:
        if objective.kl_weight > 0 and reference is None:  # a KL term needs the reference's whole distribution
            raise LitDFTError(f"{objective!r} has a KL term and so needs a reference model")
        self.model = model
        self.objective = objective
        self.chunk_size = chunk_size
        self.special_ids = torch.tensor(sorted(special_ids), dtype=torch.long)
        self.reference = reference if objective.needs_reference else None
        self.shared_reference = self.reference is model
        self.chunked: bool | None = None  # decided on the first call
        self._special_table: Tensor | None = None
        self._warned_unused_reference = False

    def __call__(self, batch: TrainingBatch) -> TokenOutputs:
        """The loss sum, every target token's log-probability and next-token entropy (detached, >= float32)."""
        if self.chunked is None:
            self.chunked = self._can_chunk(batch.input_ids.device)
        targets = _Targets.of(batch)
        context = self._target_context(batch, targets)
        # The collator's batches need no attention mask: padded on the right, causal attention alone keeps every
        # target's position from seeing padding, so no mask is built and fused causal attention kernels apply. A
        # batch built by hand (no target positions) keeps its mask: it may be padded otherwise.
        mask = None if batch.target_positions is not None else batch.attention_mask
        inputs = {"input_ids": batch.input_ids, "attention_mask": mask, "use_cache": False}
        if self.chunked:
            terms = self._chunked(inputs, targets, context)
        else:
            logits = targets.at(self.model(**inputs).logits)
            reference_logits = None
            if self.reference is not None:
                with torch.no_grad(), self._reference_mode():
                    reference_logits = targets.at(self.reference(**inputs).logits)
                if self.objective.needs & REFERENCE_FIELDS:
                    reference_log_probs = target_log_probs_from_logits(reference_logits, targets.ids)
                    context = replace(context, reference_log_probs=reference_log_probs)
                if self.objective.kl_weight == 0:
                    reference_logits = None
            terms = naive_objective_loss(logits, targets.ids, self.objective, context, reference_logits)
        return TokenOutputs(
            terms.loss,
            targets.on_grid(terms.log_probs),
            batch.targets != IGNORE_INDEX,
            batch.targets,
            targets.on_grid(terms.entropy),
            None if terms.kl_ref is None else targets.on_grid(terms.kl_ref),
            targets.grid,
        )

    def _is_special(self, device: torch.device) -> Tensor:
        """Whether each vocabulary entry is special, on ``device``: made once (a copy from the host waits for the
        device), and a lookup, where ``isin`` may sort on the device."""
        if self._special_table is None or self._special_table.device != device:
            rows = base_model(self.model).get_input_embeddings().weight.shape[0]  # every target id is below it
            table = torch.zeros(max([rows, *(self.special_ids + 1).tolist()]), dtype=torch.bool)
            self._special_table = table.index_fill_(0, self.special_ids, True).to(device)
        return self._special_table

    @contextmanager
    def _reference_mode(self) -> Iterator[None]:
        """Evaluation mode for the reference's forward, with the adapters off when it is the LoRA model itself."""
        with _eval_mode(self.reference):
            if self.shared_reference:
                with adapters_disabled(self.model):
                    yield
            else:
                yield

    def _target_context(self, batch: TrainingBatch, targets: _Targets) -> TokenContext:
        """The context fields that come from the batch alone, if the objective needs them: whether each target is
        special, its example, and the data's reference log-probabilities (without a reference model)."""
        needs, ids = self.objective.needs, targets.ids
        special = self._is_special(ids.device)[ids] if "special" in needs else None
        sequence = targets.examples if needs & {"sequence", "sequence_log_ratio"} else None
        reference_log_probs = None
        if batch.reference_log_probs is not None and self.reference is not None:
            remedy = (
                "unset data.reference_log_probs_column: its KL term needs a reference model"
                if self.objective.kl_weight > 0
                else "set model.reference: data to train against the data's, or unset the column"
            )
            raise LitDFTError(
                "The batches carry reference log-probabilities (data.reference_log_probs_column) and "
                f"{self.objective!r} runs a reference model: {remedy}"
            )
        if needs & REFERENCE_FIELDS and self.reference is None:
            if batch.reference_log_probs is None:
                raise LitDFTError(
                    f"{self.objective!r} needs the reference's log-probabilities and model.reference is 'data', "
                    "but the batches carry none: set data.reference_log_probs_column"
                )
            # the data gives each label's value at the label's position, one after the position that predicts it
            reference_log_probs = batch.reference_log_probs.flatten().index_select(0, targets.inputs + 1)
        elif batch.reference_log_probs is not None and not self._warned_unused_reference:
            self._warned_unused_reference = True
            rank_zero_warn(
                f"{self.objective!r} uses no reference log-probabilities, yet data.reference_log_probs_column is set "
                "(rows without a usable list were still dropped): unset it for this objective."
            )
        return TokenContext(special=special, sequence=sequence, reference_log_probs=reference_log_probs)

    def _chunked(self, inputs: dict, targets: _Targets, context: TokenContext) -> TokenTerms:
        """Computed inside the model's own forward with no position projected by the model: a hook on
        ``base_model`` takes the final hidden states while the top-level forward runs, so under FSDP the root
        unit (output head included) is gathered then and its gradient is reduced by FSDP's own hooks. With a
        reference model, its forward runs inside that hook and the loss inside its own, where both heads are
        gathered. A LoRA model's own base is the reference: its forward (adapters off) runs first, and the loss
        uses its hidden states with the head, which LoRA leaves untouched on this path."""
        results: list[TokenTerms] = []
        reference_hidden: list[Tensor] = []
        if self.shared_reference:
            with torch.no_grad(), self._reference_mode():
                _forward_with_hook(self.model, inputs, lambda m, a, output: reference_hidden.append(output[0]))
        ids = targets.ids

        def loss(hidden: Tensor, weight: Tensor, reference: tuple[Tensor, Tensor] | None) -> TokenTerms:
            """The loss from the policy's and the reference's final hidden states and heads."""
            context_here = context
            if reference is not None and self.objective.needs & REFERENCE_FIELDS:
                reference_log_probs = target_log_probs_chunked(*reference, ids, self.chunk_size)
                context_here = replace(context, reference_log_probs=reference_log_probs)
            kl_reference = reference if self.objective.kl_weight > 0 else None
            return chunked_objective_loss(
                hidden, weight, ids, self.objective, self.chunk_size, context_here, kl_reference
            )

        def loss_from_hidden(module: torch.nn.Module, args: Any, output: Any) -> None:
            hidden = targets.at(output[0])
            weight = self.model.get_output_embeddings().weight
            if self.reference is None:
                results.append(loss(hidden, weight, None))
                return
            if self.shared_reference:
                results.append(loss(hidden, weight, (targets.at(reference_hidden[0]), weight.detach())))
                return

            def with_reference(module: torch.nn.Module, args: Any, output: Any) -> None:
                reference_head = self.reference.get_output_embeddings().weight.detach()
                results.append(loss(hidden, weight, (targets.at(output[0]).detach(), reference_head)))

            with _eval_mode(self.reference):
                _forward_with_hook(self.reference, inputs, with_reference)
            if isinstance(self.reference, FSDPModule):  # no backward will clear its forward-order bookkeeping
                self.reference.reset_iter_state()

        _forward_with_hook(self.model, inputs, loss_from_hidden)
        return results[-1]

    def _can_chunk(self, device: torch.device) -> bool:
        if self.chunk_size == 0:
            return False
        vocab = getattr(base_model(self.model).config.get_text_config(), "vocab_size", 0)
        if self.chunk_size is None and vocab < 32_768:
            return False
        models = [self.model] + ([self.reference] if self.reference is not None and not self.shared_reference else [])
        reason = next((r for m in models if (r := _not_a_plain_head(m) or _head_mismatch(m, device))), None)
        if reason:
            rank_zero_warn(f"The chunked loss is off for this model ({reason}); computing full logits instead.")
        return reason is None


def _not_a_plain_head(model: torch.nn.Module) -> str | None:
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        return "its output head is not a linear layer without bias"
    if "logits_to_keep" not in inspect.signature(base_model(model).forward).parameters:
        return "its forward takes no logits_to_keep"
    scaled = [key for key in _SCALED_HEAD_KEYS if getattr(model.config, key, None)]
    return f"its config scales or caps the logits: {', '.join(scaled)}" if scaled else None


@torch.no_grad()
def _head_mismatch(model: torch.nn.Module, device: torch.device) -> str | None:
    """Compare the head's projection of the final hidden states with the model's own logits on 16 tokens."""
    vocab = model.get_output_embeddings().out_features
    input_ids = (torch.arange(16, device=device) * 7919 % vocab).unsqueeze(0)  # spread over the vocabulary
    projected: list[Tensor] = []

    def project(module: torch.nn.Module, args: Any, output: Any) -> None:
        weight = model.get_output_embeddings().weight  # gathered here under FSDP
        projected.append((output[0][0].to(weight.dtype) @ weight.T).double())

    if decoder(model) is base_model(model):
        return "it has no base model whose output the head projects"
    hook = decoder(model).register_forward_hook(project)
    try:
        with _eval_mode(model):  # no dropout, so no random numbers drawn: a resumed run draws the same masks
            logits = model(input_ids=input_ids).logits[0].double()
    finally:
        hook.remove()
    if not projected or projected[0].shape != logits.shape:
        return "its base model's output is not the hidden states its head projects"
    error = float((projected[0] - logits).abs().max())
    if error > _HEAD_CHECK_TOLERANCE * float(logits.abs().max()) + 1e-4:
        return f"its logits differ from the projection of its final hidden states by up to {error:.3g}"
    return None
