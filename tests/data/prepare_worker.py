"""One training step on 2 CPU processes with ``MathDataModule``; run by ``test_prepare_data.py`` as
``python -m tests.data.prepare_worker OUT DATA`` with ``HF_DATASETS_CACHE`` set to a fresh folder.

Lightning's launcher starts the second process by running this command again. Each rank writes to OUT/rank{r}.json
the data module hooks Lightning called on it, how many rows it tokenised in each, and the token ids it ended with.
"""

import json
import sys
from pathlib import Path

import lightning.pytorch as L
import torch

import lit_dft.data.datamodule as datamodule
from lit_dft.data import MathDataModule
from lit_dft.models import TINY_MODEL

_encode = datamodule._encode_rows
_hooks: list[str] = []
_tokenised = {"prepare_data": 0, "setup": 0}


def _counting_encode(batch, **kwargs):
    _tokenised[_hooks[-1]] += len(batch["question"])
    return _encode(batch, **kwargs)


class _Recorded(MathDataModule):
    def prepare_data(self) -> None:
        _hooks.append("prepare_data")
        super().prepare_data()

    def setup(self, stage: str | None = None) -> None:
        _hooks.append("setup")
        super().setup(stage)


class _Sink(L.LightningModule):
    """One weight and a loss that needs the batch: enough for DDP to run a step."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        return self.weight * batch.num_tokens

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def main(out: Path, data: str) -> None:
    datamodule._encode_rows = _counting_encode
    dm = _Recorded(preset="gsm8k", path=data, tokenizer_name_or_path=TINY_MODEL, val_split=4, batch_size=2)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(_Sink(), dm)
    record = {"hooks": _hooks, "tokenised": _tokenised} | {
        name: list(rows["input_ids"]) for name, rows in (("train", dm.train_set), ("val", dm.val_set))
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
