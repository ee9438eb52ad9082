"""A minimal batch sampler over ``range(n)`` for datasets that are not lhotse cut sets.

Resuming mid-epoch is the loader's job (:class:`distill.data.AsrDataLoader` counts the batches it
hands out and replays the sampler on resume), so a sampler only has to make its order a function of
``(seed, epoch)``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = ["IndexBatchSampler"]


class IndexBatchSampler:
    """Batches of indices into a dataset of ``n`` items; rank ``r`` of ``w`` gets every w-th batch.

    The order of an epoch depends only on ``(seed, epoch)``. ``drop_last`` is implied for the
    trailing batches that cannot be shared evenly among ranks.
    """

    def __init__(
        self, n: int, batch_size: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        if n <= 0 or batch_size <= 0:
            raise ValueError(f"IndexBatchSampler: n={n} and batch_size={batch_size} must be > 0")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def _batches(self) -> list[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        allb = [order[i : i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        usable = len(allb) // self.world_size * self.world_size
        return allb[self.rank : usable : self.world_size]

    def __len__(self) -> int:
        return len(self._batches())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())
