"""Lightning's progress bars, counting optimiser steps in runs bounded by ``max_steps``.

Lightning's bars show ``Epoch 0/-2`` when only ``max_steps`` bounds a run (``max_epochs`` is then -1) and
the logger's version as a metric (``v_num: 0.000``). These show ``step: 12/20`` and no version instead.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar


def _step_bounded(trainer: Trainer) -> bool:
    return trainer.max_steps > 0 and trainer.max_epochs in (None, -1)


class _Steps:
    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        if _step_bounded(trainer) and trainer.state.fn == "fit":
            items = {"step": f"{trainer.global_step}/{trainer.max_steps}"} | items
        return items


class StepTQDMProgressBar(_Steps, TQDMProgressBar):
    """Lightning's ``TQDMProgressBar``, counting steps (see the module's docstring)."""


class StepRichProgressBar(_Steps, RichProgressBar):
    """Lightning's ``RichProgressBar``, counting steps (see the module's docstring)."""

    def _get_train_description(self, current_epoch: int) -> str:
        if not _step_bounded(self.trainer):
            return super()._get_train_description(current_epoch)
        return f"{f'Epoch {current_epoch}':{len(self.validation_description)}}"


def step_progress_bar(default: Any) -> Any:
    """The step-counting version of one of Lightning's default bars, or ``default`` itself (a bar you chose)."""
    replacements = {TQDMProgressBar: StepTQDMProgressBar, RichProgressBar: StepRichProgressBar}
    replacement = replacements.get(type(default))
    return replacement() if replacement is not None else default
