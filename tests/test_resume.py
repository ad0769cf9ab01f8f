import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_dft.data import MathDataModule
from lit_dft.models import TINY_MODEL
from lit_dft.module import CausalLMModule

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


def _fit(root, recorder, ckpt_path=None):
    L.seed_everything(42)
    module = CausalLMModule(TINY_MODEL, loss="dft", learning_rate=3e-3)
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
        limit_val_batches=0,
    )
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return module


def test_resumed_run_matches_uninterrupted_run(tmp_path):
    straight = Recorder()
    reference = _fit(tmp_path / "straight", straight)
    _fit(tmp_path / "interrupted", Recorder(stop_at=STOP_AT))
    (checkpoint,) = (tmp_path / "interrupted").glob(f"*step={STOP_AT}.ckpt")
    resumed_recorder = Recorder()
    resumed = _fit(tmp_path / "resumed", resumed_recorder, ckpt_path=str(checkpoint))
    assert sorted(resumed_recorder.losses) == list(range(STOP_AT + 1, STEPS + 1))
    for step, loss in resumed_recorder.losses.items():
        assert loss == straight.losses[step], f"step {step}: same batch, same weights, same loss"
    for (name, a), (_, b) in zip(reference.named_parameters(), resumed.named_parameters()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
