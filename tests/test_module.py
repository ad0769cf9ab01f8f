import math
import traceback
import warnings
from dataclasses import replace

import lightning.pytorch as L
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lit_dft.batch import TokenOutputs
from lit_dft.callbacks import TokenProbabilityHistogram
from lit_dft.objectives import OBJECTIVES, ProbPower, ProbThreshold, build_objective
from tests.helpers import MICRO_LORA, MicroModule, SGDModule, loader, quiet_trainer, randomise_adapters, uneven_rows


def _fit(module, data, **trainer_kwargs):
    trainer_kwargs.setdefault("max_steps", 1)
    trainer = quiet_trainer(precision="64-true", logger=False, **trainer_kwargs)
    before = {n: p.detach().clone() for n, p in module.named_parameters()} if module.model is not None else None
    trainer.fit(module, data)
    return before, {n: p.detach().clone() for n, p in module.named_parameters()}


def _step_delta(batch_size, accumulate, loss="dft", chunk=0, lora=False, **trainer_kwargs):
    module = MicroModule(loss=loss, loss_chunk_size=chunk, **({"lora": MICRO_LORA} if lora else {}))
    module.configure_model()
    if lora:
        randomise_adapters(module.model)
    before, after = _fit(
        module, loader(uneven_rows(), batch_size), accumulate_grad_batches=accumulate, **trainer_kwargs
    )
    return {n: after[n] - before[n] for n in before}


def _target_tokens_per_micro_batch(batch_size):
    return [int((b.labels[:, 1:] != -100).sum()) for b in loader(uneven_rows(), batch_size)]


# every objective, with settings that give the random micro model's tokens (p ~ 1/64) a gradient
SPLIT_CASES = [build_objective(name) for name in sorted(OBJECTIVES) if name not in ("prob_power", "prob_threshold")]
SPLIT_CASES += [ProbPower(alpha=0.5), ProbThreshold(threshold=0.01, keep="above")]


@pytest.mark.parametrize("loss", SPLIT_CASES, ids=repr)
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
        module.model(input_ids=batch.input_ids).logits[:, :-1].reshape(-1, 64), batch.labels[:, 1:].reshape(-1)
    )
    expected.backward()
    reference = {n: -p.grad.clone() for n, p in module.named_parameters()}
    delta = _step_delta(batch_size=2, accumulate=4, loss="sft")
    for name in reference:
        torch.testing.assert_close(delta[name], reference[name], rtol=0, atol=1e-8, msg=name)


def test_normalisation_is_exact_in_float64():
    """The scale 1/tokens is computed in float64: a float32 scale has a relative error of up to 6e-8."""
    rows = uneven_rows()
    tokens = sum(_target_tokens_per_micro_batch(8))
    assert tokens & (tokens - 1), "a power of two would be exact in float32 too"
    recorder = _GradientRecorder()
    module = MicroModule(loss="sft")
    module.configure_model()
    _fit(module, loader(rows, 8), callbacks=[recorder])
    module = MicroModule(loss="sft")
    module.configure_model()
    batch = next(iter(loader(rows, 8)))
    loss_sum = torch.nn.functional.cross_entropy(
        module.model(input_ids=batch.input_ids).logits[:, :-1].reshape(-1, 64),
        batch.labels[:, 1:].reshape(-1),
        reduction="sum",
    )
    loss_sum.backward()
    for name, param in module.named_parameters():
        torch.testing.assert_close(recorder.grads[0][name], param.grad / tokens, rtol=1e-13, atol=1e-17, msg=name)


class _GradientRecorder(L.Callback):
    """What a gradient-norm logger sees: the gradients in ``on_before_optimizer_step``."""

    def __init__(self) -> None:
        self.grads = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads.append({n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None})


def test_callbacks_see_the_normalised_gradients_the_optimiser_applies():
    recorder = _GradientRecorder()
    module = MicroModule(loss="dft")
    module.configure_model()
    before, after = _fit(module, loader(uneven_rows(), 2), accumulate_grad_batches=4, callbacks=[recorder])
    (seen,) = recorder.grads
    for name in before:  # SGD with lr 1: the step is -grad
        torch.testing.assert_close(seen[name], before[name] - after[name], rtol=0, atol=1e-12, msg=name)


class _NaNGradientOnSecondBatch(L.Callback):
    """A finite loss whose gradient is NaN (what bf16 without a scaler can give)."""

    def on_after_backward(self, trainer, pl_module):
        if trainer.fit_loop.epoch_loop.batch_progress.current.ready == 2:
            next(pl_module.parameters()).grad.view(-1)[0] = float("nan")


