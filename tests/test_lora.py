import sys

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from lit_dft.batch import IGNORE_INDEX
from lit_dft.cli import main
from lit_dft.data.collate import PadCollator
from lit_dft.errors import LitDFTError
from lit_dft.export import export_pretrained
from lit_dft.lora import LoraArgs, adapters_disabled, add_adapters
from lit_dft.models import TINY_MODEL, load_model, load_tokenizer
from lit_dft.module import CausalLMModule
from lit_dft.objectives import build_objective
from lit_dft.token_loss import TokenLoss
from tests.conftest import SMOKE, micro_llama
from tests.helpers import MICRO_LORA, MicroModule, loader, quiet_trainer, randomise_adapters, uneven_rows

LORA = MICRO_LORA


def _adapted(lora: LoraArgs = LORA) -> torch.nn.Module:
    """A float64 micro Llama with adapters whose B is random."""
    return randomise_adapters(add_adapters(micro_llama(), lora))


def _batch():
    return PadCollator(pad_token_id=0)(uneven_rows(4))


def _adapter_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad), "the frozen base gets no gradient"
    return {name: p.grad for name, p in model.named_parameters() if p.requires_grad}


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.double().log_softmax(dim=-1)


@pytest.mark.parametrize("loss", ["dft", "asft", "iw_sft"])
def test_chunked_loss_gives_the_adapters_the_gradients_of_full_logits(loss):
    """Chunked (through the peft wrapper's decoder hook) against autograd through an independent full-logits
    loss written here: DFT, plus for ASFT the KL to the base model, which is the model with its adapters off;
    iw-SFT's examples weighted by their likelihood ratio to that base."""
    batch = _batch()
    model = _adapted()
    token_loss = TokenLoss(model, build_objective(loss), 7, (), reference=model)
    out = token_loss(batch)
    out.loss.backward()
    assert token_loss.chunked, "the head is not adapted: the chunked path applies"

    expected_model = _adapted()
    targets = batch.targets
    mask = targets != IGNORE_INDEX
    log_probs = _log_softmax(expected_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits)
    log_probs = log_probs[:, :-1][mask]
    target = log_probs.gather(1, targets[mask].unsqueeze(1)).squeeze(1)
    expected = -(target.exp().detach() * target).sum()
    with torch.no_grad(), adapters_disabled(expected_model):
        base_logits = expected_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    base = _log_softmax(base_logits)[:, :-1][mask]
    if loss == "iw_sft":
        ratio = (target - base.gather(1, targets[mask].unsqueeze(1)).squeeze(1)).detach()
        rows = mask.nonzero()[:, 0]
        weights = torch.stack([ratio[rows == row].mean().exp().clamp(max=16) for row in rows])
        assert float(weights.std()) > 1e-3, "the adapters weight the examples differently"
        expected = -(weights * target).sum()
    if loss == "asft":
        kl = (base.exp() * (base - log_probs)).sum(dim=1)
        assert float(kl.min()) > 1e-4, "the adapters move the model away from its base"
        torch.testing.assert_close(out.target_kl[mask], kl.detach(), rtol=1e-9, atol=1e-12)
        expected = expected + build_objective("asft").kl_weight * kl.sum()
    expected.backward()
    torch.testing.assert_close(out.loss, expected.detach(), rtol=1e-10, atol=0)
    got, want = _adapter_grads(model), _adapter_grads(expected_model)
    assert set(got) == set(want) and any("lora_A" in name for name in got)
    for name in want:
        assert want[name].abs().max() > 0, name
        torch.testing.assert_close(got[name], want[name], rtol=1e-9, atol=1e-12, msg=name)


def test_disabled_adapters_compute_the_base_model():
    base = micro_llama()
    model = _adapted()
    ids = _batch().input_ids
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with adapters_disabled(model):
            without = model(input_ids=ids).logits
        plain = base(input_ids=ids).logits
    torch.testing.assert_close(without, plain, rtol=0, atol=0)
    assert not torch.allclose(adapted, plain)


