"""Export to Hugging Face format, from a live model or from a Lightning checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from lit_dft.checkpoints import FINGERPRINT, check_fingerprint, load_checkpoint
from lit_dft.errors import LitDFTError
from lit_dft.lora import LoraArgs, add_adapters
from lit_dft.models import load_model, load_tokenizer


def ensure_writable_dir(out_dir: str | Path, what: str = "the export") -> Path:
    """Create ``out_dir`` and write a probe file in it, so a bad path fails now, not after hours of training."""
    out = Path(out_dir).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".lit_dft_write_test.{os.getpid()}"  # one per process: ranks may share the folder
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise LitDFTError(f"Cannot write {what} to {out}: {error.strerror or error}") from None
    return out


def plain_model(
    config_dict: dict, state_dict: dict[str, torch.Tensor], lora: LoraArgs | None = None
) -> PreTrainedModel:
    """A plain model from a config and weights, a LoRA model's with its adapters merged into them: also the way
    out for GGUF-loaded models, on which transformers refuses ``save_pretrained``."""
    model = _adapted(config_dict, state_dict, lora)
    return model.merge_and_unload() if lora is not None and lora.enabled else model


def _adapted(config_dict: dict, state_dict: dict[str, torch.Tensor], lora: LoraArgs | None) -> torch.nn.Module:
    """The model of ``config_dict`` (with LoRA's adapters, when ``lora`` is on) holding ``state_dict``."""
    config_dict = {k: v for k, v in config_dict.items() if k != "quantization_config"}
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=next(iter(state_dict.values())).dtype)
    prefix = ""
    if lora is not None and lora.enabled:
        model, prefix = add_adapters(model, lora), "base_model.model."
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    tied = {prefix + key for key in getattr(model, "_tied_weights_keys", None) or []}
    if unexpected or [k for k in missing if k not in tied]:
        raise LitDFTError(
            f"Checkpoint weights do not fit the model config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model


def export_pretrained(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    state_dict: dict[str, torch.Tensor] | None = None,
    lora: LoraArgs | None = None,
) -> Path:
    """Write ``model`` (or its config with ``state_dict``, e.g. gathered from FSDP shards; a LoRA model's with
    its adapters merged) and ``tokenizer`` so ``AutoModelForCausalLM.from_pretrained(out_dir)`` loads them."""
    out = ensure_writable_dir(out_dir)
    weights = model.state_dict() if state_dict is None else state_dict
    plain_model(model.config.to_dict(), weights, lora).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path, adapter_only: bool = False) -> Path:
    """Export a ``lit-dft fit`` checkpoint; loads it with ``weights_only=True`` (no arbitrary unpickling).

    A LoRA checkpoint holds only the adapters: the frozen base is loaded from the model it was trained from
    and checked against the checkpoint's fingerprint. The merged model is written, or with ``adapter_only`` the
    adapters alone, as a peft folder (``PeftModel.from_pretrained(base, out_dir)`` loads it). The checkpoint is
    read and checked before the output folder is created."""
    checkpoint = load_checkpoint(ckpt_path)
    if "hf_config" not in checkpoint:
        raise LitDFTError(f"{ckpt_path} is not a lit-dft checkpoint (no model config inside)")
    hparams = checkpoint.get("hyper_parameters", {})
    lora = LoraArgs(**hparams.get("lora") or {})
    if adapter_only and not lora.enabled:
        raise LitDFTError(f"{ckpt_path} has no LoRA adapters to export alone (it was trained with model.lora.r 0)")
    prefix = "model."
    weights = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    name, trust_remote_code = hparams["model_name_or_path"], hparams.get("trust_remote_code", False)
    if lora.enabled:
        weights = _with_frozen_base(weights, name, hparams.get("dtype"), trust_remote_code, lora, checkpoint)
    out = ensure_writable_dir(out_dir)
    if adapter_only:
        adapted = _adapted(checkpoint["hf_config"], weights, lora)
        adapted.peft_config["default"].base_model_name_or_path = name
        adapted.save_pretrained(out, save_embedding_layers=False)  # "auto" would ask the hub about the base
    else:
        plain_model(checkpoint["hf_config"], weights, lora).save_pretrained(out)
    load_tokenizer(name, trust_remote_code).save_pretrained(out)
    return out


def _with_frozen_base(
    adapters: dict[str, torch.Tensor],
    name: str,
    dtype: str | None,
    trust_remote_code: bool,
    lora: LoraArgs,
    checkpoint: dict,
) -> dict[str, torch.Tensor]:
    """A LoRA model's full weights: the checkpoint's trained ones over the base's, loaded from ``name``."""
    base = add_adapters(load_model(name, dtype, trust_remote_code, checkpoint["hf_config"].get("vocab_size")), lora)
    weights = base.state_dict()
    unknown = sorted(adapters.keys() - weights.keys())
    if unknown:
        raise LitDFTError(f"Checkpoint weights do not fit {name!r} with its LoRA settings (unexpected {unknown[:3]})")
    frozen = [key for key, p in base.named_parameters(remove_duplicate=False) if key not in adapters]
    check_fingerprint(checkpoint.get(FINGERPRINT), [weights[key] for key in frozen], name)
    return weights | adapters
