"""LoRA through peft: which weights train, the frozen base as a free reference, and the merged or adapter export.

A LoRA model is a ``peft.PeftModel`` around the Hugging Face model: only the adapters (and any
``modules_to_save``) require gradients, so AdamW, checkpoints and FSDP2's gradient reduction see only them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

from lit_dft.errors import LitDFTError


@dataclass(frozen=True)
class LoraArgs:
    """Low-rank adapters (LoRA) on a frozen base model; ``r: 0`` trains every weight instead."""

    r: int = 0
    """Rank of each adapter; 0 turns LoRA off (full fine-tuning)."""
    alpha: float = 32.0
    """Scaling numerator: an adapter adds ``(alpha / r) * B @ A`` to its layer's weight."""
    dropout: float = 0.05
    """Dropout on the adapters' inputs during training."""
    target_modules: str | tuple[str, ...] = "all-linear"
    """Layers that get adapters: names such as ``[q_proj, v_proj]``, or ``all-linear`` (every linear layer but the
    output head)."""
    modules_to_save: tuple[str, ...] | None = None
    """Modules trained in full besides the adapters, e.g. ``[embed_tokens, lm_head]`` after adding tokens."""

    def __post_init__(self) -> None:
        if self.r < 0:
            raise LitDFTError(f"model.lora.r must be >= 1 (or 0 for full fine-tuning), got {self.r}")
        if not 0 <= self.dropout < 1:
            raise LitDFTError(f"model.lora.dropout must be in [0, 1), got {self.dropout}")
        # lists from YAML or a checkpoint's hyperparameters: tuples keep the dataclass hashable and frozen
        if isinstance(self.target_modules, list):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if isinstance(self.modules_to_save, list):
            object.__setattr__(self, "modules_to_save", tuple(self.modules_to_save))

    @property
    def enabled(self) -> bool:
        return self.r > 0

    def as_dict(self) -> dict[str, Any]:
        """Plain values for hyperparameters and checkpoints (lists, not tuples: ``hparams.yaml`` reads back)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise LitDFTError("LoRA (model.lora.r > 0) needs peft: pip install 'lit-dft[lora]'") from None
    return peft


def add_adapters(model: PreTrainedModel, args: LoraArgs) -> torch.nn.Module:
    """``model`` wrapped by peft with fresh adapters (``B = 0``: the wrapped model computes what ``model`` did);
    everything trained is float32 even on a half-precision base, so AdamW updates it exactly."""
    peft = _peft()
    targets = args.target_modules if isinstance(args.target_modules, str) else list(args.target_modules)
    adapted_names = ({targets} if isinstance(targets, str) else set(targets)) | set(args.modules_to_save or ())
    tied = {"lm_head", "embed_tokens"} & adapted_names
    if tied and getattr(model.config.get_text_config(), "tie_word_embeddings", False):
        raise LitDFTError(
            f"model.lora adapts {', '.join(sorted(tied))}, which this model ties to its other embedding matrix: "
            "training and merging one would change both. Leave them out of target_modules and modules_to_save."
        )
    config = peft.LoraConfig(
        r=args.r,
        lora_alpha=args.alpha,
        lora_dropout=args.dropout,
        target_modules=targets,
        modules_to_save=list(args.modules_to_save) if args.modules_to_save else None,
        task_type="CAUSAL_LM",
    )
    try:
        adapted = peft.get_peft_model(model, config, autocast_adapter_dtype=True)
    except ValueError as error:  # e.g. target modules not found in the model
        raise LitDFTError(f"model.lora does not fit {type(model).__name__}: {str(error).splitlines()[0]}") from None
    for param in adapted.parameters():  # peft upcasts the adapters, not the copies of modules_to_save
        if param.requires_grad and param.dtype in (torch.bfloat16, torch.float16):
            param.data = param.data.float()
    return adapted


def is_lora(model: torch.nn.Module) -> bool:
    return type(model).__module__.startswith("peft.")


def base_model(model: torch.nn.Module) -> PreTrainedModel:
    """The Hugging Face model itself: inside a peft wrapper, or ``model``."""
    return model.get_base_model() if is_lora(model) else model


def decoder(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose output's first element is the final hidden states (e.g. ``LlamaModel``)."""
    return base_model(model).base_model


@contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[None]:
    """``model`` computes as its frozen base (adapters and ``modules_to_save`` off) inside this block.

    Flips each adapter layer's switch and nothing else. peft's ``disable_adapter()`` also resets the adapters'
    ``requires_grad``, which under FSDP2 reaches the gathered copies rather than the sharded parameters, and
    scans the whole model's status on every call."""
    layers = [m for m in model.modules() if hasattr(m, "_disable_adapters")]  # adapter layers, modules_to_save
    was = [m._disable_adapters for m in layers]
    for layer in layers:
        layer._disable_adapters = True
    try:
        yield
    finally:
        for layer, disabled in zip(layers, was):
            layer._disable_adapters = disabled