def test_an_adapted_head_falls_back_to_full_logits_with_a_warning():
    lora = LoraArgs(r=4, dropout=0.0, target_modules=("q_proj", "lm_head"))
    model = randomise_adapters(add_adapters(micro_llama(tied=False), lora))
    token_loss = TokenLoss(model, build_objective("dft"), 7)
    with pytest.warns(UserWarning, match="chunked loss is off.*not a linear layer"):
        token_loss(_batch())
    assert token_loss.chunked is False


def _fit(module: CausalLMModule, **trainer_kwargs) -> None:
    trainer = quiet_trainer(max_steps=2, logger=False, **trainer_kwargs)
    trainer.fit(module, loader(uneven_rows(), batch_size=4))


def test_only_the_adapters_train_and_only_they_are_in_the_optimiser():
    module = MicroModule(module_class=CausalLMModule, lora=LoraArgs(r=4, dropout=0.0), gradient_checkpointing=True)
    module.configure_model()
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    _fit(module)
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    (optimizer,) = module.trainer.optimizers
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in module.parameters() if p.requires_grad}
    for name, param in module.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed == (name in trainable), f"{name}: the adapters learn, the base stays frozen"


def test_gradient_checkpointing_leaves_the_adapter_gradients_unchanged():
    grads = []
    for checkpointing in (False, True):
        module = MicroModule(lora=LORA, loss_chunk_size=7, gradient_checkpointing=checkpointing)
        module.configure_model()
        randomise_adapters(module.model)
        module.token_outputs(_batch()).loss.backward()
        grads.append(_adapter_grads(module.model))
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-10, atol=1e-14, msg=name)