def test_finite_loss_with_nonfinite_gradient_skips_the_step():
    module = MicroModule(module_class=_NaNOnSecondBatch, on_nonfinite="skip", poison_loss=False)
    module.configure_model()
    with pytest.warns(UserWarning, match="Non-finite loss or gradient at step 1"):
        _fit(module, loader(uneven_rows(), 2), max_steps=3, callbacks=[_NaNGradientOnSecondBatch()])
    first, second, third = module.snapshots[:3]
    assert module.skipped_steps == 1
    assert all(torch.equal(first[n], second[n]) for n in first), "the NaN-gradient step must not move the weights"
    assert all(torch.isfinite(p).all() for p in third.values())


def test_greedy_decoding_with_several_samples_is_refused():
    from lit_dft.errors import LitDFTError
    from lit_dft.generation import GenerationArgs
    from lit_dft.module import CausalLMModule

    with pytest.raises(LitDFTError, match="num_samples=4 with temperature 0"):
        CausalLMModule("tiny", generation=GenerationArgs(num_samples=4, temperature=0.0))
    CausalLMModule("tiny", generation=GenerationArgs(num_samples=4, temperature=1.0))


def _unchanged_fraction_after_one_adamw_step(dtype: torch.dtype, precision: str) -> float:
    from lit_dft.module import CausalLMModule
    from lit_dft.optim import OptimizerArgs

    weights = "float32" if dtype == torch.float32 else "bfloat16"
    module = CausalLMModule("tiny", dtype=weights, optimizer=OptimizerArgs(learning_rate=5e-5))
    module.configure_model()
    rows = [{"input_ids": list(range(3, 40)), "prompt_length": 5}] * 2
    before, after = _fit_plain(module, loader(rows, 2), precision)
    changed = sum(int((after[n] != before[n]).sum()) for n in before)
    return 1 - changed / sum(v.numel() for v in before.values())


def _fit_plain(module, data, precision):
    trainer = quiet_trainer(precision=precision, logger=False, max_steps=1)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    trainer.fit(module, data)
    return before, {n: p.detach().clone() for n, p in module.named_parameters()}


def test_bf16_weights_warn_and_lose_most_updates_unlike_float32_master_weights():
    with pytest.warns(UserWarning, match="trainable weights are torch.bfloat16"):
        bf16 = _unchanged_fraction_after_one_adamw_step(torch.bfloat16, "bf16-true")
    master = _unchanged_fraction_after_one_adamw_step(torch.float32, "bf16-mixed")
    assert bf16 > 0.5 and master < 0.05, (bf16, master)


def test_chunked_and_naive_paths_train_identically():
    naive = _step_delta(batch_size=4, accumulate=2, chunk=0)
    chunked = _step_delta(batch_size=4, accumulate=2, chunk=7)
    for name in naive:
        torch.testing.assert_close(chunked[name], naive[name], rtol=0, atol=1e-10, msg=name)


# eaft: an objective with context from the distribution; asft with LoRA: the base, adapters off, as the reference
@pytest.mark.slow
@pytest.mark.parametrize(
    "loss, lora", [("dft", False), ("eaft", False), ("asft", True)], ids=["dft", "eaft", "asft-lora"]
)
def test_two_process_ddp_matches_one_process_on_the_same_global_batch(loss, lora):
    one = _step_delta(batch_size=8, accumulate=1, loss=loss, lora=lora)
    two = _step_delta(batch_size=2, accumulate=2, loss=loss, lora=lora, strategy="ddp_spawn", devices=2)
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-8, msg=name)


def test_batch_without_target_tokens_gives_zero_loss_and_zero_gradient():
    module = MicroModule(loss="dft")
    module.configure_model()
    rows = [row | {"counted": False} for row in uneven_rows(2)]  # padding rows: no labels
    batch = next(iter(loader(rows, 2)))
    out = module.token_outputs(batch)
    out.loss.backward()
    assert out.loss.item() == 0.0 and not out.target_mask.any() and out.log_probs.numel() == 0
    assert all(p.grad is None or torch.all(p.grad == 0) for p in module.parameters())


