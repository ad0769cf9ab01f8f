"""Export the fine-tuned model to Hugging Face format when ``fit`` ends."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from lit_dft.export import ensure_writable_dir, export_pretrained
from lit_dft.strategies import full_state_dict


class ExportOnFitEnd(Callback):
    """Writes model and tokenizer to ``dirpath`` (loadable with ``from_pretrained``) after training; a LoRA model
    with its adapters merged into the weights.

    Args:
        dirpath: output folder; checked for writability when training starts, not after hours of it.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            ensure_writable_dir(self.dirpath)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        weights = full_state_dict(pl_module.model)  # every rank: gathering FSDP shards is a collective
        if trainer.is_global_zero:
            out = export_pretrained(pl_module.model, pl_module.tokenizer, self.dirpath, weights, pl_module.lora)
            rank_zero_info(f"Exported the model to {out}")
