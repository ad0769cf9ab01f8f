"""Fixed-bin counts of target-token probabilities, split by token category, summed across ranks.

Counting into fixed bins on each rank and all-reducing the counts gives the histogram of the global
batch without gathering per-token values; TensorBoard takes such raw histograms directly.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from lit_dft.errors import LitDFTError

PROBE = "probe"
"""Prefix of the probe set's tags (``probe/prob_bin/...``)."""

# The paper's bins (section 4.3.1): [0, 1e-4, 1e-3, 1e-2, 0.1, 0.2, ..., 0.9, 1.0].
PAPER_BINS = (0.0, 1e-4, 1e-3, 1e-2) + tuple(round(0.1 * i, 1) for i in range(1, 11))
PROB_EDGES = torch.linspace(0.0, 1.0, 51, dtype=torch.float64)  # histogram of p
LOG10_EDGES = torch.linspace(-8.0, 0.0, 81, dtype=torch.float64)  # histogram of log10 p; lower ones: the first bin
JOINT_PROB_EDGES = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)  # the (p, entropy) grid: p in tenths...
JOINT_ENTROPY_EDGES = torch.linspace(0.0, 8.0, 17, dtype=torch.float64)  # ...entropy in half nats (higher: last bin)
# "Confident conflicts": target tokens the model finds unlikely (p < 0.1) where it is confident of something
# else (entropy < 1 nat), the first p bin and the first two entropy bins of the grid.
CONFLICT_BINS = (slice(0, 1), slice(0, 2))

FUNCTION_WORDS = (
    "a an the and or but if of to in on at by for with from as is are was were be been being this that these those "
    "it its we us our you your i he she they them their there here then than so thus hence since because let now "
    "which what when where who whom how not no do does did can will would should could may might must have has had "
    "into onto over under each all any both some such also only very just"
).split()

DEFAULT_RULES: dict[str, str] = {
    "number": r"^\s*\d+\s*$",
    "math": r"^\s*(\\[A-Za-z]+|[=+\-*/^_{}()\[\]<>|$\\%!]+)\s*$",
    "function_word": r"(?i)^\s*(" + "|".join(FUNCTION_WORDS) + r")\s*$",
    "word": r"^\s*[A-Za-z]+\s*$",
    "punctuation": r"^[\s\W_]*$",
}


@dataclass
class TokenCategories:
    """Assigns every vocabulary entry a category by the first regular expression its text matches.

    ``rules`` is an ordered mapping ``name -> regex`` over the decoded token; tokens that match none
    are ``other``, so the categories partition the vocabulary. Override or extend in YAML.
    """

    rules: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_RULES))

    @property
    def names(self) -> list[str]:
        return list(self.rules) + ["other"]

    def table(self, tokenizer: PreTrainedTokenizerBase) -> Tensor:
        """Category index of every token id."""
        patterns = [_compile(name, rule) for name, rule in self.rules.items()]
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        categories = [next((k for k, p in enumerate(patterns) if p.search(text)), len(patterns)) for text in texts]
        return torch.tensor(categories, dtype=torch.long)


def _compile(name: str, rule: str) -> re.Pattern:
    try:
        return re.compile(rule)
    except re.error as error:
        raise LitDFTError(f"Token category {name!r}: {rule!r} is not a regular expression ({error})") from None


def _bucket(values: Tensor, inner_edges: Tensor) -> Tensor:
    """Index of the bin of each value, given the edges between bins; values outside go to the first or last bin."""
    return torch.bucketize(values, inner_edges, right=True)


def _count_into(counts: Tensor, flat_bins: Tensor) -> None:
    """Add one to ``counts`` (viewed flat) at each bin index: ``bincount`` would, but on a GPU it waits for the
    device to learn the largest index."""
    counts.view(-1).index_add_(0, flat_bins, torch.ones(flat_bins.shape, dtype=counts.dtype, device=counts.device))


