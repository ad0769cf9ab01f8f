"""The training order: a seeded shuffle that depends only on (seed, epoch), optionally grouped by length.

Because the order is a function of the epoch (which Lightning sets through ``set_epoch``, also through
its distributed wrapper, and :class:`EpochResumingLoader` restores from a checkpoint), a run resumed
mid-epoch replays exactly the order the interrupted run had.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader


class EpochShuffleSampler(Sampler[int]):
    """Random order per epoch; with ``lengths``, neighbours have similar lengths so batches pad less.

    Grouping shuffles, cuts the order into mega-batches of ``batch_size * group_size`` rows and sorts each
    by length. Under DDP, Lightning's ``DistributedSamplerWrapper`` deals positions out round-robin, so each
    rank still sees grouped lengths.
    """

    def __init__(
        self, size: int, seed: int = 0, lengths: Sequence[int] | None = None, batch_size: int = 1, group_size: int = 50
    ) -> None:
        self.size = size
        self.seed = seed
        self.lengths = list(lengths) if lengths is not None else None
        self.mega_batch = max(1, batch_size * group_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        if self.lengths is None:
            yield from order
            return
        for start in range(0, len(order), self.mega_batch):
            yield from sorted(order[start : start + self.mega_batch], key=lambda i: -self.lengths[i])


class EpochResumingLoader(StatefulDataLoader):
    """torchdata's ``StatefulDataLoader``, whose state also holds its sampler's epoch.

    Loading a state re-creates the sampler's order and skips the batches already served, before Lightning
    sets the epoch for the resumed run: without the epoch a run resumed in its second epoch or later would
    serve the rest of the first epoch's order."""

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"epoch": getattr(self.sampler, "epoch", None)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        epoch = state_dict.pop("epoch", None)
        if epoch is not None and callable(getattr(self.sampler, "set_epoch", None)):
            self.sampler.set_epoch(epoch)  # our sampler, or Lightning's distributed wrapper, which passes it on
        super().load_state_dict(state_dict)


class PaddedShards(DistributedSampler):
    """Deals positions round-robin to the ranks in order, every rank getting the same number; the positions
    past the data set's end are padding, which :class:`CountedRows` serves as rows marked not counted.

    Lightning's own sampler pads by repeating rows (AIME24's 30 problems on 8 GPUs become 32, two counted
    twice). Equal counts still matter: sharded generation needs every rank in every forward.
    """

    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=False)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))


class CountedRows(Dataset):
    """Rows with a ``counted`` flag: True for the real ones, False for the padding positions past the end
    (which repeat rows from the start; collators answer them but score or train nothing on them)."""

    def __init__(self, rows: Sequence[dict]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return {**self.rows[index % len(self.rows)], "counted": index < len(self.rows)}
