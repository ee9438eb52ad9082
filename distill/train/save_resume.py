"""The trainer's saved state: full checkpoints (collective under DDP, rank 0 writes), exact resume from
the newest valid one, and the model files of a run (``best.pt``, ``last.pt``, ``avg<N>.pt``).

:class:`SaveResumeMixin` is a part of :class:`~distill.train.trainer.Trainer`; the file format and its
atomic writing are :mod:`distill.train.checkpoint`'s.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.config import ConfigError, config_to_dict

from . import checkpoint as ckpt
from . import distributed as du
from .averaging import average_checkpoints
from .config import TrainConfig

__all__ = ["SaveResumeMixin"]

log = logging.getLogger("distill.train.trainer")  # the trainer's log lines keep their logger name


class SaveResumeMixin:
    """Checkpoint writing, resume and model files of the :class:`~distill.train.trainer.Trainer` (whose
    attributes below it reads and, on resume, sets)."""

    cfg: TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    sampler: Any
    rank: int
    world: int
    exp_dir: Path
    ckpt_dir: Path
    model_meta: dict
    step: int
    epoch: int
    batch_in_epoch: int
    last_ckpt_step: int
    _last_ckpt_path: Path | None
    _pending_rng: dict | None
    _pending_skip: int

    def _sampler_state(self) -> Any:
        if self.sampler is None or not hasattr(self.sampler, "state_dict") or self.batch_in_epoch == 0:
            return None  # at an epoch boundary set_epoch() alone restores the order
        return self.sampler.state_dict()

    def _trainer_state(self) -> dict:
        return {
            k: getattr(self, k)
            for k in (
                "step",
                "epoch",
                "batch_in_epoch",
                "best_value",
                "best_step",
                "n_nonfinite",
                "n_oom",
                "n_fp16_overflow",
                "consecutive_bad",
                "last_valid_step",
            )
        }

    def _model_state(self) -> dict[str, torch.Tensor]:
        return ckpt.filter_state(self.model.state_dict(), tuple(self.cfg.exclude_from_checkpoint))

    def save_checkpoint(self, on_signal: bool = False) -> Path | None:
        """Write a full checkpoint of the current update (collective under DDP; rank 0 writes).

        ``on_signal``: the checkpoint of a SIGTERM/SIGINT off the schedule, ``signal-<step>.pt``: it
        resumes like any other but takes no part in the ``keep_last`` rotation or in averaging, so that
        an interrupted-and-resumed run keeps the scheduled checkpoints of an uninterrupted one. Any
        checkpoint removes the signal checkpoints it supersedes.
        """
        rank_state = {"rank": self.rank, "sampler": self._sampler_state(), "rng": ckpt.rng_state()}
        states = du.gather_objects(rank_state)
        err: str | None = None
        path = (ckpt.signal_checkpoint_path if on_signal else ckpt.checkpoint_path)(self.ckpt_dir, self.step)
        if self.rank == 0:
            obj = {
                "format": ckpt.CKPT_FORMAT,
                "model": self._model_state(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                "trainer": self._trainer_state(),
                "rank_states": states,
                "world_size": self.world,
                "config": config_to_dict(self.cfg),
                "meta": self.model_meta,
            }
            try:
                ckpt.atomic_save(obj, path)
                if not on_signal:
                    ckpt.prune_checkpoints(self.ckpt_dir, self.cfg.keep_last)
                ckpt.remove_signal_checkpoints(self.ckpt_dir, self.step, keep=path)
                log.info(
                    "checkpoint %s written (epoch %d, batch %d of the epoch)", path, self.epoch, self.batch_in_epoch
                )
            except ckpt.CheckpointError as e:
                err = f"{e}; the newest complete checkpoint is {self._last_ckpt_path or 'none yet'}"
        err = du.broadcast_object(err)
        if err is not None:
            raise ckpt.CheckpointError(err)
        if not on_signal:
            self.last_ckpt_step = self.step
        self._last_ckpt_path = path
        return path

    def _resume(self) -> bool:
        """Load the newest valid checkpoint if there is one (and resume is on)."""
        if self.rank == 0:
            ckpt.remove_stale_temp_files(self.ckpt_dir)
        du.barrier()
        existing = ckpt.resume_candidates(self.ckpt_dir)
        if not existing:
            return False
        if not self.cfg.resume:
            raise ConfigError(
                f"'{self.ckpt_dir}' already holds checkpoints ({existing[-1][1].name}, ...) "
                "and train.resume is false: use resume=true to continue, or a new exp_dir"
            )
        found = ckpt.latest_valid_checkpoint(self.ckpt_dir)
        if found is None:
            raise ckpt.CheckpointError(
                f"no checkpoint in '{self.ckpt_dir}' is readable; move them away to start afresh"
            )
        path, obj = found
        self._load(path, obj)
        return True

    def _load(self, path: Path, obj: dict) -> None:
        st = obj["trainer"]
        excluded = tuple(self.cfg.exclude_from_checkpoint)
        missing, unexpected = self.model.load_state_dict(obj["model"], strict=False)
        missing = [k for k in missing if not (excluded and k.startswith(excluded))]
        if missing or unexpected:
            raise ckpt.CheckpointError(
                f"'{path}' does not fit the model: missing keys {missing[:5]}, unexpected keys {list(unexpected)[:5]}"
            )
        self.optimizer.load_state_dict(obj["optimizer"])
        self.scheduler.load_state_dict(obj["scheduler"])
        if obj.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(obj["scaler"])
        for k, v in st.items():
            setattr(self, k, v)
        # a signal checkpoint does not stand for the scheduled one of its update (written if due)
        self.last_ckpt_step = -1 if path.name == ckpt.signal_checkpoint_path(".", self.step).name else self.step
        self._last_ckpt_path = path
        old_cfg, new_cfg = obj.get("config", {}), config_to_dict(self.cfg)
        changed = sorted(k for k in set(old_cfg) | set(new_cfg) if old_cfg.get(k) != new_cfg.get(k))
        if changed:
            log.warning("resuming with changed train settings: %s", ", ".join(changed))
        states = obj["rank_states"]
        same_world = obj["world_size"] == self.world
        if self.batch_in_epoch > 0 and not same_world:
            raise ckpt.CheckpointError(
                f"'{path}' was written mid-epoch by {obj['world_size']} processes; resuming it with "
                f"{self.world} would change the data order. Use the same number of processes"
            )
        mine = states[self.rank] if self.rank < len(states) else None
        if mine is not None:
            self._pending_rng = mine["rng"]
        if self.batch_in_epoch > 0:
            if mine is not None and mine["sampler"] is not None and self.sampler is not None:
                self.sampler.load_state_dict(mine["sampler"])
            else:
                log.warning(
                    "no sampler state to restore: re-reading %d batches to reach the resume position",
                    self.batch_in_epoch,
                )
                self._pending_skip = self.batch_in_epoch
        log.info(
            "resumed from %s: update %d, epoch %d, batch %d of the epoch",
            path,
            self.step,
            self.epoch,
            self.batch_in_epoch,
        )

    def _write_model_file(self, name: str, **meta: Any) -> Path:
        state = ckpt.filter_state(
            self.model.state_dict(), tuple(self.cfg.exclude_from_checkpoint), self.cfg.export_prefix
        )
        return ckpt.save_model_file(
            state, self.exp_dir / name, step=self.step, epoch=self.epoch, meta=self.model_meta, **meta
        )

    def _finalize_outputs(self) -> None:
        """last.pt (and avg<N>.pt), written by rank 0 at the end of a finished run."""
        if self.rank != 0:
            return
        self._write_model_file("last.pt")
        n = self.cfg.average_last
        if n > 1:
            ckpts = [p for _, p in ckpt.list_checkpoints(self.ckpt_dir)][-n:]
            if len(ckpts) < n:
                log.warning("average_last=%d but only %d checkpoints exist; averaging those", n, len(ckpts))
            if ckpts:
                state = average_checkpoints(ckpts)
                state = ckpt.filter_state(state, (), self.cfg.export_prefix)
                ckpt.save_model_file(
                    state,
                    self.exp_dir / f"avg{n}.pt",
                    step=self.step,
                    averaged_from=[p.name for p in ckpts],
                    meta=self.model_meta,
                )
