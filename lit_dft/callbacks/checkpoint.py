"""Lightning's ModelCheckpoint, with ``last.ckpt`` holding the final state however ``fit`` ends."""

from __future__ import annotations

from typing import Literal

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException


class ModelCheckpoint(LightningModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (every argument is its own), with other defaults and two changes.

    Defaults: ``save_last=True`` and ``save_on_exception=True``, so ``last.ckpt`` is written on SIGTERM
    from a scheduler, Ctrl-C or an error, and ``--ckpt_path last`` resumes from it. ``save_last: link``
    makes ``last.ckpt`` a link to the newest checkpoint instead of a second copy (for big models).

    Changes: when fit ends between two saves (``max_steps`` not a multiple of the validation or save
    interval), the final state is saved too (Lightning writes ``last.ckpt`` at the end only if it never
    wrote one). On several processes only SIGTERM saves on the way out: an error or Ctrl-C may reach the
    ranks at different points, and saving is a collective the others would never join (the job would hang).
    ``lit-dft fit`` uses this class when a config names no checkpoint callback.
    """

    def __init__(
        self, *args, save_last: bool | Literal["link"] | None = True, save_on_exception: bool = True, **kwargs
    ) -> None:
        super().__init__(*args, save_last=save_last, save_on_exception=save_on_exception, **kwargs)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            save_last, self.save_last = self.save_last, True  # a real file: no checkpoint of this step to link to
            try:
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            finally:
                self.save_last = save_last
        super().on_train_end(trainer, pl_module)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if trainer.world_size == 1 or isinstance(exception, SIGTERMException):
            super().on_exception(trainer, pl_module, exception)
