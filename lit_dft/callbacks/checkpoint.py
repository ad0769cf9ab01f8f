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
    wrote one). On several processes an error other than SIGTERM or Ctrl-C saves nothing: it may have hit
    one rank only, and saving is a collective the other ranks would never join (the job would hang).
    ``lit-dft fit`` uses this class when a config names no checkpoint callback.
    """

    def __init__(
        self, *args, save_last: bool | Literal["link"] | None = True, save_on_exception: bool = True, **kwargs
    ) -> None:
        super().__init__(*args, save_last=save_last, save_on_exception=save_on_exception, **kwargs)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            candidates = self._monitor_candidates(trainer)
            if self.save_last == "link":  # the link needs a checkpoint of this step to point to
                self._save_checkpoint(trainer, self.format_checkpoint_name(candidates))
            self._save_last_checkpoint(trainer, candidates)
        super().on_train_end(trainer, pl_module)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if trainer.world_size == 1 or isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            super().on_exception(trainer, pl_module, exception)
