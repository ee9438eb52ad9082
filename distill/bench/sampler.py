"""The training-data step of the scale benchmark (``python -m distill.bin.bench_data``): open stage 1's
training cuts lazily as the trainer does and check the DDP split of the batch stream. Run as a child
process of the benchmark, as the stages are: it imports torch and lhotse, which the driver must not.
"""

from __future__ import annotations

import time
from typing import Any

from distill.data import make_dataloader

__all__ = ["check_sampler"]


def check_sampler(
    cuts_path: str, max_duration: float = 600.0, world_size: int = 4, k: int = 8, load_audio: bool = True
) -> dict[str, Any]:
    """Open the training cuts as the trainer does and check the DDP split over the first ``k`` batches.

    Each rank's first ``k`` batches must be disjoint from the other ranks' and, together, equal the
    first ``k * world_size`` batches of the batch stream all ranks draw from (a rank takes every
    ``world_size``-th batch of it). With ``load_audio``, also times one batch of audio through the
    loader (decoding from the shared Opus files).
    """
    t0 = time.perf_counter()
    per_rank: list[list[list[str]]] = []
    first_batch_s = 0.0
    for r in range(world_size):  # each rank's loader, as that rank's trainer builds it
        it = iter(
            make_dataloader(cuts_path, None, max_duration, shuffle=True, rank=r, world_size=world_size, seed=3).sampler
        )
        per_rank.append([[c.id for c in next(it)]])
        if r == 0:
            first_batch_s = time.perf_counter() - t0
        per_rank[-1] += [[c.id for c in next(it)] for _ in range(k - 1)]
    sampler_s = time.perf_counter() - t0
    # the shared stream: what every rank's sampler draws before taking its own share
    ref = make_dataloader(cuts_path, None, max_duration, shuffle=True, rank=0, world_size=world_size, seed=3).sampler
    iter(ref)
    stream = [[c.id for c in ref._next_batch()] for _ in range(k * world_size)]
    ids = [i for r in per_rank for b in r for i in b]
    disjoint = len(ids) == len(set(ids))
    complete = sorted(ids) == sorted(i for b in stream for i in b) and all(
        per_rank[r][j] == stream[j * world_size + r] for r in range(world_size) for j in range(k)
    )
    out = {
        "world_size": world_size,
        "batches_per_rank": k,
        "cuts_checked": len(ids),
        "disjoint": disjoint,
        "complete": complete,
        "first_batch_s": round(first_batch_s, 2),
        "sampler_s": round(sampler_s, 2),
    }
    if load_audio:
        t1 = time.perf_counter()
        dl = make_dataloader(
            cuts_path, None, min(max_duration, 120.0), shuffle=True, rank=0, world_size=world_size, seed=3
        )
        batch = next(iter(dl))
        out.update(audio_batch_s=round(time.perf_counter() - t1, 2), audio_batch=list(batch["audio"].shape))
    return out
