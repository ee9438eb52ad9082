"""The trainer's entry point: cuts → DDP-aware, resumable loader of padded waveform batches."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler, SimpleCutSampler
from lhotse.dataset.sampling.base import CutSampler

from distill.data.augment import WaveformHook
from distill.data.dataset import AsrDataset
from distill.data.tokenizer import Tokenizer


class _SamplerView:
    """The sampler as the DataLoader sees it: while :meth:`AsrDataLoader.__iter__` builds the torch
    iterator, every ``iter()`` (torch calls it twice for worker processes) returns the one iterator
    that was already advanced to the resume position."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.current: Iterator[Any] | None = None

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[Any]:
        return self.current if self.current is not None else iter(self.inner)


class AsrDataLoader:
    """A torch DataLoader over a batch sampler (lhotse's, or any with ``set_epoch``) that resumes exactly.

    The position in an epoch is the number of batches this loader has *handed out*, however far
    prefetching workers have read ahead: ``state_dict()`` is ``{"epoch", "count"}``, and after
    ``load_state_dict`` the next ``iter()`` replays the sampler (batch metadata only, no audio) past
    ``count`` batches, so the remainder equals that of an uninterrupted epoch for any
    ``num_workers``. The sampler's order must be a function of its seed and ``set_epoch`` (lhotse's
    samplers with an integer seed are); its own ``state_dict`` is not used.

    ``iter()`` builds the torch iterator at once (which draws the workers' base seed from torch's
    RNG), so a trainer that restores the RNG state right after ``iter()`` continues the random
    stream of the interrupted run. Call :meth:`set_epoch` at the start of each epoch (it reshuffles;
    setting the epoch a state was loaded for keeps the restored position).
    """

    def __init__(self, dataset: Any, sampler: Any, *, num_workers: int = 0, **loader_kwargs: Any) -> None:
        if not hasattr(sampler, "set_epoch"):
            raise TypeError(f"AsrDataLoader: the sampler ({type(sampler).__name__}) has no set_epoch()")
        self.dataset = dataset
        self.sampler = sampler
        self._view = _SamplerView(sampler)
        self.loader = torch.utils.data.DataLoader(
            dataset, sampler=self._view, batch_size=None, num_workers=num_workers, **loader_kwargs
        )
        self._epoch = int(getattr(sampler, "epoch", 0))
        self._consumed = 0  # batches of this epoch handed out
        self._skip = 0  # restored position, applied by the next iter()

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def num_workers(self) -> int:
        return self.loader.num_workers

    def __len__(self) -> int:
        return len(self.loader)  # TypeError for samplers without a length (lhotse's dynamic bucketing)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self._epoch:
            self._skip = 0  # another epoch than the restored one starts from its beginning
        self._epoch = epoch
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        skip, self._skip = self._skip, 0
        it = iter(self.sampler)
        for done in range(skip):
            if next(it, None) is None:
                raise RuntimeError(
                    f"AsrDataLoader: the restored position is batch {skip} of epoch {self._epoch}, but the "
                    f"sampler yields only {done} batches in that epoch (did the training data, max_duration, "
                    "the seed or the number of processes change since the state was saved?)"
                )
        self._view.current = it
        try:
            batches = iter(self.loader)
        finally:
            self._view.current = None
        self._consumed = skip
        return _Batches(self, batches)

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "count"}``: the batches of the current epoch handed out so far."""
        return {"epoch": self._epoch, "count": self._consumed}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Continue, at the next ``iter()``, after ``count`` batches of ``epoch``.

        Also reads the states that earlier versions of the trainer wrote (``{"inner": <lhotse
        sampler state>, "count"}``), so that their checkpoints resume.
        """
        try:
            epoch = int(sd["epoch"] if "epoch" in sd else sd["inner"]["epoch"])
            count = int(sd["count"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                "AsrDataLoader.load_state_dict: expected {'epoch': int, 'count': int}, got "
                f"{sorted(sd) if isinstance(sd, dict) else type(sd).__name__}"
            ) from None
        if count < 0:
            raise ValueError(f"AsrDataLoader.load_state_dict: count must be >= 0, got {count}")
        self.set_epoch(epoch)
        self._skip = self._consumed = count


class _Batches:
    """One pass over an :class:`AsrDataLoader`: the torch iterator, counting the batches handed out."""

    def __init__(self, owner: AsrDataLoader, it: Iterator[Any]) -> None:
        self._owner, self._it = owner, it

    def __iter__(self) -> _Batches:
        return self

    def __next__(self) -> Any:
        batch = next(self._it)
        self._owner._consumed += 1
        return batch


def make_dataloader(
    cuts: CutSet | str | Path,
    tokenizer: Tokenizer | None,
    max_duration: float,
    shuffle: bool = True,
    rank: int | None = None,
    world_size: int | None = None,
    seed: int = 0,
    *,
    num_buckets: int = 10,
    num_workers: int = 0,
    speed_perturb: Sequence[float] | None = None,
    hooks: Sequence[WaveformHook] = (),
    drop_last: bool = False,
    max_cuts: int | None = None,
    buffer_size: int = 20000,
    return_cuts: bool = False,
) -> AsrDataLoader:
    """Batches of at most ``max_duration`` seconds of audio, bucketed by duration.

    ``cuts`` is a CutSet or a ``.jsonl.gz`` path (read lazily). ``rank``/``world_size`` default to
    the environment (``RANK``/``WORLD_SIZE``) or an initialised ``torch.distributed``; each rank gets
    disjoint batches, the same number per rank (at the very end lhotse pads a rank's last batch with
    copies of other cuts, their ids suffixed ``_dupN``, so that ranks stay in lockstep).
    ``speed_perturb`` (e.g. ``(0.9, 1.0, 1.1)``) perturbs each cut by a random factor; ``hooks``
    transform each collated waveform batch. Use ``shuffle=False`` for dev/test.
    """
    if isinstance(cuts, (str, Path)):
        cuts = CutSet.from_jsonl_lazy(cuts)
    head = sum(1 for _ in itertools.islice(iter(cuts), max(num_buckets, 4)))
    if head == 0:
        raise ValueError("make_dataloader: the cut set is empty")
    common = dict(
        max_duration=max_duration,
        max_cuts=max_cuts,
        shuffle=shuffle,
        drop_last=drop_last,
        world_size=world_size,
        rank=rank,
        seed=seed,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*eagerly read CutSet.*")
        if head < 4:
            # lhotse's bucketing needs a few cuts to estimate bucket bins
            sampler: CutSampler = SimpleCutSampler(cuts, **common)
        else:
            sampler = DynamicBucketingSampler(
                cuts, num_buckets=max(2, min(num_buckets, head)), buffer_size=buffer_size, **common
            )
    dataset = AsrDataset(tokenizer, speed_perturb=speed_perturb, hooks=hooks, seed=seed, return_cuts=return_cuts)
    return AsrDataLoader(dataset, sampler, num_workers=num_workers, persistent_workers=False)
