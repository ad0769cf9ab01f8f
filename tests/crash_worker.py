"""Trains the micro model with a checkpoint every 2 steps and dies (SIGKILL) half-way through writing the second.

Run by ``test_resume.py`` as ``python -m tests.crash_worker DIR``; with ``--resume CKPT`` it resumes
from CKPT and trains to the end instead.
"""

import os
import signal
import sys

import fsspec.implementations.local as local_fs
from lightning.pytorch.callbacks import ModelCheckpoint

from tests.helpers import MicroModule, loader, quiet_trainer, uneven_rows

MAX_STEPS = 6


def _die_in_second_write() -> None:
    """Patch the file object Lightning's atomic save writes through: the second checkpoint is cut off."""
    write = local_fs.LocalFileOpener.write
    calls = []

    def half_then_kill(self, data):
        calls.append(len(data))
        if len(calls) == 2:
            write(self, data[: len(data) // 2])
            self.f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return write(self, data)

    local_fs.LocalFileOpener.write = half_then_kill


def main(directory: str, resume: str | None) -> None:
    if resume is None:
        _die_in_second_write()
    module = MicroModule()
    module.configure_model()
    checkpoints = ModelCheckpoint(dirpath=directory, every_n_train_steps=2)
    trainer = quiet_trainer(
        precision="64-true", max_steps=MAX_STEPS, logger=False, enable_checkpointing=True, callbacks=[checkpoints]
    )
    trainer.fit(module, loader(uneven_rows(16), batch_size=2), ckpt_path=resume)
    print(f"global_step={trainer.global_step}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[3] if len(sys.argv) > 3 and sys.argv[2] == "--resume" else None)