class ProbabilityCounts:
    """Per-category counts over three binnings (p, log10 p, the paper's bins), plus sums of p; and the joint
    counts of (p, entropy of the next-token distribution) over all categories."""

    def __init__(self, categories: list[str], device: torch.device) -> None:
        self.categories = categories
        self.sizes = (len(PROB_EDGES) - 1, len(LOG10_EDGES) - 1, len(PAPER_BINS) - 1, 1)
        self.counts = torch.zeros(len(categories), sum(self.sizes), dtype=torch.float64, device=device)
        self.joint = torch.zeros(
            len(JOINT_PROB_EDGES) - 1, len(JOINT_ENTROPY_EDGES) - 1, dtype=torch.float64, device=device
        )
        # on the device once: a copy from the host at every step would wait for the device
        edges = (
            PROB_EDGES,
            LOG10_EDGES,
            torch.tensor(PAPER_BINS, dtype=torch.float64),
            JOINT_PROB_EDGES,
            JOINT_ENTROPY_EDGES,
        )
        self._inner_edges = [e[1:-1].to(device, torch.float64) for e in edges]
        self._offsets = torch.tensor([0, self.sizes[0], self.sizes[0] + self.sizes[1]], device=device)

    def add(self, log_probs: Tensor, category: Tensor, entropy: Tensor) -> None:
        prob_edges, log10_edges, paper_edges, joint_prob_edges, joint_entropy_edges = self._inner_edges
        log_probs = log_probs.detach().double()
        probs = log_probs.exp()
        joint = _bucket(probs, joint_prob_edges) * self.joint.shape[1]
        joint += _bucket(entropy.detach().double(), joint_entropy_edges)
        _count_into(self.joint, joint)
        bins = (
            torch.stack(
                [
                    _bucket(probs, prob_edges),
                    _bucket(log_probs / math.log(10), log10_edges),
                    _bucket(probs, paper_edges),
                ]
            )
            + self._offsets[:, None]
        )
        width = self.counts.shape[1]
        flat = (category[None, :] * width + bins).flatten()
        _count_into(self.counts, flat)
        self.counts[:, -1] += torch.zeros(len(self.categories), dtype=torch.float64, device=probs.device).index_add_(
            0, category, probs
        )

    def reduced(self, trainer: Trainer) -> tuple[Tensor, Tensor]:
        """The counts and the joint counts summed over all ranks (one collective: call it on every rank)."""
        total = trainer.strategy.reduce(torch.cat([self.counts.flatten(), self.joint.flatten()]), reduce_op="sum")
        counts, joint = total.split([self.counts.numel(), self.joint.numel()])
        return counts.view_as(self.counts), joint.view_as(self.joint)

    def reset(self) -> None:
        self.counts.zero_()
        self.joint.zero_()

    def split(self, counts: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(p histogram, log10 p histogram, paper-bin counts, sum of p) for one category row or the total."""
        return tuple(torch.split(counts, self.sizes, dim=-1))


def paper_bin_labels() -> list[str]:
    return [f"{i:02d}_{lo:g}-{hi:g}" for i, (lo, hi) in enumerate(zip(PAPER_BINS[:-1], PAPER_BINS[1:]))]


def prob_bin_tag(prefix: str, label: str = "") -> str:
    """The tag of the fraction of tokens in one paper bin (``label``), or the tags' common start without one."""
    return f"{prefix}/prob_bin/{label}"


def category_tag(prefix: str, category: str) -> str:
    """The start of a category's tags: a TensorBoard section of their own (``vocab_category/probe/number/...``),
    which TensorBoard lists after the headline sections (``probe/``, ``train/``), whose histograms then open the
    HISTOGRAMS tab (the first two sections are the ones it expands)."""
    return f"vocab_category/{prefix}/{category}/"


class StatsLogger:
    """Writes counts as TensorBoard histograms and scalars; warns once when no TensorBoard logger is set."""

    def __init__(self) -> None:
        self._warned = False

    def log(
        self, trainer: Trainer, prefix: str, stats: ProbabilityCounts, counts: Tensor, joint: Tensor, step: int
    ) -> None:
        if not trainer.is_global_zero:
            return
        tensorboards = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not tensorboards and not self._warned:
            rank_zero_warn("Token-probability histograms need a TensorBoardLogger; logging only the bin fractions.")
            self._warned = True
        scalars: dict[str, float] = {}
        rows = {"": counts.sum(0)} | {category_tag(prefix, name): counts[i] for i, name in enumerate(stats.categories)}
        for name, row in rows.items():
            prob_hist, log_hist, paper, prob_sum = stats.split(row)
            total = float(prob_hist.sum())
            if total == 0:
                continue
            start = name or f"{prefix}/"
            scalars[f"{start}mean_prob"] = float(prob_sum) / total
            scalars[f"{start}tokens"] = total
            if name == "":
                scalars.update(
                    {prob_bin_tag(prefix, label): float(c) / total for label, c in zip(paper_bin_labels(), paper)}
                )
            for tensorboard in tensorboards:
                _add_histogram(tensorboard, f"{start}target_prob_hist", prob_hist, PROB_EDGES, step)
                _add_histogram(tensorboard, f"{start}target_log10_prob_hist", log_hist, LOG10_EDGES, step)
        if joint.sum() > 0:
            scalars[f"{prefix}/confident_conflicts"] = float(joint[CONFLICT_BINS].sum() / joint.sum())
            for tensorboard in tensorboards:
                tensorboard.experiment.add_figure(f"{prefix}/prob_entropy", _joint_figure(joint), global_step=step)
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)


def _joint_figure(joint: Tensor):
    """A heat map of the (p, entropy) counts, log-scaled, the confident-conflict corner outlined."""
    from matplotlib.figure import Figure  # no pyplot: a notebook's backend stays as it is
    from matplotlib.patches import Rectangle

    figure = Figure(figsize=(6, 4))
    axis = figure.add_subplot()
    extent = (0.0, float(JOINT_ENTROPY_EDGES[-1]), 0.0, 1.0)
    image = axis.imshow(torch.log10(1 + joint.cpu()).numpy(), origin="lower", aspect="auto", extent=extent)
    axis.add_patch(Rectangle((0, 0), 1.0, 0.1, fill=False, edgecolor="red"))
    axis.set_xlabel("entropy of the next-token distribution (nats; the last column: above)")
    axis.set_ylabel("target-token probability")
    figure.colorbar(image, label="log10(1 + tokens)")
    figure.tight_layout()
    return figure


def _add_histogram(logger: TensorBoardLogger, tag: str, counts: Tensor, edges: Tensor, step: int) -> None:
    counts = counts.cpu().double()
    centres = ((edges[:-1] + edges[1:]) / 2).double()
    nonzero = torch.nonzero(counts).flatten()
    logger.experiment.add_histogram_raw(
        tag,
        min=float(edges[nonzero[0]]),
        max=float(edges[nonzero[-1] + 1]),
        num=int(counts.sum()),
        sum=float((counts * centres).sum()),
        sum_squares=float((counts * centres**2).sum()),
        bucket_limits=edges[1:].tolist(),
        bucket_counts=counts.tolist(),
        global_step=step,
    )
