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

import inspect
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lit_dft.batch import IGNORE_INDEX, TokenOutputs, TrainingBatch
from lit_dft.errors import LitDFTError
from lit_dft.objectives import TokenContext, TokenObjective


def _at_least_float32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def target_log_probs_from_logits(logits: Tensor, targets: Tensor) -> Tensor:
    """``log p_t`` in (at least) float32 via logsumexp: no full softmax or log-softmax copy is kept."""
    target_logits = _at_least_float32(logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1))
    return target_logits - torch.logsumexp(_at_least_float32(logits), dim=-1)


def _row_dot(a: Tensor, b: Tensor) -> Tensor:
    """``(a * b).sum(1)`` as a batched matrix product: no ``(n, V)`` temporary."""
    return (a.unsqueeze(1) @ b.unsqueeze(2)).reshape(-1)


def _distribution_terms(
    logits: Tensor, targets: Tensor, objective: TokenObjective
) -> tuple[Tensor, dict[str, Tensor], Tensor, Tensor]:
    """From logits ``(n, V)`` in float32 or wider, overwritten in place: ``log p_t``, the distribution's
    statistics (the entropy, and what the objective needs), and ``exp(logits - max)`` with its row sums, from
    which the chunked gradient is built."""
    target_logits = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
    row_max = logits.amax(dim=1, keepdim=True)
    shifted = logits.sub_(row_max)
    stats = {}
    if "topk_entropy" in objective.needs:
        top = shifted.topk(objective.top_k, dim=1).values.log_softmax(dim=1)
        stats["topk_entropy"] = -(top.exp() * top).sum(dim=1)
    exp = shifted.exp()
    sums = exp.sum(dim=1)
    stats["entropy"] = sums.log() - _row_dot(exp, shifted) / sums
    if "sum_sq_probs" in objective.needs:
        stats["sum_sq_probs"] = _row_dot(exp, exp) / sums**2
    return target_logits - row_max.squeeze(1) - sums.log(), stats, exp, sums


