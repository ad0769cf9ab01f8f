"""One FSDP2 training step of the micro model on 2 CPU processes; run by ``test_fsdp.py`` as ``python -m tests.fsdp_worker OUT LOSS [lora]``.

Lightning's launcher starts the second process by running this command again. Rank 0 writes the
full weights before and after the step, a full checkpoint and (``ExportOnFitEnd``) a Hugging Face folder under OUT.
"""

import sys
from pathlib import Path

import lightning.pytorch as L
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from lit_dft.callbacks import ExportOnFitEnd
from lit_dft.strategies import FSDP2Strategy
from tests.helpers import MICRO_LORA, MicroModule, loader, quiet_trainer, randomise_adapters, uneven_rows


class _Recorder(L.Callback):
    """Gathers the full weights before the first step and after the last one."""

    def __init__(self) -> None:
        self.weights = {}

    def _gather(self, name: str, pl_module: L.LightningModule) -> None:
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        self.weights[name] = get_model_state_dict(pl_module, options=options)  # a collective: every rank calls it

    def on_train_start(self, trainer, pl_module):
        self._gather("before", pl_module)

    def on_train_end(self, trainer, pl_module):
        self._gather("after", pl_module)


def main(out: Path, loss: str, lora: bool) -> None:
    module = MicroModule(loss=loss, loss_chunk_size=7, **({"lora": MICRO_LORA} if lora else {}))
    module.configure_model()
    if lora:
        randomise_adapters(module.model)
    module.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    recorder = _Recorder()
    export = ExportOnFitEnd(str(out / "hf"))
    trainer = quiet_trainer(
        devices=2,
        strategy=FSDP2Strategy(),
        max_steps=1,
        accumulate_grad_batches=2,
        logger=False,
        callbacks=[recorder, export],
    )
    trainer.fit(module, loader(uneven_rows(), batch_size=2))
    loops = (trainer.fit_loop.epoch_loop.val_loop, trainer.validate_loop, trainer.test_loop, trainer.predict_loop)
    assert not any(loop.inference_mode for loop in loops), "FSDP2 evaluates under no_grad (single-process FSDP2 fails"
    # on inference tensors, and Lightning would use inference mode on NCCL)
    trainer.save_checkpoint(out / "fsdp.ckpt")
    if trainer.global_rank == 0:
        torch.save(recorder.weights, out / "weights.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:] == ["lora"])
