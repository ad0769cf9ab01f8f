import pytest
import torch
from transformers import LlamaForCausalLM

from lit_dft.batch import IGNORE_INDEX, TrainingBatch
from lit_dft.objectives import (
    DFT,
    EAFT,
    IWSFT,
    OBJECTIVES,
    ProtectSpecialTokens,
    TokenContext,
    TokenObjective,
    build_objective,
)
from lit_dft.token_loss import TokenLoss, chunked_objective_loss, naive_objective_loss
from tests.conftest import micro_llama


class _UserObjective(TokenObjective):
    """An objective as a user writes one, with no closed-form derivative: the chunked loss differentiates it."""

    def token_loss(self, target_log_probs):
        return -torch.sigmoid(3.0 * target_log_probs + 1.0)


OBJECTIVE_CASES = [build_objective(name) for name in sorted(OBJECTIVES)] + [
    DFT(alpha=0.5, min_weight=0.1),
    EAFT(top_k=5, alpha=2.0),
    IWSFT(temperature=2.0, max_weight=4.0),  # one example's weight clipped
    ProtectSpecialTokens(DFT()),
    _UserObjective(),
    ProtectSpecialTokens(_UserObjective()),
]


def _problem(n=37, h=24, v=101, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=dtype)
    weight = torch.randn(v, h, generator=g, dtype=dtype) * 0.5
    targets = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, targets


