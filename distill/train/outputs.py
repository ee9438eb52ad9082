"""What the trainer reports: the progress bar, TensorBoard, ``train_log.jsonl`` and log records of
training intervals, and validation (metrics, ``best.pt`` selection).

:class:`OutputsMixin` is a part of :class:`~distill.train.trainer.Trainer`; :class:`Interval` holds
the sums between two log records.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import distributed as du
from .config import TrainConfig

__all__ = ["Interval", "OutputsMixin"]

log = logging.getLogger("distill.train.trainer")  # the trainer's log lines keep their logger name


class Interval:
    """Accumulators between two log records (local to this rank, merged at log time)."""

    def __init__(self) -> None:
        self.loss = 0.0
        self.num = 0.0
        self.audio = 0.0
        self.stats: dict[str, float] = {}
        self.grad_norms: list[float] = []
        self.lr = float("nan")
        self.updates = 0
        self.t0 = time.monotonic()


class OutputsMixin:
    """Logging and validation of the :class:`~distill.train.trainer.Trainer` (whose attributes below it
    reads; it sets the best value and the validation step)."""

    cfg: TrainConfig
    model: nn.Module
    rank: int
    exp_dir: Path
    step: int
    epoch: int
    n_nonfinite: int
    n_oom: int
    best_value: float | None
    best_step: int | None
    last_valid_step: int
    validate_fn: Callable[[nn.Module], Any] | None
    _tb: Any
    _pbar: Any
    _jsonl: Any
    # methods of the trainer's other parts
    _autocast: Callable[[], contextlib.AbstractContextManager]
    _total_steps: Callable[[], int]
    _write_model_file: Callable[..., Path]

    def _open_outputs(self, resumed: bool) -> None:
        if self.rank != 0:
            return
        jl = self.exp_dir / "train_log.jsonl"
        if resumed and jl.exists():
            # drop records of a killed run written after the checkpoint we resume from
            keep = []
            for line in jl.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= self.step:
                        keep.append(line)
                except json.JSONDecodeError:
                    pass  # a line cut by SIGKILL
            tmp = jl.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(x + "\n" for x in keep), encoding="utf-8")
            tmp.replace(jl)
        self._jsonl = open(jl, "a", encoding="utf-8")
        if self.cfg.tensorboard:
            # lazy: tensorboard is a heavy import that only runs with tensorboard: true need
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.exp_dir / "tensorboard"), purge_step=self.step + 1 if resumed else None)
        if self.cfg.progress:
            total = self._total_steps() or None
            self._pbar = tqdm(
                total=total,
                initial=self.step,
                unit="upd",
                dynamic_ncols=True,
                desc=f"epoch {self.epoch}",
                mininterval=1.0,
            )

    def _close_outputs(self) -> None:
        for name in ("_pbar", "_tb", "_jsonl"):
            obj = getattr(self, name)
            if obj is not None:
                try:
                    obj.close()
                except Exception:  # closing must not mask the real error
                    pass
                setattr(self, name, None)

    def _record(self, rec: dict) -> None:
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(rec) + "\n")
            self._jsonl.flush()

    def _log_interval(self, iv: Interval) -> None:
        """Merge the interval's sums over ranks and write progress, TensorBoard, jsonl and the log."""
        local = {"loss": iv.loss, "num": iv.num, "audio": iv.audio, "stats": iv.stats}
        parts = du.gather_objects(local)
        if self.rank != 0:
            return
        num = sum(p["num"] for p in parts)
        loss = sum(p["loss"] for p in parts)
        audio = sum(p["audio"] for p in parts)
        stats: dict[str, float] = {}
        for p in parts:
            for k, v in p["stats"].items():
                stats[k] = stats.get(k, 0.0) + v
        dt = max(1e-9, time.monotonic() - iv.t0)
        rec: dict[str, Any] = {
            "type": "train",
            "step": self.step,
            "epoch": self.epoch,
            "loss": loss / num if num > 0 else float("nan"),
        }
        for k, v in sorted(stats.items()):
            rec[k] = v / num if num > 0 else float("nan")
        rec["lr"] = iv.lr
        rec["grad_norm"] = sum(iv.grad_norms) / len(iv.grad_norms) if iv.grad_norms else float("nan")
        rec["num"] = num
        rec["num_per_s"] = num / dt
        if audio > 0:
            rec["audio_s_per_s"] = audio / dt
        rec["updates_per_s"] = iv.updates / dt
        rec["skipped_nonfinite"] = self.n_nonfinite
        rec["skipped_oom"] = self.n_oom
        rec["time"] = time.time()
        self._record(rec)
        if self._tb is not None:
            for k, v in rec.items():
                if k not in ("type", "step", "epoch", "time") and isinstance(v, (int, float)):
                    self._tb.add_scalar(f"train/{k}", v, self.step)
            self._tb.flush()
        shown = {k: rec[k] for k in ["loss", *sorted(stats)]}
        if self._pbar is not None:
            post = {k: f"{v:.4g}" for k, v in shown.items()}
            post["lr"] = f"{rec['lr']:.3g}"
            post[f"{self.cfg.num_unit}/s"] = f"{rec['num_per_s']:.4g}"
            if audio > 0:
                post["audio_s/s"] = f"{rec['audio_s_per_s']:.3g}"
            self._pbar.set_postfix(post, refresh=False)
        log.info(
            "epoch %d update %d: %s lr %.3g grad_norm %.3g %s/s %.4g",
            self.epoch,
            self.step,
            " ".join(f"{k} {v:.4g}" for k, v in shown.items()),
            rec["lr"],
            rec["grad_norm"],
            self.cfg.num_unit,
            rec["num_per_s"],
        )

    # ------------------------------------------------------------------ validation
    def run_validation(self) -> dict[str, float]:
        """Call the validation callback, update best.pt, log; returns rank 0's metrics."""
        assert self.validate_fn is not None
        self.model.eval()
        try:
            with torch.no_grad(), self._autocast(), _rng_kept(self.device):
                metrics = {k: float(v) for k, v in dict(self.validate_fn(self.model)).items()}
        finally:
            self.model.train()
        metrics = du.broadcast_object(metrics)
        self.last_valid_step = self.step
        key = self.cfg.best_metric
        if key not in metrics:
            raise KeyError(f"train.best_metric '{key}' is not among the validation metrics {sorted(metrics)}")
        value = metrics[key]
        better = math.isfinite(value) and (
            self.best_value is None
            or (value < self.best_value if self.cfg.best_mode == "min" else value > self.best_value)
        )
        if better:
            self.best_value, self.best_step = value, self.step
            if self.rank == 0:
                self._write_model_file("best.pt", metrics=metrics, best_metric=key)
        if self.rank == 0:
            self._record(
                {
                    "type": "valid",
                    "step": self.step,
                    "epoch": self.epoch,
                    **metrics,
                    "best": better,
                    "time": time.time(),
                }
            )
            if self._tb is not None:
                for k, v in metrics.items():
                    self._tb.add_scalar(f"valid/{k}", v, self.step)
                self._tb.flush()
            log.info(
                "validation at update %d: %s%s",
                self.step,
                " ".join(f"{k} {v:.4g}" for k, v in metrics.items()),
                " (new best)" if better else f" (best {key} {self.best_value} at {self.best_step})",
            )
        return metrics


@contextlib.contextmanager
def _rng_kept(device: torch.device) -> Iterator[None]:
    """Run validation without moving the training's random streams (torch CPU and ``device``, Python,
    NumPy): a DataLoader iterator draws its seed from torch's, so validating would otherwise change every
    later random draw, and the trained model would depend on ``valid_interval``."""
    state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield
    random.setstate(state[0])
    np.random.set_state(state[1])
