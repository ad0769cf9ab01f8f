import math

import pytest
import torch
import torch.nn.functional as F

from lit_dft.errors import LitDFTError
from lit_dft.objectives import (
    DFT,
    OBJECTIVES,
    SFT,
    Focal,
    ProbThreshold,
    ProtectSpecialTokens,
    TokenContext,
    TokenObjective,
    build_objective,
    register_objective,
)
from lit_dft.token_loss import naive_objective_loss, target_log_probs_from_logits


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
    with pytest.raises(
        LitDFTError, match="Registered objectives: asft, deft, dft, eaft, focal, iw_sft, prob, prob_power"
    ):
        build_objective("dtf")


def test_registry_accepts_new_objectives():
    class Squared(TokenObjective):
        def token_loss(self, target_log_probs):
            return target_log_probs**2

    register_objective("squared", Squared)
    try:
        assert isinstance(build_objective("squared"), Squared)
    finally:
        del OBJECTIVES["squared"]


def test_an_objective_needing_unknown_context_is_refused():
    class NeedsMoon(TokenObjective):
        needs = frozenset({"moon_phase"})

    with pytest.raises(
        LitDFTError, match="NeedsMoon needs moon_phase, which no loss provides; the context has: entropy"
    ):
        build_objective(NeedsMoon())

    class NeedsTopK(TokenObjective):
        needs = frozenset({"topk_entropy"})

    for objective in (NeedsTopK(), ProtectSpecialTokens(NeedsTopK())):  # no top_k, and the wrapper's None
        with pytest.raises(LitDFTError, match="needs topk_entropy and so a top_k >= 1"):
            build_objective(objective)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"alpha": -1.0}, "DFT alpha must be >= 0, got -1.0"),
        ({"min_weight": 1.5}, r"DFT min_weight must lie in \[0, 1\]"),
    ],
)
def test_dft_rejects_bad_options(kwargs, message):
    with pytest.raises(LitDFTError, match=message):
        DFT(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": 0.0}, r"IWSFT temperature must be > 0, got 0.0"),
        ({"max_weight": 0.5}, r"IWSFT max_weight must be >= 1 \(the weight at the first step\), got 0.5"),
    ],
)
def test_iw_sft_rejects_bad_options(kwargs, message):
    from lit_dft.objectives import IWSFT

    with pytest.raises(LitDFTError, match=message):
        IWSFT(**kwargs)


