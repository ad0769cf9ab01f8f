"""Watch DFT polarise the token-probability distribution: training-batch histograms and a fixed probe set.

Both callbacks read the module's :class:`~lit_dft.batch.TokenOutputs`, so the training histograms cost no
extra forward pass.
"""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from lit_dft.batch import TokenOutputs
from lit_dft.callbacks.token_stats import PROBE, ProbabilityCounts, StatsLogger, TokenCategories
from lit_dft.errors import LitDFTError


class _CategorisedCounts(Callback):
    """Shared parts: the token-category table (built on first use) and the counts, on the module's device."""

    def __init__(self, categories: TokenCategories | None) -> None:
        self.categories = categories or TokenCategories()
        self._logger = StatsLogger()
        self._table: Tensor | None = None
        self.stats: ProbabilityCounts | None = None

    def _counts(self, pl_module: LightningModule) -> ProbabilityCounts:
        if self.stats is None:
            self.stats = ProbabilityCounts(self.categories.names, pl_module.device)
        return self.stats

    def _count(self, pl_module: LightningModule, outputs: TokenOutputs) -> None:
        if self._table is None:
            self._table = self.categories.table(pl_module.tokenizer).to(pl_module.device)
        targets = outputs.select(outputs.target_ids)
        categories = self._table[targets.clamp(max=len(self._table) - 1)]
        self._counts(pl_module).add(outputs.log_probs, categories, outputs.select(outputs.target_entropy))

    def _log(self, trainer: Trainer, prefix: str, step: int) -> None:
        counts, joint = self.stats.reduced(trainer)
        self._logger.log(trainer, prefix, self.stats, counts, joint, step)
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
        token_outputs = TokenOutputs.of(outputs)
        if logging_step and token_outputs is not None:
            self._count(pl_module, token_outputs)
        window_done = trainer.global_step > self._window_step
        if window_done and logging_step and self.stats is not None:
            self._log(trainer, "train", self._window_step)


class ProbeTokenProbabilities(_CategorisedCounts):
    """The target-token distribution over a fixed probe set: before training (the base model, step 0)
    and after every validation (``probe/target_prob_hist``, bin fractions, per-category splits).

    The probe's examples come from the DataModule's ``probe_dataloader`` (``MathDataModule`` has one),
    which shards them over the ranks so each is measured once. The default probe is a seeded sample of
    training examples, since the paper measures over the training set; ``source: val`` uses validation
    examples instead.

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

    def _measure(self, trainer: Trainer, pl_module: LightningModule) -> None:
        make_loader = getattr(trainer.datamodule, "probe_dataloader", None)
        if make_loader is None:
            raise LitDFTError(
                "ProbeTokenProbabilities needs a DataModule with a probe_dataloader() (MathDataModule has one)"
            )
        for batch in make_loader(self.num_examples, self.source, self.seed, self.batch_size):
            self._count(pl_module, pl_module.measure(batch.to(pl_module.device)))
        self._counts(pl_module)  # a rank with no probe rows still joins the all-reduce
        self._log(trainer, PROBE, trainer.global_step)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step == 0:
            self._measure(trainer, pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._measure(trainer, pl_module)