def naive_objective_loss(
    logits: Tensor, targets: Tensor, objective: TokenObjective, context: TokenContext | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Loss sum, target log-probs and entropies from logits ``(N, V)`` of the N target tokens; ``context`` holds
    the target-side fields (``special``, ``sequence``) the objective needs."""
    log_probs = target_log_probs_from_logits(logits, targets)
    with torch.no_grad(), torch.autocast(logits.device.type, enabled=False):
        _, stats, _, _ = _distribution_terms(_at_least_float32(logits.detach()).clone(), targets, objective)
    context = replace(context or TokenContext(), **stats)
    return objective(log_probs, context).sum(), log_probs.detach(), stats["entropy"]


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
    ):
        n = hidden.shape[0]
        matmul = _matmul_dtype(hidden)
        w = weight.to(matmul)  # once, not once per chunk as autocast would
        accumulate = torch.promote_types(hidden.dtype, torch.float32)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=accumulate, device=weight.device) if ctx.needs_input_grad[1] else None
        )
        loss_sum = torch.zeros((), dtype=accumulate, device=hidden.device)
        log_probs = torch.empty(n, dtype=accumulate, device=hidden.device)
        entropy = torch.empty(n, dtype=accumulate, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):  # the dtypes below are chosen explicitly
            for start in range(0, n, chunk_size):
                chunk = slice(start, start + chunk_size)
                h, y = hidden[chunk].to(matmul), targets[chunk]
                logits = _at_least_float32(h @ w.T)
                chunk_log_probs, stats, exp_logits, sums = _distribution_terms(logits, y, objective)
                del logits  # the shifted logits: freed here, exp_logits is the one chunk-sized buffer kept
                with torch.enable_grad():
                    leaf = chunk_log_probs.detach().requires_grad_()
                    chunk_loss = objective(leaf, replace(context[chunk], **stats)).sum()
                    (d_log_probs,) = torch.autograd.grad(chunk_loss, leaf)
                loss_sum += chunk_loss.detach()
                log_probs[chunk] = chunk_log_probs
                entropy[chunk] = stats["entropy"]
                # d loss / d logits = g * (onehot - softmax), built in place in the same buffer.
                grad_logits = exp_logits.mul_((-d_log_probs / sums).unsqueeze(1))
                grad_logits.scatter_add_(1, y.unsqueeze(1), d_log_probs.unsqueeze(1))
                grad_logits = grad_logits.to(matmul)
                if grad_hidden is not None:
                    grad_hidden[chunk] = grad_logits @ w
                if grad_weight is not None and matmul == grad_weight.dtype:
                    grad_weight.addmm_(grad_logits.T, h)  # in place: no weight-sized temporary
                elif grad_weight is not None:
                    grad_weight += grad_logits.T @ h  # a tensor-core product, summed in float32
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(log_probs, entropy)
        return loss_sum, log_probs, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: Tensor, _grad_log_probs: Tensor, _grad_entropy: Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors  # scaled in place: backward runs once, no copies
        if grad_hidden is not None:
            grad_hidden.mul_(grad_loss.to(grad_hidden.dtype))
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(grad_loss).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None


def default_chunk_size(vocab_size: int, device_type: str = "cpu") -> int:
    """Tokens per chunk so that one chunk's float32 logits take about 128 MB (512 MB on a GPU, where fewer,
    larger chunks keep the matrix products efficient and the head gradient's float32 sums fewer)."""
    return max(64, (2**27 if device_type == "cuda" else 2**25) // vocab_size)


def _chunked_loss_only(
    hidden: Tensor, weight: Tensor, targets: Tensor, objective: TokenObjective, chunk_size: int, context: TokenContext
) -> tuple[Tensor, Tensor, Tensor]:
    """The chunked loss when no gradient is wanted (validation, the probe, ``torch.inference_mode``)."""
    compute = torch.promote_types(hidden.dtype, torch.float32)
    loss_sum = torch.zeros((), dtype=compute, device=hidden.device)
    log_probs = torch.empty(hidden.shape[0], dtype=compute, device=hidden.device)
    entropy = torch.empty(hidden.shape[0], dtype=compute, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk_size):
        chunk = slice(start, start + chunk_size)
        logits = hidden[chunk] @ weight.T  # in autocast's dtype under mixed precision, as the model's own head
        with torch.autocast(hidden.device.type, enabled=False):
            log_probs[chunk], stats, _, _ = _distribution_terms(_at_least_float32(logits), targets[chunk], objective)
            entropy[chunk] = stats["entropy"]
            loss_sum += objective(log_probs[chunk], replace(context[chunk], **stats)).sum()
    return loss_sum, log_probs, entropy


def chunked_objective_loss(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    objective: TokenObjective,
    chunk_size: int | None = None,
    context: TokenContext | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Loss sum, target log-probs and entropies from hidden states ``(N, H)`` and the output projection ``(V, H)``.

    Requires an elementwise objective (every :class:`TokenObjective` is, given its detached context) and a
    head without bias, scaling or soft-capping. ``context`` holds the target-side fields (``special``,
    ``sequence``) the objective needs; the distribution's statistics are computed here, chunk by chunk.
    ``chunk_size`` defaults to :func:`default_chunk_size`. Without grad mode, or when neither input requires
    a gradient, no gradient is computed.
    """
    chunk_size = chunk_size or default_chunk_size(weight.shape[0], hidden.device.type)
    if chunk_size < 1:
        raise LitDFTError(f"loss_chunk_size must be >= 1 (or 0 for full logits), got {chunk_size}")
    context = context or TokenContext()
    if not (torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)):
        return _chunked_loss_only(hidden, weight, targets, objective, chunk_size, context)
    return _ChunkedObjectiveLoss.apply(hidden, weight, targets, objective, chunk_size, context)


_SCALED_HEAD_KEYS = (
    "final_logit_softcapping",
    "logit_scale",
    "logits_scaling",
    "lm_head_multiplier",
    "logits_soft_cap",
)
_HEAD_CHECK_TOLERANCE = 1e-2  # relative to the largest logit (bf16 rounding is 4e-3); scaled heads differ by more
_NO_POSITIONS = torch.empty(0, dtype=torch.long)  # logits_to_keep: project no position to the vocabulary


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
    """

    def __init__(
        self,
        model: torch.nn.Module,
        objective: TokenObjective,
        chunk_size: int | None = None,
        special_ids: Sequence[int] = (),
    ) -> None:
        self.model = model
        self.objective = objective
        self.chunk_size = chunk_size
        self.special_ids = torch.tensor(sorted(special_ids), dtype=torch.long)
        self.chunked: bool | None = None  # decided on the first call

    def __call__(self, batch: TrainingBatch) -> TokenOutputs:
        """The loss sum, every target token's log-probability and next-token entropy (detached, >= float32)."""
        if self.chunked is None:
            self.chunked = self._can_chunk(batch.input_ids.device)
        targets = batch.targets
        mask = targets != IGNORE_INDEX
        context = self._target_context(mask, targets[mask])
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if self.chunked:
            loss, log_probs, entropy = self._chunked(inputs, mask, targets[mask], context)
        else:
            logits = self.model(**inputs).logits[:, :-1][mask]
            loss, log_probs, entropy = naive_objective_loss(logits, targets[mask], self.objective, context)
        per_token = torch.zeros((2, *targets.shape), dtype=log_probs.dtype, device=targets.device)
        per_token[0][mask], per_token[1][mask] = log_probs, entropy
        return TokenOutputs(loss, per_token[0], mask, targets, per_token[1])

    def _target_context(self, mask: Tensor, targets: Tensor) -> TokenContext:
        """The context fields that come from the targets alone, if the objective needs them."""
        needs = self.objective.needs
        special = torch.isin(targets, self.special_ids.to(targets.device)) if "special" in needs else None
        sequence = mask.nonzero()[:, 0] if "sequence" in needs else None
        return TokenContext(special=special, sequence=sequence)

    def _chunked(
        self, inputs: dict, mask: Tensor, targets: Tensor, context: TokenContext
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Computed inside the model's own forward with no position projected by the model: a hook on
        ``base_model`` takes the final hidden states while the top-level forward runs, so under FSDP the root
        unit (output head included) is gathered then and its gradient is reduced by FSDP's own hooks."""
        model, results = self.model, []

        def loss_from_hidden(module: torch.nn.Module, args: Any, output: Any) -> None:
            hidden = output[0][:, :-1][mask]
            weight = model.get_output_embeddings().weight
            results.append(chunked_objective_loss(hidden, weight, targets, self.objective, self.chunk_size, context))

        hook = model.base_model.register_forward_hook(loss_from_hidden)
        try:
            model(**inputs, logits_to_keep=_NO_POSITIONS.to(mask.device))
        finally:
            hook.remove()
        return results[-1]

    def _can_chunk(self, device: torch.device) -> bool:
        if self.chunk_size == 0:
            return False
        model = self.model
        head = model.get_output_embeddings()
        if self.chunk_size is None and not (isinstance(head, torch.nn.Linear) and head.out_features >= 32_768):
            return False
        reason = _not_a_plain_head(model) or _head_mismatch(model, device)
        if reason:
            rank_zero_warn(f"The chunked loss is off for this model ({reason}); computing full logits instead.")
        return reason is None


def _not_a_plain_head(model: torch.nn.Module) -> str | None:
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        return "its output head is not a linear layer without bias"
    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
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

    if model.base_model is model:
        return "it has no base model whose output the head projects"
    hook = model.base_model.register_forward_hook(project)
    try:
        logits = model(input_ids=input_ids).logits[0].double()
    finally:
        hook.remove()
    if not projected or projected[0].shape != logits.shape:
        return "its base model's output is not the hidden states its head projects"
    error = float((projected[0] - logits).abs().max())
    if error > _HEAD_CHECK_TOLERANCE * float(logits.abs().max()) + 1e-4:
        return f"its logits differ from the projection of its final hidden states by up to {error:.3g}"
    return None
