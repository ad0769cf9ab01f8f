import signal

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_dft.data import MathDataModule
from lit_dft.lora import LoraArgs
from lit_dft.models import TINY_MODEL
from lit_dft.module import CausalLMModule
from lit_dft.optim import OptimizerArgs
from tests.helpers import run_worker

STEPS, STOP_AT = 6, 3  # 32 training rows / batch 4 = 8 batches per epoch: step 3 is mid-epoch


class Recorder(L.Callback):
    """Records each step's loss and, optionally, stops the run after ``stop_at`` steps (a crash stand-in)."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at = stop_at
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[trainer.global_step] = float(outputs["loss"])
        if trainer.global_step == self.stop_at:
            trainer.should_stop = True


def _fit(root, recorder, ckpt_path=None, lora=LoraArgs(), validate=False):
    L.seed_everything(42)
    module = CausalLMModule(TINY_MODEL, loss="dft", optimizer=OptimizerArgs(learning_rate=3e-3), lora=lora)
    data = MathDataModule(
        tokenizer_name_or_path=TINY_MODEL, limit=40, val_split=8, max_length=256, group_by_length=True
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=STEPS,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=root, every_n_train_steps=STOP_AT, save_top_k=-1), recorder],
        limit_val_batches=1 if validate else 0,  # validation draws from torch's random state, between two batches
        val_check_interval=STOP_AT,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return module


# LoRA's dropout (0.05) draws random numbers: the resumed run must draw the uninterrupted run's, validation or not
@pytest.mark.slow
@pytest.mark.parametrize("lora, validate", [(LoraArgs(), False), (LoraArgs(r=4), True)], ids=["full", "lora"])
def test_resumed_run_matches_uninterrupted_run(tmp_path, lora, validate):
    straight = Recorder()
    reference = _fit(tmp_path / "straight", straight, lora=lora, validate=validate)
    _fit(tmp_path / "interrupted", Recorder(stop_at=STOP_AT), lora=lora, validate=validate)
    (checkpoint,) = (tmp_path / "interrupted").glob(f"*step={STOP_AT}.ckpt")
    if lora.enabled:  # the adapters alone: the frozen base is rebuilt from its source
        saved = torch.load(checkpoint, weights_only=True)["state_dict"]
        assert saved and all("lora_" in name for name in saved)
    resumed_recorder = Recorder()
    resumed = _fit(tmp_path / "resumed", resumed_recorder, ckpt_path=str(checkpoint), lora=lora, validate=validate)
    assert sorted(resumed_recorder.losses) == list(range(STOP_AT + 1, STEPS + 1))
    for step, loss in resumed_recorder.losses.items():
        assert loss == straight.losses[step], f"step {step}: same batch, same weights, same loss"
    for (name, a), (_, b) in zip(reference.named_parameters(), resumed.named_parameters()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_crash_while_writing_a_checkpoint_leaves_the_previous_one_usable(tmp_path):
    """SIGKILL half-way through writing the step-4 checkpoint: the step-2 one survives, loads and resumes."""

    def worker(*args):
        return run_worker("tests.crash_worker", str(tmp_path), *args)

    crashed = worker()
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    (survivor,) = tmp_path.glob("*.ckpt")  # no partial step-4 file beside it
    assert survivor.name == "epoch=0-step=2.ckpt"
    checkpoint = torch.load(survivor, weights_only=True)
    assert checkpoint["global_step"] == 2

    resumed = worker("--resume", str(survivor))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "global_step=6" in resumed.stdout
    assert torch.load(tmp_path / "epoch=0-step=6.ckpt", weights_only=True)["global_step"] == 6
