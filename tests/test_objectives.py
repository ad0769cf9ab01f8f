import pytest
import torch
import torch.nn.functional as F

from lit_dft.errors import LitDFTError
from lit_dft.objectives import DFT, OBJECTIVES, SFT, TokenObjective, build_objective, register_objective
from lit_dft.token_loss import target_log_probs_from_logits


def _logits_and_targets(n: int = 6, v: int = 11, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g, dtype=torch.float64) * 3, torch.randint(0, v, (n,), generator=g)


def test_dft_gradient_matches_analytic_value():
    logits, targets = _logits_and_targets()
    logits.requires_grad_()
    DFT()(target_log_probs_from_logits(logits, targets)).sum().backward()
    probs = torch.softmax(logits.detach(), -1)
    onehot = F.one_hot(targets, logits.shape[-1]).double()
    p_t = probs.gather(1, targets[:, None])
    torch.testing.assert_close(logits.grad, p_t * (probs - onehot), rtol=1e-10, atol=1e-12)


def test_sft_and_dft_values_match_independent_computation():
    logits, targets = _logits_and_targets()
    ce = F.cross_entropy(logits, targets, reduction="none")
    log_probs = target_log_probs_from_logits(logits, targets)
    torch.testing.assert_close(SFT()(log_probs), ce)
    # the paper's code: probs.detach() * cross_entropy
    torch.testing.assert_close(DFT()(log_probs), torch.softmax(logits, -1).gather(1, targets[:, None]).squeeze(1) * ce)


def test_alpha_interpolates_between_sft_and_dft():
    logits, targets = _logits_and_targets()
    log_probs = target_log_probs_from_logits(logits, targets)
    torch.testing.assert_close(DFT(alpha=0.0)(log_probs), SFT()(log_probs))
    torch.testing.assert_close(DFT(alpha=1.0)(log_probs), DFT()(log_probs))
    half = DFT(alpha=0.5)(log_probs)
    assert torch.all(half <= SFT()(log_probs)) and torch.all(half >= DFT()(log_probs))


def test_min_weight_clamps_the_weight_from_below():
    log_probs = torch.log(torch.tensor([1e-6, 0.05, 0.5, 0.99], dtype=torch.float64)).requires_grad_()
    loss = DFT(min_weight=0.1)(log_probs)
    torch.testing.assert_close(loss / -log_probs.detach(), torch.tensor([0.1, 0.1, 0.5, 0.99], dtype=torch.float64))
    loss.sum().backward()  # the clamp is on the stop-gradient weight: d loss / d log p = -weight
    torch.testing.assert_close(log_probs.grad, -torch.tensor([0.1, 0.1, 0.5, 0.99], dtype=torch.float64))


def test_unknown_objective_lists_registered_names():
    with pytest.raises(LitDFTError, match="Registered objectives: dft, sft"):
        build_objective("dtf")


def test_registry_accepts_new_objectives():
    class Focal(TokenObjective):
        def token_loss(self, target_log_probs):
            return -((1 - target_log_probs.exp()) ** 2) * target_log_probs

    register_objective("focal", Focal)
    try:
        assert isinstance(build_objective("focal"), Focal)
    finally:
        del OBJECTIVES["focal"]


@pytest.mark.parametrize("kwargs", [{"alpha": -1.0}, {"min_weight": 1.5}])
def test_dft_rejects_bad_options(kwargs):
    with pytest.raises(ValueError):
        DFT(**kwargs)
