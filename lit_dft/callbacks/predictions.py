"""Write every generated answer of ``lit-dft test``/``predict`` to a JSON Lines file."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from lit_dft.batch import Prediction


class PredictionWriter(Callback):
    """One line per sample: benchmark, problem id, gold, generation, extracted answer, correct, reason.

    Args:
        path: output file; ``None`` writes ``predictions.jsonl`` in the run's log folder (beside its events and
            ``config.yaml``). With several processes each rank writes ``<stem>.rank<N><suffix>``.
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._records: list[Prediction] = []

    def _collect(self, outputs: Any) -> None:
        if isinstance(outputs, list):
            self._records.extend(r for r in outputs if isinstance(r, Prediction))

    def _write(self, trainer: Trainer) -> None:
        path = Path(self.path or Path(trainer.log_dir or trainer.default_root_dir) / "predictions.jsonl")
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(asdict(record), ensure_ascii=False) + "\n" for record in self._records)
        rank_zero_info(f"Wrote {len(self._records)} predictions to {path}")
        self._records = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(outputs)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(outputs)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer)

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer)
