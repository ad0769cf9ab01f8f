"""A length-grouped sampler: random order, but neighbours have similar lengths, so batches pad less."""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class LengthGroupedSampler(Sampler[int]):
    """Shuffles, cuts the order into mega-batches of ``batch_size * group_size`` rows, sorts each by length.

    Under DDP, Lightning wraps it in a ``DistributedSamplerWrapper`` that deals positions out round-robin,
    so each rank still sees grouped lengths. The order changes every epoch and is fixed by ``seed``.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, group_size: int = 50) -> None:
        self.lengths = list(lengths)
        self.mega_batch = max(1, batch_size * group_size)
        self.seed = seed
        self.passes = 0  # Lightning's wrapper hides set_epoch, so each pass (epoch) counts itself

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.passes)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        self.passes += 1
        for start in range(0, len(order), self.mega_batch):
            chunk = order[start : start + self.mega_batch]
            yield from sorted(chunk, key=lambda i: -self.lengths[i])
