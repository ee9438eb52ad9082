"""Samplers whose ``state_dict`` pins the exact position in an epoch, for bit-exact mid-epoch resume.

* :class:`IndexBatchSampler`: a minimal shuffled, rank-sharded batch sampler over ``range(n)``.
* :class:`TrackedSampler`: wraps any sampler (e.g. lhotse's ``DynamicBucketingSampler``) and
  remembers its state after each batch it yields. A ``DataLoader`` with workers pulls batches from
  the sampler ahead of the training loop (prefetch), so the inner sampler's own ``state_dict`` is
  ahead of what the loop has consumed; the trainer asks the tracker for the state after exactly the
  number of batches it has consumed.
"""
from __future__ import annotations

import collections
import copy
from typing import Any, Iterator

import torch

__all__ = ["IndexBatchSampler", "TrackedSampler"]


class IndexBatchSampler:
    """Batches of indices into a dataset of ``n`` items; rank ``r`` of ``w`` gets every w-th batch.

    The order of an epoch depends only on ``(seed, epoch)``; the state is ``{epoch, position}``.
    ``drop_last`` is implied for the trailing batches that cannot be shared evenly among ranks.
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if n <= 0 or batch_size <= 0:
            raise ValueError(f"IndexBatchSampler: n={n} and batch_size={batch_size} must be > 0")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.position = 0  # batches of this rank already yielded in this epoch
        self._restored = False

    def _batches(self) -> list[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        allb = [order[i:i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        usable = len(allb) // self.world_size * self.world_size
        return allb[self.rank:usable:self.world_size]

    def __len__(self) -> int:
        return len(self._batches())

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._restored = False
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        if not self._restored:
            self.position = 0
        self._restored = False
        batches = self._batches()
        while self.position < len(batches):
            b = batches[self.position]
            self.position += 1
            yield b

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "world_size": self.world_size}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        if sd["world_size"] != self.world_size or sd["seed"] != self.seed:
            raise ValueError(f"IndexBatchSampler: state was saved with world_size={sd['world_size']}, "
                             f"seed={sd['seed']}; this sampler has {self.world_size}, {self.seed}")
        self.epoch, self.position = sd["epoch"], sd["position"]
        self._restored = True


class TrackedSampler:
    """Delegates to ``inner`` and records ``inner.state_dict()`` after every batch it yields.

    ``state_after(k)`` is the inner state after the k-th batch of the current epoch; the trainer
    saves that for the k batches it consumed, however far a prefetching ``DataLoader`` has read
    ahead. Pass the tracker (not ``inner``) to the ``DataLoader`` and to the trainer. The sampler
    must be iterated in the training process (a map-style dataset with ``sampler=``), which is how
    lhotse's samplers are used.
    """

    def __init__(self, inner: Any, max_ahead: int = 1024) -> None:
        if not hasattr(inner, "state_dict"):
            raise TypeError(f"TrackedSampler: {type(inner).__name__} has no state_dict()")
        self.inner = inner
        self._states: collections.deque[tuple[int, dict]] = collections.deque(maxlen=max_ahead)
        self._count = 0  # batches yielded in the current epoch (including before a restore)

    def __iter__(self) -> Iterator[Any]:
        self._states.clear()
        it = iter(self.inner)
        # the state before the first new batch: the start of the epoch or the restored position
        self._states.append((self._count, copy.deepcopy(self.inner.state_dict())))
        for batch in it:
            self._count += 1
            self._states.append((self._count, copy.deepcopy(self.inner.state_dict())))
            yield batch

    def __len__(self) -> int:
        return len(self.inner)

    def set_epoch(self, epoch: int) -> None:
        self._count = 0
        self.inner.set_epoch(epoch)

    def state_after(self, consumed: int) -> dict:
        """Inner state after ``consumed`` batches of the current epoch were consumed."""
        for k, st in self._states:
            if k == consumed:
                return copy.deepcopy(st)
        raise RuntimeError(f"TrackedSampler: no recorded state after batch {consumed} (recorded: "
                           f"{[k for k, _ in self._states][:1]}..{[k for k, _ in self._states][-1:]}); "
                           "the DataLoader reads further ahead than max_ahead batches")

    def state_dict(self) -> dict:
        return {"inner": copy.deepcopy(self.inner.state_dict()), "count": self._count}

    def load_state_dict(self, sd: dict) -> None:
        self.inner.load_state_dict(copy.deepcopy(sd["inner"]))
        self._count = sd["count"]
        self._states.clear()

    def tracked_state_dict(self, consumed: int) -> dict:
        """What the trainer checkpoints: the inner state after exactly ``consumed`` batches."""
        return {"inner": self.state_after(consumed), "count": consumed}
