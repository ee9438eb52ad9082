"""Teacher outputs cached on disk per cut (:class:`TeacherCache`), so that later epochs of a distillation
run read them back instead of running the teacher again."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from distill import safe_load
from distill.models.config import W2V2Config
from distill.models.wav2vec2 import W2V2Model
from distill.safe_load import CheckpointError

from . import distributed as du

__all__ = ["TeacherCache", "TeacherCacheError", "cache_values_per_frame", "config_fingerprint"]

log = logging.getLogger(__name__)


class TeacherCacheError(RuntimeError):
    """A teacher cache does not match the current teacher/targets, or a file in it is unreadable."""


class TeacherCache:
    """Teacher outputs stored per cut on disk (one ``.pt`` file per cut id, fp16 by default).

    Filled lazily: the first time a batch is seen the teacher runs and each cut's valid frames are
    written; later epochs read them back. ``meta.json`` records the teacher fingerprint and which
    outputs are stored; a cache written for another teacher or other targets is refused. Targets
    are only valid for unperturbed audio: speed perturbation must be off (checked by the entry point).

    Disk cost: 50 frames per second of audio (180,000 per hour) times the values stored per frame
    (the vocabulary for scores, hidden size per distilled layer, CNN width for features) times 2 bytes
    (fp16), plus ~1.6 kB per file (:meth:`bytes_needed`). Given ``values_per_frame``, ``hours`` and
    ``utterances`` of the training data, :meth:`open` logs the cost and refuses a new cache that would
    not fit the free disk, before anything is written.
    """

    FRAMES_PER_SECOND = 50  # wav2vec 2.0 output frames (20 ms)
    FILE_OVERHEAD = 1600  # bytes per torch.save file beyond its tensors (zip container, cut id), measured
    BLOCK = 4096  # files take whole filesystem blocks

    def __init__(
        self,
        directory: str | Path,
        fingerprint: Mapping[str, Any],
        dtype: torch.dtype = torch.float16,
        *,
        values_per_frame: int | None = None,
        hours: float | None = None,
        utterances: int | None = None,
    ) -> None:
        self.dir = Path(directory)
        self.dtype = dtype
        self.meta = {"format": "distill-teacher-cache-v1", "dtype": str(dtype).replace("torch.", ""), **fingerprint}
        self.values_per_frame, self.hours, self.utterances = values_per_frame, hours, utterances
        self.hits = 0
        self.misses = 0

    def bytes_per_hour(self, values_per_frame: int) -> float:
        """Tensor bytes per hour of audio (without the per-file overhead)."""
        return 3600.0 * self.FRAMES_PER_SECOND * values_per_frame * torch.empty((), dtype=self.dtype).element_size()

    def bytes_needed(self, values_per_frame: int, hours: float, utterances: int) -> int:
        """Disk space of a full cache: each cut's file (its share of the tensor bytes plus the file
        overhead) rounded up to whole filesystem blocks."""
        if utterances <= 0:
            return 0
        per_file = self.bytes_per_hour(values_per_frame) * hours / utterances + self.FILE_OVERHEAD
        return int(utterances * math.ceil(per_file / self.BLOCK) * self.BLOCK)

    def _check_space(self) -> str | None:
        """Log the cache's disk cost; the reason to refuse it (a new cache larger than the free disk), or None."""
        v, h, n = self.values_per_frame, self.hours, self.utterances
        if v is None:
            return None
        if h is None or n is None:
            log.warning(
                "teacher cache %s: %.2f GB per hour of audio (%d values per frame, %s); the size of the "
                "training data is unknown (cuts.yaml without sizes: re-run stage 1), free disk not checked",
                self.dir,
                self.bytes_per_hour(v) / 1e9,
                v,
                self.meta["dtype"],
            )
            return None
        need = self.bytes_needed(v, h, n)
        probe = self.dir
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        new = not (self.dir / "meta.json").exists()
        log.info(
            "teacher cache %s: %.2f GB per hour of audio (%d values per frame, %s) + %.1f kB per file; "
            "%.1f GB for %.1f h in %d cuts; %.1f GB free%s",
            self.dir,
            self.bytes_per_hour(v) / 1e9,
            v,
            self.meta["dtype"],
            self.FILE_OVERHEAD / 1e3,
            need / 1e9,
            h,
            n,
            free / 1e9,
            "" if new else " (existing cache: what it already holds is not counted)",
        )
        if new and need > free:
            return (
                f"teacher cache '{self.dir}' would need {need / 1e9:.1f} GB ({self.bytes_per_hour(v) / 1e9:.2f} GB "
                f"per hour of audio x {h:.1f} h in {n} cuts: {v} values per frame in {self.meta['dtype']}) but "
                f"only {free / 1e9:.1f} GB are free on {probe}; set teacher_cache_dir to a larger disk"
                + (", teacher_cache_dtype: float16" if self.meta["dtype"] != "float16" else "")
                + " or teacher_cache: false (teacher outputs on the fly)"
            )
        return None

    def open(self) -> None:
        """Check the free disk (see the class docstring), then create or check ``meta.json`` (rank 0
        writes, all ranks check after a barrier)."""
        meta_file = self.dir / "meta.json"
        refusal = du.broadcast_object(self._check_space() if du.is_main() else None)
        if refusal:
            raise TeacherCacheError(refusal)
        if du.is_main():
            self.dir.mkdir(parents=True, exist_ok=True)
            if not meta_file.exists():
                tmp = meta_file.with_suffix(f".tmp-{os.getpid()}")
                tmp.write_text(json.dumps(self.meta, indent=1, sort_keys=True))
                os.replace(tmp, meta_file)
        du.barrier()
        try:
            old = json.loads(meta_file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise TeacherCacheError(f"{meta_file}: unreadable ({e}); delete the cache directory") from None
        if old != json.loads(json.dumps(self.meta)):
            diff = sorted(k for k in set(old) | set(self.meta) if old.get(k) != self.meta.get(k))
            raise TeacherCacheError(
                f"teacher cache '{self.dir}' was written for another teacher or other targets (differs in "
                f"{', '.join(diff)}); delete it or set teacher_cache_dir to another directory"
            )

    def _path(self, cut_id: str) -> Path:
        h = hashlib.sha1(cut_id.encode("utf-8")).hexdigest()
        return self.dir / h[:2] / f"{h[2:20]}.pt"

    def read(self, cut_id: str) -> dict[str, Tensor] | None:
        """The stored outputs of ``cut_id``, None when it has no file; a file that cannot be read raises
        :class:`~distill.safe_load.CheckpointError` naming it (:meth:`get` recomputes those)."""
        p = self._path(cut_id)
        if not p.exists():
            return None
        obj = safe_load.load(p, what="teacher cache file")
        if obj.get("id") != cut_id:
            raise TeacherCacheError(f"teacher cache file {p} holds cut {obj.get('id')!r}, expected {cut_id!r}")
        return {k: v for k, v in obj.items() if k != "id"}

    def get(self, cut_id: str) -> dict[str, Tensor] | None:
        """:meth:`read`, but an unreadable file is None (with a warning naming it), so that it is recomputed."""
        try:
            return self.read(cut_id)
        except CheckpointError as e:  # truncated file (killed writer on a filesystem without atomic rename)
            log.warning("teacher cache file %s for cut %s is unreadable (%s); recomputing it", e.path, cut_id, e.detail)
            return None

    def put(self, cut_id: str, entry: dict[str, Tensor]) -> None:
        p = self._path(cut_id)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        torch.save({"id": cut_id, **{k: v.detach().to("cpu", self.dtype).contiguous() for k, v in entry.items()}}, tmp)
        os.replace(tmp, p)


def cache_values_per_frame(teacher: W2V2Model, needs: Mapping[str, Any]) -> int:
    """Values a :class:`TeacherCache` stores per frame for ``needs`` (``DistillObjective.teacher_needs()``)."""
    c = teacher.config
    return (
        (c.vocab_size if needs.get("scores") else 0)
        + len(needs.get("hidden") or ()) * c.hidden_size
        + (c.feature_dim if needs.get("features") else 0)
    )


def config_fingerprint(model: W2V2Model, path: str) -> dict[str, Any]:
    """A teacher identity for the cache: path, config and a hash of the weights."""
    h = hashlib.sha1()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()[:4096])
        h.update(str(tuple(v.shape)).encode())
        h.update(repr(float(v.double().sum())).encode())
    cfg: W2V2Config = model.config
    return {"teacher": str(path), "teacher_config": cfg.to_dict(), "teacher_hash": h.hexdigest()}
