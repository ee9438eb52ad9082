"""The trainer's entry point: cuts → DDP-aware, resumable loader of padded waveform batches."""
from __future__ import annotations

import copy
import itertools
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler, SimpleCutSampler
from lhotse.dataset.sampling.base import CutSampler

from distill.data.augment import WaveformHook
from distill.data.dataset import AsrDataset
from distill.data.tokenizer import Tokenizer


class AsrDataLoader:
    """A torch DataLoader over a lhotse sampler whose state resumes exactly.

    lhotse's sampler state counts the batches the *sampler* produced, which runs ahead of training
    when worker processes prefetch. This wrapper counts the batches actually handed out, so that
    ``load_state_dict(state_dict())`` continues with the next unseen batch for any ``num_workers``.
    Call :meth:`set_epoch` at the start of each epoch (it reshuffles).
    """

    def __init__(self, loader: torch.utils.data.DataLoader) -> None:
        self.loader = loader
        self.sampler: CutSampler = loader.sampler  # type: ignore[assignment]
        self.dataset: AsrDataset = loader.dataset  # type: ignore[assignment]
        self._consumed = 0
        self._restored = False

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.sampler.epoch:
            self._restored = False
        self.sampler.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def __iter__(self) -> Iterator[dict]:
        if not self._restored:
            self._consumed = 0
        self._restored = False
        for batch in self.loader:
            self._consumed += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """Sampler state with the current epoch's batch count set to the batches consumed so far."""
        sd = copy.deepcopy(self.sampler.state_dict())
        diag = sd["diagnostics"]
        stats = diag["stats_per_epoch"].setdefault(diag["current_epoch"], {"epoch": diag["current_epoch"]})
        stats.update(kept_batches=self._consumed, discarded_batches=0)
        return sd

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        sd = copy.deepcopy(sd)
        diag = sd["diagnostics"]
        self._consumed = int(diag["stats_per_epoch"].get(diag["current_epoch"], {}).get("kept_batches", 0))
        self.sampler.load_state_dict(sd)
        self._restored = True


def make_dataloader(
    cuts: CutSet | str | Path,
    tokenizer: Optional[Tokenizer],
    max_duration: float,
    shuffle: bool = True,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    seed: int = 0,
    *,
    num_buckets: int = 10,
    num_workers: int = 0,
    speed_perturb: Optional[Sequence[float]] = None,
    hooks: Sequence[WaveformHook] = (),
    drop_last: bool = False,
    max_cuts: Optional[int] = None,
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
        max_duration=max_duration, max_cuts=max_cuts, shuffle=shuffle, drop_last=drop_last,
        world_size=world_size, rank=rank, seed=seed,
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
    loader = torch.utils.data.DataLoader(
        dataset, sampler=sampler, batch_size=None, num_workers=num_workers,
        persistent_workers=False,
    )
    return AsrDataLoader(loader)
