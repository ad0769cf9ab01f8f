"""Turn ``lit-dft predict``'s generations into a training data set: the paper's offline setting (rejection sampling)."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from lit_dft.batch import Prediction
from lit_dft.errors import LitDFTError


def sample_rows(
    predictions: list[Prediction], keep: Literal["correct", "all"], deduplicate: bool
) -> tuple[list[Prediction], Counter]:
    """The predictions to train on, in problem and sample order, and how many of each kind were left out."""
    counts: Counter = Counter(samples=len(predictions), problems=len({(p.benchmark, p.id) for p in predictions}))
    counts["correct"] = sum(p.correct for p in predictions)
    seen: set[tuple[str, str, str]] = set()
    kept = []
    for p in sorted(predictions, key=lambda p: (p.benchmark, p.id, p.sample)):
        response = p.generation.strip()
        if not response:
            counts["dropped: empty"] += 1
        elif keep == "correct" and not p.correct:
            counts["dropped: incorrect"] += 1
        elif deduplicate and (p.benchmark, p.id, response) in seen:
            counts["dropped: duplicate"] += 1
        else:
            seen.add((p.benchmark, p.id, response))
            kept.append(p)
    counts["written"] = len(kept)
    counts["problems written"] = len({(p.benchmark, p.id) for p in kept})
    return kept, counts


class SampleWriter(Callback):
    """Writes ``predict``'s answers as a JSON Lines data set that ``MathDataModule(preset="sampled")`` trains on.

    One line per kept sample: ``question``, ``response``, ``gold`` (list), ``extracted``, ``correct``, ``benchmark``,
    ``id``, ``sample`` (index among the problem's k), ``model``, ``checkpoint`` and ``seed`` (``seed_everything``).
    With several processes every rank sends its answers to rank 0, which writes the one file; each problem was
    answered on one rank only.

    Args:
        path: output file; ``None`` writes ``samples.jsonl`` in the run's log folder.
        keep: ``correct`` keeps the answers the checker accepts (rejection sampling), ``all`` keeps every answer.
        deduplicate: drop a response identical (up to surrounding whitespace) to an earlier one to the same problem.
    """

    def __init__(
        self, path: str | None = None, keep: Literal["correct", "all"] = "correct", deduplicate: bool = True
    ) -> None:
        if keep not in ("correct", "all"):
            raise LitDFTError(f"SampleWriter keep must be 'correct' or 'all', got {keep!r}")
        self.path = path
        self.keep = keep
        self.deduplicate = deduplicate
        self._predictions: list[Prediction] = []
        self.counts: Counter = Counter()
        """What the last write counted: samples, problems, correct, dropped (empty, incorrect, duplicate), written."""

    def on_predict_batch_end(self, trainer, pl_module, outputs: Any, batch, batch_idx, dataloader_idx=0) -> None:
        if isinstance(outputs, list):
            self._predictions.extend(p for p in outputs if isinstance(p, Prediction))

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        predictions = self._predictions  # kept until written: a failure on the way leaves them to on_exception
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            gathered: list[list[Prediction] | None] | None = (
                [None] * trainer.world_size if dist.get_rank() == 0 else None
            )
            dist.gather_object(predictions, gathered, dst=0)  # a collective: every rank takes part
            predictions = [p for rank in gathered or [] for p in rank]
        path = Path(self.path or Path(trainer.log_dir or trainer.default_root_dir) / "samples.jsonl")  # every rank
        if trainer.is_global_zero:
            rank_zero_info(self._write(path, predictions, trainer, pl_module))
            for stale in path.parent.glob(f"{path.stem}.partial.rank*{path.suffix}"):  # from an earlier, stopped run
                stale.unlink()
        self._predictions = []

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Stopped early (SIGTERM, Ctrl-C, an error): each rank writes the answers it has so far, filtered the same
        way, to ``<stem>.partial.rank<N>.jsonl`` beside ``path`` (``default_root_dir`` when None), without a
        collective (another rank may be gone), so hours of sampling are not lost."""
        predictions, self._predictions = self._predictions, []
        if not predictions:
            return
        path = Path(self.path or Path(trainer.default_root_dir) / "samples.jsonl")
        path = path.with_name(f"{path.stem}.partial.rank{trainer.global_rank}{path.suffix}")
        try:
            print(self._write(path, predictions, trainer, pl_module), file=sys.stderr)
        except Exception as error:  # noqa: BLE001 - the run's own error is the one to report, and Lightning's exit
            print(f"SampleWriter could not keep the answers so far in {path}: {error}", file=sys.stderr)

    def _write(self, path: Path, predictions: list[Prediction], trainer: Trainer, pl_module: LightningModule) -> str:
        kept, self.counts = sample_rows(predictions, self.keep, self.deduplicate)
        source = {
            "model": pl_module.hparams.get("model_name_or_path"),
            "checkpoint": trainer.ckpt_path,
            "seed": int(os.environ["PL_GLOBAL_SEED"]) if "PL_GLOBAL_SEED" in os.environ else None,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as handle:
            for p in kept:
                row = {"question": p.question, "response": p.generation.strip(), "gold": p.gold}
                row |= {"extracted": p.extracted, "correct": p.correct, "benchmark": p.benchmark, "id": p.id}
                handle.write(json.dumps(row | {"sample": p.sample} | source, ensure_ascii=False) + "\n")
        counts = ", ".join(f"{name} {n}" for name, n in self.counts.items())
        return f"Wrote {len(kept)} samples ({self.keep}) to {path}: {counts}"