def _context(targets):
    """The target-side context: every 7th token id counts as special, examples of 5 tokens, reference
    log-probabilities that put the examples' importance weights on both sides of 1."""
    reference_log_probs = -torch.linspace(2.0, 8.0, len(targets)).roll(len(targets) // 3)
    return TokenContext(
        special=targets % 7 == 0, sequence=torch.arange(len(targets)) // 5, reference_log_probs=reference_log_probs
    )


def _naive(hidden, weight, targets, objective):
    hidden, weight = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, log_probs, entropy, _ = naive_objective_loss(hidden @ weight.T, targets, objective, _context(targets))
    loss.backward()
    return loss.detach(), log_probs, entropy, hidden.grad, weight.grad


def _chunked(hidden, weight, targets, objective, chunk_size):
    hidden, weight = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, log_probs, entropy, _ = chunked_objective_loss(
        hidden, weight, targets, objective, chunk_size, _context(targets)
    )
    (loss * 1.7).backward()  # a non-unit upstream gradient must scale both gradients
    return loss.detach(), log_probs, entropy, hidden.grad / 1.7, weight.grad / 1.7


@pytest.mark.parametrize("objective", OBJECTIVE_CASES, ids=repr)
@pytest.mark.parametrize("chunk_size", [1, 8, 10, 37, 1000])  # 10 does not divide 37
def test_chunked_matches_naive_values_and_gradients(objective, chunk_size):
    hidden, weight, targets = _problem()
    expected = _naive(hidden, weight, targets, objective)
    actual = _chunked(hidden, weight, targets, objective, chunk_size)
    for name, a, e in zip(("loss", "log_probs", "entropy", "grad_hidden", "grad_weight"), actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5, msg=name)


def test_entropy_is_that_of_the_softmax():
    hidden, weight, targets = _problem(dtype=torch.float64)
    _, _, entropy, _, _ = _chunked(hidden, weight, targets, DFT(), 8)
    probs = (hidden @ weight.T).softmax(-1)
    torch.testing.assert_close(entropy, -(probs * probs.log()).sum(-1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("objective", OBJECTIVE_CASES, ids=repr)
def test_chunked_bf16_is_close_to_float32_reference(objective):
    hidden, weight, targets = _problem()
    ref_loss, ref_lp, _, ref_gh, ref_gw = _naive(hidden, weight, targets, objective)
    loss, log_probs, _, grad_h, grad_w = _chunked(hidden.bfloat16(), weight.bfloat16(), targets, objective, 16)
    assert log_probs.dtype == torch.float32 and grad_h.dtype == torch.bfloat16 and grad_w.dtype == torch.bfloat16
    torch.testing.assert_close(loss, ref_loss, rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(log_probs, ref_lp, rtol=5e-2, atol=5e-2)
    torch.testing.assert_close(grad_h.float(), ref_gh, rtol=5e-2, atol=2e-2)
    torch.testing.assert_close(grad_w.float(), ref_gw, rtol=5e-2, atol=2e-2)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_chunked_gradient_of_a_built_in_objective_needs_no_autograd_call(name, monkeypatch):
    """Each chunk's loss derivative comes in closed form (one autograd engine call per chunk was the cost)."""
    hidden, weight, targets = _problem()
    expected = _naive(hidden, weight, targets, build_objective(name))
    monkeypatch.setattr(torch.autograd, "grad", _fail_if_called)
    actual = _chunked(hidden, weight, targets, build_objective(name), 8)
    torch.testing.assert_close(actual[4], expected[4], rtol=1e-5, atol=1e-5)


def test_chunked_handles_no_target_tokens():
    hidden, weight, _ = _problem(n=0)
    loss, log_probs, _, grad_h, grad_w = _chunked(hidden, weight, torch.zeros(0, dtype=torch.long), DFT(), 8)
    assert loss.item() == 0.0 and log_probs.numel() == 0
    assert torch.all(grad_w == 0) and grad_h.shape == (0, 24)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
def test_chunked_loss_without_grad_mode_computes_the_loss_only(context, monkeypatch):
    """Standalone validate/test run under inference mode: the loss must work there and build no gradient."""
    hidden, weight, targets = _problem()
    expected_loss, expected_log_probs, expected_entropy, _, _ = _naive(hidden, weight, targets, DFT())
    hidden, weight = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    monkeypatch.setattr("lit_dft.token_loss._ChunkedObjectiveLoss.forward", _fail_if_called)
    with context():
        loss, log_probs, entropy, _ = chunked_objective_loss(hidden, weight, targets, DFT(), 8)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log_probs, expected_log_probs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy, expected_entropy, rtol=1e-5, atol=1e-5)


def _fail_if_called(*args, **kwargs):
    raise AssertionError("the gradient-computing chunked path ran although no gradient is wanted")


class _ScaledLlama(LlamaForCausalLM):
    """A head that multiplies its logits by a config value under a name no list of keys knows."""

    def forward(self, input_ids=None, attention_mask=None, logits_to_keep=0, **kwargs):
        output = super().forward(input_ids, attention_mask, logits_to_keep=logits_to_keep, **kwargs)
        output.logits = output.logits * self.config.novel_logit_multiplier
        return output


def _batch(model, seed=0) -> TrainingBatch:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=g)
    labels = input_ids.clone()
    labels[:, :4] = IGNORE_INDEX  # a 4-token prompt: the first 3 targets are not trained
    return TrainingBatch(input_ids, torch.ones_like(input_ids), labels)


def _naive_log_probs(model, batch):
    logits = model(input_ids=batch.input_ids).logits[:, :-1]
    targets = batch.input_ids[:, 1:]
    mask = torch.arange(targets.shape[1]) >= 3
    return torch.log_softmax(logits.double(), -1)[:, mask].gather(-1, targets[:, mask].unsqueeze(-1)).squeeze(-1)


def test_a_head_that_scales_its_logits_falls_back_to_full_logits():
    model = micro_llama(vocab_size=64)
    scaled = _ScaledLlama(model.config).to(torch.float64)
    scaled.load_state_dict(model.state_dict())
    scaled.config.novel_logit_multiplier = 3.0
    batch = _batch(scaled)
    loss = TokenLoss(scaled, DFT(), chunk_size=5)
    with pytest.warns(UserWarning, match="chunked loss is off.*logits differ"):
        out = loss(batch)
    assert loss.chunked is False
    torch.testing.assert_close(out.target_log_probs[:, 3:], _naive_log_probs(scaled, batch), rtol=0, atol=1e-12)


def test_a_plain_head_is_chunked_and_matches_the_model_logits(recwarn):
    model = micro_llama(vocab_size=64)
    batch = _batch(model)
    loss = TokenLoss(model, DFT(), chunk_size=5)
    out = loss(batch)
    assert loss.chunked is True and not [w for w in recwarn if "chunked" in str(w.message)]
    assert torch.equal(out.target_mask, batch.labels[:, 1:] != IGNORE_INDEX) and not out.target_mask[:, :3].any()
    assert torch.equal(out.target_ids, batch.labels[:, 1:]) and torch.all(out.target_log_probs[:, :3] == 0)
    torch.testing.assert_close(out.target_log_probs[:, 3:], _naive_log_probs(model, batch), rtol=0, atol=1e-12)


def test_chunking_is_decided_by_vocabulary_size_when_not_set():
    small_model = micro_llama(vocab_size=64)
    small = TokenLoss(small_model, DFT(), chunk_size=None)
    small(_batch(small_model))
    assert small.chunked is False
    large_model = micro_llama(vocab_size=32_768, dtype=torch.float32)
    large = TokenLoss(large_model, DFT(), chunk_size=None)
    batch = _batch(large_model)
    with torch.inference_mode():  # what standalone validate runs under
        out = large(batch)
    assert large.chunked is True and torch.isfinite(out.loss)
    expected = _naive_log_probs(large_model, batch).float()
    torch.testing.assert_close(out.target_log_probs[:, 3:], expected, atol=1e-4, rtol=0)


def test_a_slightly_scaled_head_is_caught_even_with_small_random_logits():
    model = micro_llama(vocab_size=64)
    scaled = _ScaledLlama(model.config).to(torch.float64)
    scaled.load_state_dict(model.state_dict())
    scaled.config.novel_logit_multiplier = 1.05
    assert scaled(input_ids=torch.arange(8).unsqueeze(0)).logits.abs().max() < 1, "logits below 1: no clamp helps"
    loss = TokenLoss(scaled, DFT(), chunk_size=5)
    with pytest.warns(UserWarning, match="chunked loss is off"):
        loss(_batch(scaled))
    assert loss.chunked is False


def test_chunked_under_autocast_matches_full_logits_under_autocast():
    """bf16-mixed: float32 weights and hidden states, bf16 matrix products; the head gradient summed in float32."""
    hidden, weight, targets = _problem()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = _naive(hidden, weight, targets, DFT())
        actual = _chunked(hidden, weight, targets, DFT(), 8)
    assert actual[4].dtype == torch.float32 and actual[3].dtype == torch.float32
    reference = _naive(hidden, weight, targets, DFT())  # float32 throughout
    names = ("loss", "log_probs", "entropy", "grad_hidden", "grad_weight")
    for name, a, e, r in zip(names, actual, expected, reference):
        torch.testing.assert_close(a, e.to(a.dtype), rtol=3e-2, atol=3e-2, msg=name)
        torch.testing.assert_close(a, r, rtol=5e-2, atol=3e-2, msg=name)


@pytest.mark.parametrize("chunk_size", [1, 8, 37])
def test_chunked_kl_to_a_reference_matches_naive(chunk_size):
    from lit_dft.objectives import ASFT

    hidden, weight, targets = _problem()
    reference_hidden, reference_weight, _ = _problem(seed=1)
    objective = ASFT(kl_weight=0.2)
    leaves = [hidden.clone().requires_grad_(), weight.clone().requires_grad_()]
    naive = naive_objective_loss(
        leaves[0] @ leaves[1].T, targets, objective, None, reference_hidden @ reference_weight.T
    )
    naive.loss.backward()
    chunked_leaves = [hidden.clone().requires_grad_(), weight.clone().requires_grad_()]
    chunked = chunked_objective_loss(
        *chunked_leaves, targets, objective, chunk_size, None, (reference_hidden, reference_weight)
    )
    chunked.loss.backward()
    assert naive.kl_ref.min() > 0.05, "distinct models: the KL term must be there"
    for a, e in [
        (chunked.loss, naive.loss),
        (chunked.kl_ref, naive.kl_ref),
        *zip((leaf.grad for leaf in chunked_leaves), (leaf.grad for leaf in leaves)),
    ]:
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the loss-only path (validation) gives the same KL
        torch.testing.assert_close(
            chunked_objective_loss(
                hidden, weight, targets, objective, chunk_size, None, (reference_hidden, reference_weight)
            ).kl_ref,
            naive.kl_ref,
            rtol=1e-5,
            atol=1e-5,
        )


@pytest.mark.parametrize("chunk_size", [0, 5], ids=["full-logits", "chunked"])
def test_iw_sft_weights_each_example_by_its_likelihood_ratio_to_the_reference_model(chunk_size):
    """Against an independent computation from both models' full float64 logits, in value and gradient."""
    model, reference = micro_llama(vocab_size=64), micro_llama(vocab_size=64, seed=1)
    batch = _batch(model)
    out = TokenLoss(model, IWSFT(temperature=3.0), chunk_size, reference=reference)(batch)
    out.loss.backward()
    got = {name: p.grad.clone() for name, p in model.named_parameters()}
    assert all(p.grad is None for p in reference.parameters())

    model.zero_grad()
    log_p = _naive_log_probs(model, batch)  # (2 examples, 8 target tokens)
    with torch.no_grad():
        log_ref = _naive_log_probs(reference, batch)
    weights = torch.exp(3.0 * (log_p.detach() - log_ref).mean(dim=1, keepdim=True)).clamp(max=16.0)
    assert float(weights.max() - weights.min()) > 1e-3, "the two examples must weigh differently"
    expected = -(weights * log_p).sum()
    expected.backward()
    torch.testing.assert_close(out.loss, expected.detach(), rtol=1e-10, atol=0)
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("chunk_size", [0, 5], ids=["full-logits", "chunked"])
def test_iw_sft_against_the_data_s_reference_log_probs_equals_the_reference_model(chunk_size):
    """``model.reference: data``: the batch carries the reference model's log-probabilities at the labels."""
    model, reference = micro_llama(vocab_size=64), micro_llama(vocab_size=64, seed=1)
    batch = _batch(model)
    with_model = TokenLoss(model, IWSFT(), chunk_size, reference=reference)(batch)
    with_model.loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    from_reference = torch.zeros(batch.labels.shape, dtype=torch.float32)
    from_reference[:, 4:] = _naive_log_probs(reference, batch).detach().float()
    data_batch = TrainingBatch(batch.input_ids, batch.attention_mask, batch.labels, from_reference)
    from_data = TokenLoss(model, IWSFT(), chunk_size)(data_batch)
    from_data.loss.backward()
    torch.testing.assert_close(from_data.loss, with_model.loss, rtol=1e-6, atol=0)  # float32 data column
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_reference_log_probs_missing_from_the_data_or_given_twice_are_one_line():
    from lit_dft.errors import LitDFTError

    model = micro_llama(vocab_size=64)
    batch = _batch(model)
    with pytest.raises(LitDFTError, match="batches carry none: set data.reference_log_probs_column"):
        TokenLoss(model, IWSFT(), 0)(batch)
    both = TrainingBatch(batch.input_ids, batch.attention_mask, batch.labels, torch.zeros(batch.labels.shape))
    with pytest.raises(LitDFTError, match="set model.reference: data to train against the data's"):
        TokenLoss(model, IWSFT(), 0, reference=micro_llama(vocab_size=64, seed=1))(both)
    with pytest.warns(
        UserWarning, match="uses no reference log-probabilities, yet data.reference_log_probs_column is set"
    ):
        TokenLoss(model, DFT(), 0)(both)


@pytest.mark.parametrize("width, k", [(64 * 50 + 17, 20), (64 * 50, 20), (64 * 12 + 5, 5), (200, 5)])
def test_top_values_equal_topk_with_ties_and_a_partial_last_block(width, k):
    from lit_dft.token_loss import _top_values

    g = torch.Generator().manual_seed(width)
    rows = torch.randn(9, width, generator=g)
    rows[0] = rows[0].round()  # many ties
    rows[1, -3:] = 50.0  # the largest values in the partial last block
    rows[2, :] = float("-inf")  # a masked vocabulary but for a few entries
    rows[2, ::97] = torch.randn(len(range(0, width, 97)), generator=g)
    torch.testing.assert_close(_top_values(rows, k), rows.topk(k, dim=1).values, rtol=0, atol=0)


@pytest.mark.parametrize("factors", [torch.float32, torch.bfloat16])
def test_head_gradient_sums_each_chunk_s_product_in_its_own_dtype(factors):
    """The head gradient stays float32 while each chunk's product runs in the matmul dtype (bf16 under bf16-mixed):
    in place where the device can add a half-precision product into float32 (CUDA), else through a temporary."""
    from lit_dft.token_loss import _add_product, _adds_into_float32

    g = torch.Generator().manual_seed(0)
    total = torch.randn(7, 5, generator=g)
    a, b = torch.randn(7, 3, generator=g).to(factors), torch.randn(3, 5, generator=g).to(factors)
    expected = total.double() + a.double() @ b.double()
    storage = total.data_ptr()
    _add_product(total, a, b)
    assert total.dtype == torch.float32 and total.data_ptr() == storage
    tolerance = 1e-5 if factors == torch.float32 else 2e-2  # a bf16 product is rounded to 8 bits
    torch.testing.assert_close(total.double(), expected, rtol=tolerance, atol=tolerance)
    assert not _adds_into_float32("cpu")  # a CPU has no such product: the temporary path


@pytest.mark.parametrize("chunk", [0, 8])
def test_special_token_ids_get_sft_s_loss_through_the_token_loss(chunk):
    from tests.helpers import loader, uneven_rows

    special = [4, 9, 21, 63]
    token_loss = TokenLoss(micro_llama(), ProtectSpecialTokens(DFT()), chunk, special_ids=special)
    batch = next(iter(loader(uneven_rows(4), 4)))
    out = token_loss(batch)
    log_probs, ids = out.log_probs, out.select(out.target_ids)
    is_special = torch.isin(ids, torch.tensor(special))
    assert is_special.any() and not is_special.all()
    expected = torch.where(is_special, -log_probs, -log_probs.exp() * log_probs).sum()
    torch.testing.assert_close(out.loss, expected, rtol=1e-10, atol=1e-10)
