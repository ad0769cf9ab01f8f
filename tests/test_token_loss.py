import pytest
import torch

from lit_dft.objectives import DFT, OBJECTIVES, build_objective
from lit_dft.token_loss import chunked_objective_loss, naive_objective_loss

OBJECTIVE_CASES = [build_objective(name) for name in sorted(OBJECTIVES)] + [DFT(alpha=0.5, min_weight=0.1)]


def _problem(n=37, h=24, v=101, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=dtype)
    weight = torch.randn(v, h, generator=g, dtype=dtype) * 0.5
    targets = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, targets


def _naive(hidden, weight, targets, objective):
    hidden, weight = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, log_probs = naive_objective_loss(hidden @ weight.T, targets, objective)
    loss.backward()
    return loss.detach(), log_probs, hidden.grad, weight.grad


def _chunked(hidden, weight, targets, objective, chunk_size):
    hidden, weight = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, log_probs = chunked_objective_loss(hidden, weight, targets, objective, chunk_size)
    (loss * 1.7).backward()  # a non-unit upstream gradient must scale both gradients
    return loss.detach(), log_probs, hidden.grad / 1.7, weight.grad / 1.7


@pytest.mark.parametrize("objective", OBJECTIVE_CASES, ids=repr)
@pytest.mark.parametrize("chunk_size", [1, 8, 10, 37, 1000])  # 10 does not divide 37
def test_chunked_matches_naive_values_and_gradients(objective, chunk_size):
    hidden, weight, targets = _problem()
    expected = _naive(hidden, weight, targets, objective)
    actual = _chunked(hidden, weight, targets, objective, chunk_size)
    for name, a, e in zip(("loss", "log_probs", "grad_hidden", "grad_weight"), actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("objective", OBJECTIVE_CASES, ids=repr)
def test_chunked_bf16_is_close_to_float32_reference(objective):
    hidden, weight, targets = _problem()
    ref_loss, ref_lp, ref_gh, ref_gw = _naive(hidden, weight, targets, objective)
    loss, log_probs, grad_h, grad_w = _chunked(hidden.bfloat16(), weight.bfloat16(), targets, objective, 16)
    assert log_probs.dtype == torch.float32 and grad_h.dtype == torch.bfloat16 and grad_w.dtype == torch.bfloat16
    torch.testing.assert_close(loss, ref_loss, rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(log_probs, ref_lp, rtol=5e-2, atol=5e-2)
    torch.testing.assert_close(grad_h.float(), ref_gh, rtol=5e-2, atol=2e-2)
    torch.testing.assert_close(grad_w.float(), ref_gw, rtol=5e-2, atol=2e-2)


def test_chunked_handles_no_target_tokens():
    hidden, weight, _ = _problem(n=0)
    loss, log_probs, grad_h, grad_w = _chunked(hidden, weight, torch.zeros(0, dtype=torch.long), DFT(), 8)
    assert loss.item() == 0.0 and log_probs.numel() == 0
    assert torch.all(grad_w == 0) and grad_h.shape == (0, 24)
