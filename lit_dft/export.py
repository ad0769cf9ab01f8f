"""Export to Hugging Face format, from a live model or from a Lightning checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from lit_dft.checkpoints import load_checkpoint
from lit_dft.errors import LitDFTError
from lit_dft.models import load_tokenizer


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


def plain_model(config_dict: dict, state_dict: dict[str, torch.Tensor]) -> PreTrainedModel:
    """A plain model from a config and weights: also the way out for GGUF-loaded models,
    on which transformers refuses ``save_pretrained``."""
    config_dict = {k: v for k, v in config_dict.items() if k != "quantization_config"}
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=next(iter(state_dict.values())).dtype)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if unexpected or [k for k in missing if k not in tied]:
        raise LitDFTError(
            f"Checkpoint weights do not fit the model config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model


def export_pretrained(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model`` (or its config with ``state_dict``, e.g. gathered from FSDP shards) and ``tokenizer`` so
    ``AutoModelForCausalLM.from_pretrained(out_dir)`` loads them."""
    out = ensure_writable_dir(out_dir)
    plain = plain_model(model.config.to_dict(), model.state_dict() if state_dict is None else state_dict)
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path) -> Path:
    """Export a ``lit-dft fit`` checkpoint; loads it with ``weights_only=True`` (no arbitrary unpickling).

    The checkpoint is read and checked before the output folder is created."""
    checkpoint = load_checkpoint(ckpt_path)
    if "hf_config" not in checkpoint:
        raise LitDFTError(f"{ckpt_path} is not a lit-dft checkpoint (no model config inside)")
    out = ensure_writable_dir(out_dir)
    prefix = "model."
    weights = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    plain = plain_model(checkpoint["hf_config"], weights)
    plain.save_pretrained(out)
    hparams = checkpoint.get("hyper_parameters", {})
    load_tokenizer(hparams["model_name_or_path"], hparams.get("trust_remote_code", False)).save_pretrained(out)
    return out