def test_training_step_returns_per_token_outputs_for_callbacks():
    module = MicroModule(loss="dft")
    module.configure_model()
    batch = next(iter(loader(uneven_rows(4), 4)))
    outputs = module.training_step(batch, 0)
    out = TokenOutputs.of(outputs)  # what a callback receives
    assert outputs["loss"].requires_grad and not out.loss.requires_grad
    mask = batch.labels[:, 1:] != -100
    assert torch.equal(out.target_mask, mask) and torch.equal(out.target_ids[mask], batch.labels[:, 1:][mask])
    log_probs = out.target_log_probs
    assert log_probs.shape == mask.shape and not log_probs.requires_grad
    assert torch.all(log_probs[~mask] == 0) and torch.all(log_probs[mask] < 0)
    manual = torch.log_softmax(module.model(input_ids=batch.input_ids).logits[:, :-1], -1)
    expected = manual.gather(-1, batch.labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(log_probs[mask], expected[mask])


class _NaNOnSecondBatch(SGDModule):
    def __init__(self, poison_loss: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.poison_loss = poison_loss
        self.snapshots = []

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        if batch_idx == 1 and self.poison_loss:
            self._window[0] = float("nan")
            out["loss"] = out["loss"] * float("nan")  # the dict Lightning back-propagates
        return out

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.snapshots.append({n: p.detach().clone() for n, p in self.named_parameters()})


def test_nonfinite_loss_skips_the_step_and_leaves_the_weights_untouched():
    module = MicroModule(module_class=_NaNOnSecondBatch, on_nonfinite="skip")
    module.configure_model()
    with pytest.warns(UserWarning, match="Non-finite loss or gradient at step 1"):
        _fit(module, loader(uneven_rows(), 2), max_steps=3)
    first, second, third = module.snapshots[:3]
    assert module.skipped_steps == 1
    assert all(torch.equal(first[n], second[n]) for n in first), "the NaN step must not move the weights"
    assert not all(torch.equal(second[n], third[n]) for n in second), "training goes on afterwards"
    assert all(torch.isfinite(p).all() for p in third.values())


def test_nonfinite_loss_can_stop_the_run_with_a_message():
    from lit_dft.errors import LitDFTError

    module = MicroModule(module_class=_NaNOnSecondBatch, on_nonfinite="stop")
    module.configure_model()
    with pytest.raises(LitDFTError, match="Non-finite loss or gradient at step 1"):
        _fit(module, loader(uneven_rows(), 2), max_steps=3)


def test_deepspeed_is_refused_with_a_reason():
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

    from lit_dft.errors import LitDFTError
    from lit_dft.module import check_strategy

    check_strategy(DDPStrategy())
    deepspeed = DeepSpeedStrategy.__new__(DeepSpeedStrategy)  # no deepspeed package needed to check the type
    with pytest.raises(LitDFTError, match="DeepSpeed is not supported.*fsdp2"):
        check_strategy(deepspeed)


class _LossScaleOverflow(L.Callback):
    """An inf in the scaled gradient: what an fp16 loss-scale overflow looks like."""

    def on_after_backward(self, trainer, pl_module):
        next(pl_module.parameters()).grad.view(-1)[0] = float("inf")


def test_fp16_loss_scale_overflow_is_left_to_the_grad_scaler():
    from lightning.pytorch.plugins import MixedPrecision

    module = MicroModule(loss="sft")
    module.configure_model()
    module.model.float()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    trainer = quiet_trainer(
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
        logger=False,
        max_steps=2,
        callbacks=[_LossScaleOverflow()],
    )
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    trainer.fit(module, loader(uneven_rows(), 2))
    assert scaler.get_scale() == 2.0**14, "the scaler saw both overflows and backed off twice"
    assert all(torch.equal(before[n], p) for n, p in module.named_parameters()), "and skipped both steps"
    assert module.skipped_steps == 0


class _Recorder(L.Callback):
    def __init__(self) -> None:
        self.learning_rates = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.learning_rates.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_learning_rate_follows_warm_up_and_cosine_and_decay_skips_biases_and_norms():
    from lit_dft.module import CausalLMModule
    from lit_dft.optim import OptimizerArgs

    args = OptimizerArgs(learning_rate=1e-3, warmup_ratio=0.2, min_lr_ratio=0.1, weight_decay=0.01)
    module = MicroModule(module_class=CausalLMModule, optimizer=args)  # AdamW, not the SGD of the other tests
    module.configure_model()
    recorder = _Recorder()
    _fit(module, loader(uneven_rows(), 2), max_steps=10, callbacks=[recorder], limit_train_batches=10)
    warmup, total = 2, 10  # ceil(0.2 * 10)
    expected = [
        1e-3
        * (
            (s + 1) / (warmup + 1)
            if s < warmup
            else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))
        )
        for s in range(total)
    ]
    assert recorder.learning_rates == pytest.approx(expected, rel=1e-12)
    decayed, plain = module.trainer.optimizers[0].param_groups
    assert decayed["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decayed["params"]) and all(p.ndim < 2 for p in plain["params"])
    norms = [p for n, p in module.named_parameters() if "norm" in n]
    assert norms and all(any(p is q for q in plain["params"]) for p in norms)


def test_validation_loss_is_a_mean_over_tokens_not_batches():
    module = MicroModule(loss="sft")
    module.configure_model()
    rows = uneven_rows()
    trainer = quiet_trainer(precision="64-true", logger=False)
    (metrics,) = trainer.validate(module, loader(rows, 3), verbose=False)  # batches of unequal token counts
    batch = next(iter(loader(rows, len(rows))))
    with torch.no_grad():
        logits = module.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    losses = torch.nn.functional.cross_entropy(
        logits.reshape(-1, 64), batch.labels[:, 1:].reshape(-1), reduction="none"
    ).view(len(rows), -1)
    mask = batch.labels[:, 1:] != -100
    per_token = losses[mask].mean()
    per_batch = torch.stack([losses[i : i + 3][mask[i : i + 3]].mean() for i in range(0, len(rows), 3)]).mean()
    assert abs(per_batch - per_token) > 1e-3, "the batches must weigh differently for the test to mean anything"
    assert metrics["val/nll"] == pytest.approx(float(per_token), rel=1e-6)  # the metric sums in float32


def test_grouped_settings_are_saved_as_plain_values_that_read_back(tmp_path):
    from lightning.pytorch.core.saving import load_hparams_from_yaml, save_hparams_to_yaml

    from lit_dft.module import CausalLMModule
    from lit_dft.optim import OptimizerArgs

    module = CausalLMModule("tiny", optimizer=OptimizerArgs(learning_rate=1e-3))
    assert module.optimizer_args.learning_rate == 1e-3
    save_hparams_to_yaml(tmp_path / "hparams.yaml", module.hparams_initial)  # what loggers write
    assert load_hparams_from_yaml(tmp_path / "hparams.yaml")["optimizer"]["learning_rate"] == 1e-3


class _KLRecorder(L.Callback):
    def __init__(self) -> None:
        self.kl = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.kl.append(float(trainer.callback_metrics["train/kl_ref"]))


def test_asft_reference_is_frozen_outside_the_optimiser_and_anchors_from_zero():
    from lit_dft.module import CausalLMModule

    module = MicroModule(loss="asft", module_class=CausalLMModule)  # AdamW: it keeps state for what it trains
    module.configure_model()
    reference = {n: p.detach().clone() for n, p in module.reference_model.named_parameters()}
    recorder = _KLRecorder()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(module, loader(uneven_rows(), 2), max_steps=3, callbacks=[recorder])
    assert not [w for w in caught if "eval mode" in str(w.message)], "the reference is in eval mode only in its forward"
    trained = {id(p) for group in module.trainer.optimizers[0].param_groups for p in group["params"]}
    assert not any(id(p) in trained for p in module.reference_model.parameters())
    assert all(p.grad is None and not p.requires_grad for p in module.reference_model.parameters())
    assert all(torch.equal(p, reference[n]) for n, p in module.reference_model.named_parameters())
    assert recorder.kl[0] == pytest.approx(0.0, abs=1e-12) and recorder.kl[-1] > 1e-8  # the copy, then the drift


def test_asft_checkpoints_record_the_reference_instead_of_its_weights_and_resume(tmp_path):
    from lit_dft.errors import LitDFTError

    module = MicroModule(loss="asft")
    initial = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    quiet_trainer(max_steps=2, precision="64-true", logger=False).fit(module, loader(uneven_rows(), 2))
    module.trainer.save_checkpoint(tmp_path / "asft.ckpt")
    checkpoint = torch.load(tmp_path / "asft.ckpt", weights_only=True)
    assert not any(key.startswith("reference_model.") for key in checkpoint["state_dict"])
    assert checkpoint["reference"].startswith("the initial weights of")
    resumed = MicroModule(loss="asft")  # the same initial weights: the reference is rebuilt from them
    quiet_trainer(max_steps=3, precision="64-true", logger=False).fit(
        resumed, loader(uneven_rows(), 2), ckpt_path=tmp_path / "asft.ckpt"
    )  # strict loading: the reference's weights are filled in from their source
    assert all(torch.equal(p, initial[n]) for n, p in resumed.reference_model.named_parameters())
    checkpoint["reference"] = "another model"
    with pytest.raises(LitDFTError, match="trained against the reference another model"):
        _configured("asft").on_load_checkpoint(checkpoint)


def _configured(loss: str):
    module = MicroModule(loss=loss)
    module.configure_model()
    return module


def test_a_reference_for_an_objective_without_one_is_refused():
    from lit_dft.errors import LitDFTError

    with pytest.raises(LitDFTError, match="model.reference is used by objectives with a reference"):
        MicroModule(loss="dft", reference="tiny").configure_model()
    with pytest.raises(LitDFTError, match="has a KL term, which needs its whole distribution"):
        MicroModule(loss="asft", reference="data").configure_model()


def test_iw_sft_builds_a_frozen_reference_unless_the_data_gives_its_log_probs():
    with_model, from_data = _configured("iw_sft"), MicroModule(loss="iw_sft", reference="data")
    from_data.configure_model()
    assert with_model.token_loss.reference is with_model.reference_model is not None
    assert not any(p.requires_grad for p in with_model.reference_model.parameters())
    assert from_data.reference_model is None and from_data.token_loss.reference is None


class _HostWaits(TorchDispatchMode):
    """Records the operations that make the host wait for the device on a GPU: reading a value (``.item()``,
    ``float()``, a Python ``if`` on a tensor), a boolean mask (its count), ``nonzero`` and ``bincount``; except
    the one of Hugging Face's mask preparation, which checks every forward whether the batch is packed."""

    WAITING = {"nonzero", "_local_scalar_dense", "bincount", "masked_select", "is_nonzero", "equal"}
    INDEXING = {"index", "index_put", "index_put_", "_index_put_impl_"}

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        masks = name in self.INDEXING and any(getattr(i, "dtype", None) == torch.bool for i in args[1] if i is not None)
        if (name in self.WAITING or masks) and not any(
            frame.filename.endswith("transformers/masking_utils.py") for frame in traceback.extract_stack()
        ):
            self.found.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("chunk", [0, 8], ids=["full_logits", "chunked"])
@pytest.mark.parametrize("loss", ["asft", "deft", "dft", "eaft", "iw_sft"])  # each kind of context: none, the
def test_a_training_step_never_waits_for_the_device(loss, chunk):  # distribution's, top-K, a reference, examples
    """Forward, loss, backward and the histogram's counting of a micro-batch run without one host-device sync
    (the one per optimiser step, for the all-reduced token count, is the step's). A CPU cannot measure a sync,
    so the operations that cause one on a GPU are recorded instead."""
    module = MicroModule(loss=loss, loss_chunk_size=chunk)
    module.configure_model()
    histogram = TokenProbabilityHistogram()
    batch = next(iter(loader(uneven_rows(4), 4)))
    histogram._count(module, module.token_outputs(batch))  # the first call checks the head and builds tables
    with _HostWaits() as waits:
        step = module.training_step(batch, 0)
        step["loss"].backward()
        histogram._count(module, TokenOutputs.of(step))
    assert waits.found == []
    with _HostWaits() as waits:  # the recorder sees what a batch without host-computed positions costs
        module.token_outputs(replace(batch, target_positions=None))
    assert "nonzero" in waits.found


def test_float32_matmul_precision_is_set_for_the_process_when_the_module_is_made():
    before = torch.get_float32_matmul_precision()
    try:
        MicroModule(float32_matmul_precision="medium")
        assert torch.get_float32_matmul_precision() == "medium"
        MicroModule(float32_matmul_precision=None)
        assert torch.get_float32_matmul_precision() == "medium"  # None leaves the process's setting
        MicroModule()
        assert torch.get_float32_matmul_precision() == "high"  # the default: TF32 tensor cores on GPUs
    finally:
        torch.set_float32_matmul_precision(before)


def test_adamw_is_fused_but_under_a_grad_scaler_and_a_resumed_run_steps_with_its_own_choice(tmp_path):
    """Lightning refuses to clip gradients with a GradScaler and a fused optimiser (it unscales inside its step), and
    loading an optimiser's state would bring back the saved run's implementation."""
    from lightning.pytorch.plugins import MixedPrecision

    from lit_dft.module import CausalLMModule

    def fp32_module():
        module = MicroModule(loss="sft", module_class=CausalLMModule)
        module.configure_model()
        module.model.float()
        return module

    scaled = quiet_trainer(plugins=[MixedPrecision("16-mixed", "cpu")], logger=False, max_steps=1, gradient_clip_val=1)
    scaled.fit(fp32_module(), loader(uneven_rows(), 2))
    assert not scaled.optimizers[0].defaults["fused"]
    scaled.save_checkpoint(tmp_path / "fp16.ckpt")
    resumed = quiet_trainer(precision="32-true", logger=False, max_steps=2, gradient_clip_val=1)
    resumed.fit(fp32_module(), loader(uneven_rows(), 2), ckpt_path=tmp_path / "fp16.ckpt")
    assert resumed.global_step == 2 and all(group["fused"] for group in resumed.optimizers[0].param_groups)
