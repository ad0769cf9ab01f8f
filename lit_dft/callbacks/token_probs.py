"""Watch DFT polarise the token-probability distribution: training-batch histograms and a fixed probe set.

Both callbacks read the module's per-token outputs (``target_log_probs``, ``target_mask``), so the
training histograms cost no extra forward pass.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from lit_dft.callbacks.token_stats import ProbabilityCounts, StatsLogger, TokenCategories
from lit_dft.data.collate import PadCollator
from lit_dft.errors import LitDFTError


class _CategorisedCounts(Callback):
    """Shared parts: the token-category table (built on first use) and the counts, on the module's device."""

    def __init__(self, categories: TokenCategories | None) -> None:
        self.categories = categories or TokenCategories()
        self._logger = StatsLogger()
        self._table: Tensor | None = None
        self.stats: ProbabilityCounts | None = None

    def _count(self, pl_module: LightningModule, log_probs: Tensor, mask: Tensor, labels: Tensor) -> None:
        if self._table is None:
            self._table = self.categories.table(pl_module.tokenizer).to(pl_module.device)
        if self.stats is None:
            self.stats = ProbabilityCounts(self.categories.names, pl_module.device)
        targets = labels[:, 1:][mask]
        self.stats.add(log_probs[mask], self._table[targets.clamp(max=len(self._table) - 1)])

    def _log(self, trainer: Trainer, prefix: str, step: int) -> None:
        counts = self.stats.reduced(trainer)
        self._logger.log(trainer, prefix, self.stats, counts, step)
        self.stats.reset()


class TokenProbabilityHistogram(_CategorisedCounts):
    """Every ``every_n_steps`` optimiser steps, histograms of the global training batch's target-token
    probabilities (``train/target_prob_hist``, ``train/target_log10_prob_hist``, per category too),
    the fraction of tokens in each of the paper's bins and the mean probability.

    Args:
        every_n_steps: log the batch of every N-th optimiser step (step 0 included).
        categories: token category rules; default numbers, math, function words, words, punctuation.
    """

    def __init__(self, every_n_steps: int = 10, categories: TokenCategories | None = None) -> None:
        super().__init__(categories)
        self.every_n_steps = every_n_steps
        self._window_step = 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._window_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        logging_step = self._window_step % self.every_n_steps == 0
        if logging_step and isinstance(outputs, dict) and "target_log_probs" in outputs:
            self._count(pl_module, outputs["target_log_probs"], outputs["target_mask"], batch["labels"])
        window_done = trainer.global_step > self._window_step
        if window_done and logging_step and self.stats is not None:
            self._log(trainer, "train", self._window_step)


class ProbeTokenProbabilities(_CategorisedCounts):
    """The target-token distribution over a fixed probe set: before training (the base model, step 0)
    and after every validation (``probe/target_prob_hist``, bin fractions, per-category splits).

    The default probe is a seeded sample of training examples, since the paper measures over the
    training set; ``source: val`` uses validation examples instead.

    Args:
        num_examples: probe size.
        source: ``train`` or ``val`` examples of the DataModule.
        batch_size: examples per forward pass.
        seed: seed of the sample, so runs with different objectives share a probe.
    """

    def __init__(
        self,
        num_examples: int = 64,
        source: Literal["train", "val"] = "train",
        batch_size: int = 8,
        seed: int = 0,
        categories: TokenCategories | None = None,
    ) -> None:
        super().__init__(categories)
        self.num_examples = num_examples
        self.source = source
        self.batch_size = batch_size
        self.seed = seed
        self._rows: list[dict] | None = None

    def _probe_rows(self, trainer: Trainer) -> list[dict]:
        if self._rows is None:
            dataset = getattr(trainer.datamodule, f"{self.source}_set", None)
            if dataset is None or len(dataset) == 0:
                raise LitDFTError(f"ProbeTokenProbabilities: the DataModule has no {self.source} examples")
            generator = torch.Generator().manual_seed(self.seed)
            indices = torch.randperm(len(dataset), generator=generator)[: self.num_examples].tolist()
            self._rows = [{k: dataset[i][k] for k in ("input_ids", "prompt_length")} for i in sorted(indices)]
        return self._rows

    @torch.no_grad()
    def _measure(self, trainer: Trainer, pl_module: LightningModule) -> None:
        probe = self._probe_rows(trainer)
        rows = probe[trainer.global_rank :: trainer.world_size]
        collate = PadCollator(pl_module.tokenizer.pad_token_id)
        was_training = pl_module.training
        pl_module.eval()
        # Every rank runs the same number of forwards (a sharded model needs all ranks in each one);
        # a rank whose share has run out measures the first probe row and does not count it. The forwards
        # run in the trainer's precision context (autocast under bf16-mixed), as validation does.
        for start in range(0, math.ceil(len(probe) / trainer.world_size), self.batch_size):
            share = rows[start : start + self.batch_size]
            batch = {k: v.to(pl_module.device) for k, v in collate(share or probe[:1]).items()}
            with trainer.precision_plugin.val_step_context():
                out = pl_module.token_losses(batch)
            if share:
                self._count(pl_module, out["target_log_probs"], out["target_mask"], batch["labels"])
        if self.stats is None:  # this rank had no rows: still join the all-reduce
            self.stats = ProbabilityCounts(self.categories.names, pl_module.device)
        pl_module.train(was_training)
        self._log(trainer, "probe", trainer.global_step)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step == 0:
            self._measure(trainer, pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._measure(trainer, pl_module)