def test_merged_export_reproduces_the_lora_models_logits(tmp_path):
    model = _adapted()
    ids = _batch().input_ids
    with torch.no_grad():
        expected = model.eval()(input_ids=ids).logits
    export_pretrained(model, load_tokenizer(TINY_MODEL), tmp_path / "hf", lora=LORA)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float64)
    assert not any("lora" in name for name in exported.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(exported.eval()(input_ids=ids).logits, expected, rtol=1e-10, atol=1e-10)


def test_lora_settings_are_checked():
    with pytest.raises(LitDFTError, match="model.lora.r must be >= 1"):
        LoraArgs(r=-1)
    with pytest.raises(LitDFTError, match="model.reference cannot be set with LoRA"):
        CausalLMModule(loss="asft", reference=TINY_MODEL, lora=LoraArgs(r=4))
    with pytest.raises(LitDFTError, match="model.lora does not fit LlamaForCausalLM"):
        add_adapters(micro_llama(), LoraArgs(r=4, target_modules=("no_such_layer",)))
    assert LoraArgs(**LoraArgs(r=2, target_modules=["q_proj"]).as_dict()) == LoraArgs(r=2, target_modules=("q_proj",))


def test_missing_peft_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft raises ImportError
    with pytest.raises(LitDFTError, match=r"needs peft: pip install 'lit-dft\[lora\]'"):
        add_adapters(micro_llama(), LORA)


@pytest.mark.slow
def test_lora_fits_resumes_and_exports_from_the_command_line(tmp_path, capsys):
    """The smoke recipe with ``--model.lora.r``: the tiny model's 49,152-token vocabulary takes the chunked path."""
    args = ["fit", "--config", SMOKE, "--model.lora.r=8", f"--trainer.default_root_dir={tmp_path / 'run'}"]
    main([*args, "--trainer.max_steps=4"])
    (last,) = (tmp_path / "run").rglob("last.ckpt")
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 4 and all("lora_" in name for name in checkpoint["state_dict"])
    adapters = sum(value.numel() for value in checkpoint["state_dict"].values())
    assert adapters < 0.05 * sum(p.numel() for p in load_model(TINY_MODEL).parameters()), "a few adapters, no base"
    main([*args, "--trainer.max_steps=10", "--ckpt_path=last"])  # validation and the probe at step 10
    last = max((tmp_path / "run").rglob("last.ckpt"), key=lambda path: path.stat().st_mtime)
    assert torch.load(last, weights_only=True)["global_step"] == 10
    validate = ["validate", "--config", SMOKE, f"--ckpt_path={last}", "--data.limit=12"]
    main([*validate, "--model.lora.r=8", f"--trainer.default_root_dir={tmp_path / 'validate'}"])
    assert "val/nll" in capsys.readouterr().out

    main(["export", str(last), str(tmp_path / "merged")])
    main(["export", str(last), str(tmp_path / "adapter"), "--adapter"])
    assert capsys.readouterr().out.count("Exported to") == 2
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    with_adapter = PeftModel.from_pretrained(load_model(TINY_MODEL), tmp_path / "adapter")
    ids = torch.tensor([[1, 504, 3458, 314, 216, 33, 30, 33, 47, 2]])
    with torch.no_grad():
        logits = merged.eval()(input_ids=ids).logits
        torch.testing.assert_close(logits, with_adapter.eval()(input_ids=ids).logits, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(logits, load_model(TINY_MODEL).eval()(input_ids=ids).logits, atol=1e-4)


@pytest.mark.slow
def test_a_checkpoint_read_with_other_lora_settings_or_another_base_is_one_line(tmp_path, capsys):
    args = ["fit", "--config", SMOKE, "--trainer.max_steps=1", f"--trainer.default_root_dir={tmp_path}"]
    main([*args, "--model.lora.r=4"])
    (last,) = tmp_path.rglob("last.ckpt")
    with pytest.raises(SystemExit):
        main(
            [
                "validate",
                "--config",
                SMOKE,
                "--model.lora.r=8",
                f"--ckpt_path={last}",
                f"--trainer.default_root_dir={tmp_path}",
            ]
        )
    assert "do not fit this model (LoRA r=8)" in capsys.readouterr().err
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["frozen_fingerprint"] += 1.0  # as if trained on other base weights
    torch.save(checkpoint, tmp_path / "other.ckpt")
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path / "other.ckpt"), str(tmp_path / "out")])
    assert "are not those the checkpoint was trained with" in capsys.readouterr().err


def test_adapters_on_a_bf16_base_are_float32():
    module = MicroModule(module_class=CausalLMModule, lora=LORA)
    module.model.to(torch.bfloat16)
    module.configure_model()
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert all(p.dtype == torch.bfloat16 for p in module.parameters() if not p.requires_grad)


def test_adapting_an_embedding_tied_to_the_head_is_refused():
    with pytest.raises(LitDFTError, match="adapts lm_head, which this model ties"):
        add_adapters(micro_llama(tied=True), LoraArgs(r=4, target_modules=("q_proj", "lm_head")))
    with pytest.raises(LitDFTError, match="adapts embed_tokens, which this model ties"):
        add_adapters(micro_llama(tied=True), LoraArgs(r=4, modules_to_save=("embed_tokens",)))


def test_modules_to_save_on_a_bf16_base_train_in_float32():
    model = add_adapters(micro_llama(tied=False).to(torch.bfloat16), LoraArgs(r=4, modules_to_save=("lm_head",)))
    trainable = {name: p.dtype for name, p in model.named_parameters() if p.requires_grad}
    assert any("modules_to_save" in name for name in trainable) and set(trainable.values()) == {torch.float32}


def test_the_reference_forward_leaves_the_adapters_trainable():
    """peft's own disable_adapter() resets requires_grad, which under FSDP2 misses the sharded parameters."""
    model = _adapted()
    frozen_adapter = next(p for name, p in model.named_parameters() if "lora_A" in name).requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    with adapters_disabled(model):
        pass
    assert trainable == [p for p in model.parameters() if p.requires_grad] and not frozen_adapter.requires_grad