def _paper_formula(
    name: str, logits: torch.Tensor, targets: torch.Tensor, sequence: list[int], reference_log_p: torch.Tensor
) -> torch.Tensor:
    """Each objective's per-token loss written from its paper, on full float64 logits (tokens of the examples
    ``sequence`` names, with the reference's log-probabilities ``reference_log_p``)."""
    log_probs_all = logits.log_softmax(-1)
    log_p = log_probs_all.gather(1, targets[:, None]).squeeze(1)
    p = log_p.exp()
    if name == "sft":
        return -log_p
    if name in ("dft", "asft"):  # -sg(p) log p (asft's KL term needs a reference: its own test)
        return -p.detach() * log_p
    if name == "prob":  # -p, shifted by 1
        return 1 - p
    if name == "prob_power":  # (1 - p^alpha) / alpha, alpha = 10
        return (1 - p**10) / 10
    if name == "prob_threshold":  # (1 - p) on tokens with p >= 0.5
        return torch.where(p.detach() >= 0.5, 1 - p, torch.zeros_like(p))
    if name == "focal":  # -(1 - p)^2 log p
        return -((1 - p) ** 2) * log_p
    if name == "eaft":  # -sg(H_top20 / ln 20) log p, H over the top-20 probabilities renormalised
        top = logits.detach().topk(20, dim=-1).values.softmax(-1)
        return -(-(top * top.log()).sum(-1) / math.log(20)) * log_p
    if name == "deft":  # (1 - p^a) / a, a = sg(sum_v p_v^2)
        a = (log_probs_all.exp() ** 2).sum(-1).detach()
        return (1 - p**a) / a
    if name == "iw_sft":  # -w_s log p, w_s = sg(clip(exp(mean over the example's tokens of log p - log p_ref), 0, 16))
        weights = []
        for s in sequence:
            tokens = [i for i, other in enumerate(sequence) if other == s]
            mean = sum(float(log_p[i].detach() - reference_log_p[i]) for i in tokens) / len(tokens)
            weights.append(min(math.exp(mean), 16.0))
        return -torch.tensor(weights, dtype=torch.float64) * log_p
    raise AssertionError(f"no paper formula written for {name}")


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_matches_its_paper_formula_in_value_and_logit_gradient(name):
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(40, 50, generator=g, dtype=torch.float64) * 2.5).requires_grad_()
    targets = torch.randint(0, 50, (40,), generator=g)
    targets[::2] = logits[::2].argmax(-1)  # half the tokens likely: every weighting has tokens to act on
    sequence = [i // 6 for i in range(40)]  # examples of 6 tokens (the last of 4)
    reference_log_p = -torch.rand(40, generator=g, dtype=torch.float64) * 3  # weights around 1 ...
    reference_log_p[:6] = -30.0  # ... and one example clipped at 16
    expected = _paper_formula(name, logits, targets, sequence, reference_log_p)
    (expected_grad,) = torch.autograd.grad(expected.sum(), logits)
    context = TokenContext(sequence=torch.tensor(sequence), reference_log_probs=reference_log_p)
    loss = naive_objective_loss(logits, targets, build_objective(name), context).loss
    (grad,) = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(loss, expected.sum(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)
    assert expected_grad.abs().max() > 1e-3, "the objective must train"


def test_protection_gives_special_tokens_the_sft_weight_and_leaves_the_others():
    log_probs = torch.log(torch.tensor([0.01, 0.3, 0.9, 0.05], dtype=torch.float64)).requires_grad_()
    special = torch.tensor([True, False, False, True])
    protected = ProtectSpecialTokens(DFT())(log_probs, TokenContext(special=special))
    (weights,) = torch.autograd.grad(-protected.sum(), log_probs)  # the gradient weight of each token
    assert weights.tolist() == pytest.approx([1.0, 0.3, 0.9, 1.0])  # SFT's 1 on the special ones, DFT's p elsewhere


def test_asft_adds_the_kl_to_the_reference_in_value_and_logit_gradient():
    from lit_dft.objectives import ASFT

    g = torch.Generator().manual_seed(4)
    logits = (torch.randn(30, 40, generator=g, dtype=torch.float64) * 2).requires_grad_()
    reference = torch.randn(30, 40, generator=g, dtype=torch.float64) * 2
    targets = torch.randint(0, 40, (30,), generator=g)
    log_p_all, log_ref = logits.log_softmax(-1), reference.log_softmax(-1)
    log_p = log_p_all.gather(1, targets[:, None]).squeeze(1)
    kl = (log_ref.exp() * (log_ref - log_p_all)).sum(-1)  # KL(p_ref || p_theta), the authors' direction
    expected = (-log_p.exp().detach() * log_p + 0.3 * kl).sum()
    terms = naive_objective_loss(logits, targets, ASFT(kl_weight=0.3), TokenContext(), reference)
    torch.testing.assert_close(terms.loss, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(terms.kl_ref, kl.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        torch.autograd.grad(terms.loss, logits)[0], torch.autograd.grad(expected, logits)[0], rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_has_a_finite_gradient_on_a_certain_token(gamma):
    from lit_dft.objectives import Focal

    log_probs = torch.tensor([0.0, -1e-9, -2.0], requires_grad=True)  # p = 1 exactly, as float32 gives
    Focal(gamma=gamma)(log_probs).sum().backward()
    assert torch.isfinite(log_probs.grad).all()


_CLOSED_FORM_CASES = [build_objective(name) for name in sorted(OBJECTIVES)] + [
    DFT(alpha=0.5, min_weight=0.1),
    Focal(gamma=0.5),  # a power below 1: the floor near p = 1 matters
    ProbThreshold(keep="below", loss="log_prob"),
    ProtectSpecialTokens(DFT()),
]


@pytest.mark.parametrize("objective", _CLOSED_FORM_CASES, ids=repr)
def test_closed_form_log_prob_gradient_equals_autograd(objective):
    """The chunked loss uses ``log_prob_grad`` instead of autograd: it must be autograd's derivative everywhere,
    certain tokens (p = 1) and very unlikely ones included."""
    g = torch.Generator().manual_seed(5)
    log_probs = torch.cat([torch.tensor([0.0, -1e-12, -40.0]), -torch.rand(61, generator=g) * 6]).double()
    n = len(log_probs)
    context = TokenContext(
        topk_entropy=torch.rand(n, generator=g, dtype=torch.float64) * 4,
        sum_sq_probs=torch.rand(n, generator=g, dtype=torch.float64) * 0.9 + 0.05,
        special=torch.arange(n) % 5 == 0,
        sequence_log_ratio=torch.randn(n, generator=g, dtype=torch.float64) * 2,
    )
    leaf = log_probs.clone().requires_grad_()
    (expected,) = torch.autograd.grad(objective(leaf, context).sum(), leaf)
    closed_form = objective.known_log_prob_grad(log_probs, context)
    assert closed_form is not None, "every built-in objective gives its derivative in closed form"
    torch.testing.assert_close(closed_form, expected, rtol=1e-12, atol=1e-12)
    assert expected.abs().max() > 1e-3


def test_an_objective_without_a_closed_form_has_none():
    class Squared(TokenObjective):
        def token_loss(self, target_log_probs):
            return target_log_probs**2

    assert Squared().log_prob_grad(torch.zeros(3)) is None
    assert ProtectSpecialTokens(Squared()).log_prob_grad(torch.zeros(3), TokenContext(special=torch.ones(3))) is None


def test_a_subclass_that_redefines_the_loss_does_not_inherit_the_closed_form():
    class Capped(DFT):  # a user's variant of DFT: its derivative is no longer DFT's
        def token_loss(self, target_log_probs):
            return super().token_loss(target_log_probs).clamp(max=1.0)

    class Doubled(DFT):  # the loss through __call__: not DFT's derivative either
        def __call__(self, target_log_probs, context=None):
            return 2 * super().__call__(target_log_probs, context)

    class Floored(DFT):  # only settings changed: DFT's derivative still holds
        def __init__(self):
            super().__init__(min_weight=0.2)

    log_probs = torch.log(torch.tensor([0.01, 0.5, 0.99]))
    assert Capped().known_log_prob_grad(log_probs) is None and Doubled().known_log_prob_grad(log_probs) is None
    assert ProtectSpecialTokens(Capped()).known_log_prob_grad(log_probs, TokenContext(special=torch.ones(3))) is None
    torch.testing.assert_close(Floored().known_log_prob_grad(log_probs), -torch.tensor([0.2, 0.5, 0.99]))
