"""Objective losses over target tokens, from logits (naive) or from hidden states (chunked).

Both paths return the *sum* of per-token losses (normalisation over the global batch is the
module's job) and the detached float32 log-probabilities of the target tokens, which the module
hands to callbacks. The chunked path never materialises full-vocabulary logits for the batch: it
projects ``chunk_size`` target tokens at a time, and computes each chunk's gradient during the
forward (as fused linear cross-entropy kernels do), so backward costs no second projection.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_dft.objectives import TokenObjective

IGNORE_INDEX = -100


def _at_least_float32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def target_log_probs_from_logits(logits: Tensor, targets: Tensor) -> Tensor:
    """``log p_t`` in (at least) float32 via logsumexp: no full softmax or log-softmax copy is kept."""
    target_logits = _at_least_float32(logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1))
    return target_logits - torch.logsumexp(_at_least_float32(logits), dim=-1)


def naive_objective_loss(logits: Tensor, targets: Tensor, objective: TokenObjective) -> tuple[Tensor, Tensor]:
    """Loss sum and target log-probs from logits ``(N, V)`` of the N target tokens."""
    log_probs = target_log_probs_from_logits(logits, targets)
    return objective(log_probs).sum(), log_probs.detach()


class _ChunkedObjectiveLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, objective: TokenObjective, chunk_size: int):
        n = hidden.shape[0]
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        compute = torch.promote_types(hidden.dtype, torch.float32)
        grad_weight = (
            torch.zeros(weight.shape, dtype=compute, device=weight.device) if ctx.needs_input_grad[1] else None
        )
        loss_sum = torch.zeros((), dtype=compute, device=hidden.device)
        log_probs = torch.empty(n, dtype=compute, device=hidden.device)
        for start in range(0, n, chunk_size):
            h, y = hidden[start : start + chunk_size], targets[start : start + chunk_size]
            logits = _at_least_float32(h @ weight.T)
            target_logits = logits.gather(1, y.unsqueeze(1)).squeeze(1)
            row_max = logits.amax(dim=1, keepdim=True)
            exp_logits = logits.sub_(row_max).exp_()  # in place: one chunk-sized buffer, no logsumexp temporary
            sums = exp_logits.sum(dim=1)
            chunk_log_probs = target_logits - row_max.squeeze(1) - sums.log()
            with torch.enable_grad():
                leaf = chunk_log_probs.detach().requires_grad_()
                chunk_loss = objective(leaf).sum()
                (d_log_probs,) = torch.autograd.grad(chunk_loss, leaf)
            loss_sum += chunk_loss.detach()
            log_probs[start : start + chunk_size] = chunk_log_probs
            if grad_hidden is None and grad_weight is None:
                continue
            # d loss / d logits = g * (onehot - softmax), built in place in the same buffer.
            grad_logits = exp_logits.mul_((-d_log_probs / sums).unsqueeze(1))
            grad_logits.scatter_add_(1, y.unsqueeze(1), d_log_probs.unsqueeze(1))
            grad_logits = grad_logits.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[start : start + chunk_size] = grad_logits @ weight
            if grad_weight is not None and grad_logits.dtype == grad_weight.dtype:
                grad_weight.addmm_(grad_logits.T, h)  # in place: no weight-sized temporary
            elif grad_weight is not None:
                grad_weight += grad_logits.T @ h
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(log_probs)
        return loss_sum, log_probs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: Tensor, _grad_log_probs: Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors  # scaled in place: backward runs once, no copies
        if grad_hidden is not None:
            grad_hidden.mul_(grad_loss.to(grad_hidden.dtype))
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(grad_loss).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None


def default_chunk_size(vocab_size: int) -> int:
    """Tokens per chunk so that one chunk's float32 logits take about 128 MB."""
    return max(64, 2**25 // vocab_size)


def chunked_objective_loss(
    hidden: Tensor, weight: Tensor, targets: Tensor, objective: TokenObjective, chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """Loss sum and target log-probs from hidden states ``(N, H)`` and the output projection ``(V, H)``.

    Requires an elementwise objective (every :class:`TokenObjective` is) and a head without bias,
    scaling or soft-capping. ``chunk_size`` defaults to :func:`default_chunk_size`.
    """
    chunk_size = chunk_size or default_chunk_size(weight.shape[0])
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return _ChunkedObjectiveLoss.apply(hidden, weight, targets, objective, chunk_size)
