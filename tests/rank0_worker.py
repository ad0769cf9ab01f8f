"""One FSDP2 step of the tiny model on 2 CPU processes, loaded on rank 0 or on every rank; run by ``test_fsdp.py``
as ``python -m tests.rank0_worker OUT LOSS LOAD_ON_RANK0 [lora]`` (``OUT smollm2-135m-instruct``: loading only).

Each rank writes OUT/rank{R}.pt: whether it built the model on the meta device; after setup, the full weights
gathered from the shards (rank 0), its own non-persistent buffers and whether each tied head is still its
embedding; after the step, the loss and the full weights (rank 0); then the full weights of a new module
validated from the step's checkpoint (rank 0).
"""

import sys
from pathlib import Path

import lightning.pytorch as L
import torch
from torch.distributed.tensor import DTensor

from lit_dft.lora import LoraArgs
from lit_dft.models import EMBEDDED_MODEL, TINY_MODEL
from lit_dft.strategies import FSDP2Strategy, full_state_dict, top_level_models
from tests.helpers import SGDModule, loader, quiet_trainer, uneven_rows


def non_persistent_buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.{name}".lstrip("."): buffer.clone()
        for prefix, sub in module.named_modules()
        for name, buffer in sub.named_buffers(recurse=False)
        if name in sub._non_persistent_buffers_set
    }


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


class _Module(SGDModule):
    """Notes whether ``configure_model`` built the model on the meta device (rank-0 loading, ranks but 0)."""

    def configure_model(self) -> None:
        super().configure_model()
        self.built_on_meta = any(t.is_meta for t in self.parameters())


class _Recorder(L.Callback):
    """What each rank holds after the strategy's setup and after the step."""

    def __init__(self) -> None:
        self.record = {}

    def on_fit_start(self, trainer, pl_module):  # after the strategy's setup
        models = top_level_models(pl_module)
        self.record["tied"] = [
            model.get_output_embeddings().weight is model.get_input_embeddings().weight
            and torch.equal(_local(model.get_output_embeddings().weight), _local(model.get_input_embeddings().weight))
            for model in models
        ]
        self.record["built_on_meta"] = pl_module.built_on_meta
        self.record["buffers"] = non_persistent_buffers(pl_module)
        self.record["before"] = full_state_dict(pl_module)  # a collective: rank 0 gets it

    def on_train_end(self, trainer, pl_module):
        self.record["after"] = full_state_dict(pl_module)
        self.record["loss"] = trainer.callback_metrics.get("train/loss")


def main(out: Path, loss: str, load_on_rank0: bool, lora: bool) -> None:
    L.seed_everything(0)  # LoRA's A matrices: drawn alike on both ranks (today's path) and on rank 0 (rank-0 path)
    lora_args = LoraArgs(r=4, alpha=8, dropout=0.0) if lora else LoraArgs()
    module = _Module(TINY_MODEL, loss=loss, loss_chunk_size=0, lora=lora_args)
    recorder = _Recorder()
    trainer = quiet_trainer(
        devices=2, strategy=FSDP2Strategy(load_on_rank0=load_on_rank0), max_steps=1, logger=False, callbacks=[recorder]
    )
    trainer.fit(module, loader(uneven_rows(), batch_size=4))
    trainer.save_checkpoint(out / "fsdp.ckpt")
    # `lit-dft validate --ckpt_path` (and resuming): the checkpoint is read after setup, over the broadcast weights
    module = _Module(TINY_MODEL, loss=loss, loss_chunk_size=0, lora=lora_args)
    validator = quiet_trainer(devices=2, strategy=FSDP2Strategy(load_on_rank0=load_on_rank0), logger=False)
    validator.validate(module, loader(uneven_rows(), batch_size=4), ckpt_path=out / "fsdp.ckpt")
    recorder.record["validated"] = full_state_dict(module)
    torch.save(recorder.record, out / f"rank{trainer.global_rank}.pt")


def load_only(out: Path, model_name: str) -> None:
    """Rank-0 loading of ``model_name`` (the 135M GGUF model), up to the first step."""
    module = _Module(model_name, loss="sft")
    recorder = _Recorder()
    trainer = quiet_trainer(devices=2, strategy=FSDP2Strategy(), max_steps=0, logger=False, callbacks=[recorder])
    trainer.fit(module, loader(uneven_rows(), batch_size=4))
    torch.save(recorder.record, out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    if sys.argv[2:] == [EMBEDDED_MODEL]:
        load_only(Path(sys.argv[1]), EMBEDDED_MODEL)
    else:
        main(Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "True", sys.argv[4:] == ["lora"])
