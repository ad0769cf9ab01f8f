import pytest
import torch

from tests.helpers import MicroModule, loader, quiet_trainer, uneven_rows


def _fit(module, data, **trainer_kwargs):
    trainer_kwargs.setdefault("max_steps", 1)
    trainer = quiet_trainer(precision="64-true", logger=False, **trainer_kwargs)
    before = {n: p.detach().clone() for n, p in module.named_parameters()} if module.model is not None else None
    trainer.fit(module, data)
    return before, {n: p.detach().clone() for n, p in module.named_parameters()}


def _step_delta(batch_size, accumulate, loss="dft", chunk=0, **trainer_kwargs):
    module = MicroModule(loss=loss, loss_chunk_size=chunk)
    module.configure_model()
    before, after = _fit(
        module, loader(uneven_rows(), batch_size), accumulate_grad_batches=accumulate, **trainer_kwargs
    )
    return {n: after[n] - before[n] for n in before}


def _target_tokens_per_micro_batch(batch_size):
    return [int((b["labels"][:, 1:] != -100).sum()) for b in loader(uneven_rows(), batch_size)]


@pytest.mark.parametrize("loss", ["sft", "dft"])
def test_gradient_does_not_depend_on_how_the_batch_is_split(loss):
    assert len(set(_target_tokens_per_micro_batch(2))) > 1, "micro-batches must hold unequal token counts"
    whole = _step_delta(batch_size=8, accumulate=1, loss=loss)
    split = _step_delta(batch_size=2, accumulate=4, loss=loss)
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=0, atol=1e-8, msg=name)
    assert max(d.abs().max() for d in whole.values()) > 1e-4, "the step must move the weights"


def test_global_batch_normalisation_equals_token_mean_of_the_whole_batch():
    module = MicroModule(loss="sft")
    module.configure_model()
    batch = next(iter(loader(uneven_rows(), 8)))
    expected = torch.nn.functional.cross_entropy(
        module.model(input_ids=batch["input_ids"]).logits[:, :-1].reshape(-1, 64), batch["labels"][:, 1:].reshape(-1)
    )
    expected.backward()
    reference = {n: -p.grad.clone() for n, p in module.named_parameters()}
    delta = _step_delta(batch_size=2, accumulate=4, loss="sft")
    for name in reference:
        torch.testing.assert_close(delta[name], reference[name], rtol=0, atol=1e-8, msg=name)


def test_chunked_and_naive_paths_train_identically():
    naive = _step_delta(batch_size=4, accumulate=2, chunk=0)
    chunked = _step_delta(batch_size=4, accumulate=2, chunk=7)
    for name in naive:
        torch.testing.assert_close(chunked[name], naive[name], rtol=0, atol=1e-10, msg=name)


def test_two_process_ddp_matches_one_process_on_the_same_global_batch():
    one = _step_delta(batch_size=8, accumulate=1)
    two = _step_delta(batch_size=2, accumulate=2, strategy="ddp_spawn", devices=2)
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-8, msg=name)


def test_batch_without_target_tokens_gives_zero_loss_and_zero_gradient():
    module = MicroModule(loss="dft")
    module.configure_model()
    batch = next(iter(loader(uneven_rows(2), 2)))
    batch["labels"][:] = -100
    out = module.token_losses(batch)
    out["loss"].backward()
    assert out["loss"].item() == 0.0 and not out["target_mask"].any()
    assert all(p.grad is None or torch.all(p.grad == 0) for p in module.parameters())


def test_training_step_returns_per_token_outputs_for_callbacks():
    module = MicroModule(loss="dft")
    module.configure_model()
    batch = next(iter(loader(uneven_rows(4), 4)))
    out = module.token_losses(batch)
    mask = batch["labels"][:, 1:] != -100
    assert torch.equal(out["target_mask"], mask)
    log_probs = out["target_log_probs"]
    assert log_probs.shape == mask.shape and not log_probs.requires_grad
    assert torch.all(log_probs[~mask] == 0) and torch.all(log_probs[mask] < 0)
    manual = torch.log_softmax(module.model(input_ids=batch["input_ids"]).logits[:, :-1], -1)
    expected = manual.gather(-1, batch["labels"][:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(log_probs[mask], expected[mask])


class _NaNOnSecondBatch(MicroModule):
    def __init__(self, on_nonfinite: str) -> None:
        super().__init__()
        self.hparams.on_nonfinite = on_nonfinite
        self.snapshots = []

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        if batch_idx == 1:
            self._window[0] = float("nan")
            out["loss"] = out["loss"] * float("nan")
        return out

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.snapshots.append({n: p.detach().clone() for n, p in self.named_parameters()})


def test_nonfinite_loss_skips_the_step_and_leaves_the_weights_untouched():
    module = _NaNOnSecondBatch("skip")
    module.configure_model()
    with pytest.warns(UserWarning, match="Non-finite loss at step 1"):
        _fit(module, loader(uneven_rows(), 2), max_steps=3)
    first, second, third = module.snapshots[:3]
    assert module.skipped_steps == 1
    assert all(torch.equal(first[n], second[n]) for n in first), "the NaN step must not move the weights"
    assert not all(torch.equal(second[n], third[n]) for n in second), "training goes on afterwards"
    assert all(torch.isfinite(p).all() for p in third.values())


def test_nonfinite_loss_can_stop_the_run_with_a_message():
    from lit_dft.errors import LitDFTError

    module = _NaNOnSecondBatch("stop")
    module.configure_model()
    with pytest.raises(LitDFTError, match="Non-finite loss at step 1"):
        _fit(module, loader(uneven_rows(), 2), max_steps=3)


def test_deepspeed_is_refused_with_a_reason():
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

    from lit_dft.errors import LitDFTError
    from lit_dft.module import check_strategy

    check_strategy(DDPStrategy())
    deepspeed = DeepSpeedStrategy.__new__(DeepSpeedStrategy)  # no deepspeed package needed to check the type
    with pytest.raises(LitDFTError, match="DeepSpeed is not supported.*fsdp2"):
        check_strategy(deepspeed)
