"""The stage-agnostic training loop shared by the teacher, the distillation stages and the baselines.

A stage supplies a model, a loss callable and a data loader; the :class:`Trainer` owns everything
else: AdamW + LR schedule, gradient accumulation and clipping, mixed precision, parameter freezing,
DDP, validation and best-model selection, crash-safe checkpoints with exact resume, signal handling,
non-finite/OOM batch skipping, and progress/TensorBoard/jsonl logging.

Loss contract. ``compute_loss(model, batch)`` returns a :class:`LossResult` (or the tuple
``(loss_sum, stats, num)``): ``loss_sum`` is the loss **summed** over the batch (not averaged), ``num``
the count it should be normalised by (frames or utterances), ``stats`` extra sums to report. The
trainer back-propagates the sums and, once per update, scales the gradient by ``1 / N`` where ``N``
is the total ``num`` over all micro-batches of the update and all ranks. The update is therefore the
gradient of ``sum(losses) / N`` over the global batch, independent of how the batch is split into
micro-batches or processes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Optional, Sequence

import numpy as np
import torch
from torch import nn

from distill.config import ConfigError, config_to_dict
from distill.log import setup_logging

from . import checkpoint as ckpt
from . import distributed as du
from .averaging import average_checkpoints
from .config import TrainConfig
from .lock import ExpDirLock, ExpDirLocked
from .schedulers import build_scheduler

__all__ = ["LossResult", "FitResult", "TrainingDiverged", "Trainer", "describe_batch", "move_to_device",
           "build_optimizer"]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LossResult:
    """What ``compute_loss`` returns (a ``(loss, stats, num)`` tuple is accepted too).

    * ``loss``: 0-dim tensor, the loss summed over the batch (it is back-propagated as is).
    * ``num``: the normaliser of this batch (frames or utterances), summed like ``loss``.
    * ``stats``: named sums (floats or 0-dim tensors) reported as ``sum / num`` per logging interval,
      e.g. the components of a combined loss.
    * ``audio_sec``: seconds of audio in the batch, for the throughput display (optional).
    """

    loss: torch.Tensor
    num: float
    stats: dict[str, float] = dataclasses.field(default_factory=dict)
    audio_sec: float = 0.0


@dataclasses.dataclass
class FitResult:
    """Outcome of :meth:`Trainer.fit`."""

    status: Literal["finished", "interrupted"]
    step: int
    epoch: int
    signal: Optional[int] = None
    best_value: Optional[float] = None
    best_step: Optional[int] = None
    checkpoint: Optional[Path] = None

    @property
    def exit_code(self) -> int:
        """0 when finished; ``128 + signal`` when stopped by SIGTERM/SIGINT (143 / 130)."""
        return 0 if self.status == "finished" else 128 + int(self.signal or 0)


class TrainingDiverged(RuntimeError):
    """Too many consecutive updates were skipped (non-finite losses/gradients or OOM)."""


ComputeLoss = Callable[[nn.Module, Any], "LossResult | tuple"]
Validate = Callable[[nn.Module], Mapping[str, float]]


def move_to_device(obj: Any, device: torch.device) -> Any:
    """Tensors nested in dicts/lists/tuples moved to ``device``; other objects untouched."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return type(obj)({k: move_to_device(v, device) for k, v in obj.items()}) \
            if isinstance(obj, dict) else {k: move_to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(move_to_device(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to_device(v, device) for v in obj)
    return obj


def describe_batch(batch: Any, max_ids: int = 3) -> str:
    """A one-line summary of a batch for warnings: tensor shapes, number/duration of cuts, ids."""
    parts: list[str] = []

    def cut_info(cuts: Any) -> None:
        try:
            cl = list(cuts)
            dur = sum(float(getattr(c, "duration", 0.0)) for c in cl)
            ids = [str(getattr(c, "id", "?")) for c in cl[:max_ids]]
            parts.append(f"{len(cl)} cuts, {dur:.1f} s audio, ids {ids}{'...' if len(cl) > max_ids else ''}")
        except Exception:  # a summary must never fail
            pass

    def walk(obj: Any, name: str, depth: int) -> None:
        if depth > 3:
            return
        if isinstance(obj, torch.Tensor):
            parts.append(f"{name}{list(obj.shape)}")
        elif isinstance(obj, Mapping):
            for k, v in obj.items():
                if k in ("cuts", "cut") and not isinstance(v, torch.Tensor):
                    cut_info(v if not hasattr(v, "id") else [v])
                elif k in ("ids", "utt_ids", "cut_ids", "keys") and isinstance(v, (list, tuple)):
                    parts.append(f"{k} {[str(x) for x in v[:max_ids]]}{'...' if len(v) > max_ids else ''}")
                else:
                    walk(v, f"{name}.{k}" if name else str(k), depth + 1)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj[:8]):
                walk(v, f"{name}[{i}]", depth + 1)
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            walk({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, name, depth)

    walk(batch, "", 0)
    return ", ".join(parts) if parts else type(batch).__name__


def build_optimizer(model: nn.Module, cfg: TrainConfig,
                    trainable: Optional[set[str]] = None) -> torch.optim.Optimizer:
    """AdamW/Adam over the trainable parameters, in a decay and a no-decay group."""
    o = cfg.optim
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if (trainable is not None and name not in trainable) or (trainable is None and not p.requires_grad):
            continue
        (no_decay if o.no_decay_1d and p.ndim <= 1 else decay).append(p)
    groups = [g for g in ({"params": decay, "weight_decay": o.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)


def _as_result(out: Any) -> LossResult:
    if isinstance(out, LossResult):
        res = out
    elif isinstance(out, (tuple, list)) and len(out) == 3:
        res = LossResult(loss=out[0], stats=dict(out[1] or {}), num=out[2])
    else:
        raise TypeError("compute_loss must return LossResult or (loss_sum, stats, num), got "
                        f"{type(out).__name__}")
    if not isinstance(res.loss, torch.Tensor) or res.loss.numel() != 1:
        raise TypeError("compute_loss: loss must be a one-element tensor (the sum over the batch), got "
                        f"{getattr(res.loss, 'shape', type(res.loss).__name__)}")
    num = float(res.num.item() if isinstance(res.num, torch.Tensor) else res.num)
    if num < 0 or not math.isfinite(num):
        raise ValueError(f"compute_loss: num must be a finite count >= 0, got {num}")
    res.num = num
    return res


class _Window:
    """Accumulators of one optimizer update (accum_grad micro-batches)."""

    def __init__(self) -> None:
        self.micro = 0  # micro-batches seen
        self.applied = 0  # micro-batches back-propagated (on every rank)
        self.num = 0.0  # global normaliser of the applied micro-batches
        self.synced = False  # a DDP-synchronising backward happened
        self.stop = False


class _Interval:
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


class Trainer:
    """Generic trainer; see the module docstring and ``docs/training.md``.

    Args:
        cfg: the :class:`TrainConfig`.
        model: the module holding **every** trainable parameter (e.g. a student plus distillation
            projections); frozen submodules (a teacher) may live in it with ``requires_grad=False``.
            It is moved to the device; under DDP it is wrapped, and ``compute_loss`` receives the wrapper.
        compute_loss: ``(model, batch) -> LossResult | (loss_sum, stats, num)``. Under DDP it must
            call ``model(...)`` (the wrapper's forward) once per batch.
        train_loader: an iterable of batches, iterated once per epoch. Tensors nested in dicts/lists
            are moved to the device by the trainer.
        sampler: the object whose ``set_epoch``/``state_dict``/``load_state_dict`` pin the data position
            (default: ``train_loader`` itself when it has them, e.g. :class:`distill.data.AsrDataLoader`,
            else ``train_loader.sampler`` when it has them). Its ``state_dict()`` must describe the
            position after the batches the loop has consumed, which a sampler behind prefetching
            workers does not; ``iter(train_loader)`` must draw its random seeds at once, as the RNG
            state is restored right after it.
        validate: ``(model) -> {metric: value}``, called on every rank with the unwrapped model in
            eval mode under ``torch.no_grad``; rank 0's values are used.
        freeze_fns: extra ``(predicate(name) -> bool, steps)`` freezing rules (``steps=-1``: always).
        describe_batch: summary of a batch for warnings (default: :func:`describe_batch`).
        on_step_end: called with the trainer after every update (after logging/checkpointing).
        device: overrides ``cfg.device``.
        model_meta: plain values (e.g. the model's config as a dict) stored as ``meta`` in model
            files and checkpoints, so that a decoder can rebuild the model from ``best.pt`` alone.
        exp_lock: the lock of ``cfg.exp_dir`` when the caller already holds it (it took it before
            writing anything there); :meth:`fit` then neither takes nor releases it.
    """

    def __init__(self, cfg: TrainConfig, model: nn.Module, compute_loss: ComputeLoss,
                 train_loader: Iterable[Any], *, sampler: Any = None, validate: Optional[Validate] = None,
                 freeze_fns: Sequence[tuple[Callable[[str], bool], int]] = (),
                 describe_batch: Callable[[Any], str] = describe_batch,
                 on_step_end: Optional[Callable[["Trainer"], None]] = None,
                 device: Optional[str | torch.device] = None, model_meta: Optional[dict] = None,
                 exp_lock: Optional[ExpDirLock] = None) -> None:
        cfg.validate()
        self.cfg = cfg
        self.model = model
        self.compute_loss = compute_loss
        self.train_loader = train_loader
        if sampler is None:
            for cand in (train_loader, getattr(train_loader, "sampler", None)):
                if hasattr(cand, "state_dict") and hasattr(cand, "load_state_dict"):
                    sampler = cand
                    break
        self.sampler = sampler
        self.validate_fn = validate
        self.describe = describe_batch
        self.on_step_end = on_step_end
        self.model_meta = dict(model_meta or {})
        self.exp_lock = exp_lock
        self.exp_dir = Path(cfg.exp_dir)
        self.ckpt_dir = self.exp_dir / "checkpoints"
        dev = device if device is not None else cfg.device
        self.device = du.default_device() if dev == "auto" else torch.device(dev)
        self.rank, self.world = du.get_rank(), du.get_world_size()
        if self.world > 1 and not du.is_distributed():
            raise RuntimeError(f"WORLD_SIZE={self.world} but no process group: call "
                               "distill.train.distributed.init() before creating the Trainer")
        self._freeze_rules = self._make_freeze_rules(list(freeze_fns))
        # state saved in checkpoints
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_value: Optional[float] = None
        self.best_step: Optional[int] = None
        self.n_nonfinite = 0
        self.n_oom = 0
        self.n_fp16_overflow = 0
        self.consecutive_bad = 0
        self.last_valid_step = -1
        self.last_ckpt_step = -1
        # runtime
        self.ddp: Optional[nn.Module] = None
        self._frozen: Optional[frozenset[str]] = None
        self._stop_signal: Optional[int] = None
        self._pending_rng: Optional[dict] = None
        self._pending_skip = 0
        self._last_ckpt_path: Optional[Path] = None
        self._tb: Any = None
        self._pbar: Any = None
        self._jsonl: Any = None

    # ------------------------------------------------------------------ set-up
    def _make_freeze_rules(self, extra: list[tuple[Callable[[str], bool], int]]
                           ) -> list[tuple[Callable[[str], bool], int, str]]:
        names = [n for n, _ in self.model.named_parameters()]
        rules = []
        for i, fr in enumerate(self.cfg.freeze):
            prefixes = tuple(fr.prefixes)
            if not any(n.startswith(prefixes) for n in names):
                tops = sorted({n.split(".")[0] + "." for n in names})
                raise ConfigError(f"train config: key 'freeze[{i}].prefixes': {list(prefixes)} match no "
                                  f"parameter of the model (top-level names: {', '.join(tops[:12])})")
            rules.append(((lambda n, p=prefixes: n.startswith(p)), fr.steps, f"prefixes {list(prefixes)}"))
        for fn, steps in extra:
            rules.append((fn, steps, getattr(fn, "__name__", "callable")))
        return rules

    def _frozen_at(self, step: int) -> frozenset[str]:
        active = [fn for fn, steps, _ in self._freeze_rules if steps == -1 or step < steps]
        return frozenset(n for n in self._trainable if any(fn(n) for fn in active))

    def _apply_freeze(self) -> None:
        """Set ``requires_grad`` for the current step; (re)wrap DDP when the trainable set changes."""
        frozen = self._frozen_at(self.step)
        if frozen == self._frozen:
            return
        if len(frozen) == len(self._trainable):
            raise ConfigError(f"at update {self.step} the freeze rules freeze every trainable parameter")
        for n, p in self.model.named_parameters():
            if n in self._trainable:
                p.requires_grad_(n not in frozen)
        if self._frozen is not None or frozen:
            nparam = sum(p.numel() for n, p in self.model.named_parameters() if n in frozen)
            log.info("update %d: %d parameter tensors (%d values) frozen", self.step, len(frozen), nparam)
        self._frozen = frozen
        if du.is_distributed():
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.ddp = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                           find_unused_parameters=self.cfg.ddp_find_unused_parameters)

    @property
    def loss_model(self) -> nn.Module:
        """The module ``compute_loss`` receives: the DDP wrapper when distributed, else the model."""
        return self.ddp if self.ddp is not None else self.model

    def _total_steps(self) -> int:
        if self.cfg.max_steps > 0:
            return self.cfg.max_steps
        try:
            per_epoch = len(self.train_loader)  # type: ignore[arg-type]
        except TypeError:
            return 0
        return math.ceil(per_epoch / self.cfg.accum_grad) * self.cfg.max_epochs

    def _setup(self) -> None:
        cfg = self.cfg
        self._trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        self.model.to(self.device)
        self.optimizer = build_optimizer(self.model, cfg, self._trainable)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, self._total_steps())
        cuda = self.device.type == "cuda"
        if cfg.precision != "fp32" and not cuda:
            log.warning("precision=%s needs CUDA; training in fp32 on %s", cfg.precision, self.device)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision) if cuda else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype is torch.float16)
        if (self.sampler is not None and self.sampler is getattr(self.train_loader, "sampler", None)
                and getattr(self.train_loader, "num_workers", 0) > 0):
            log.warning("the DataLoader prefetches with workers and its sampler's state counts the prefetched "
                        "batches: a mid-epoch resume may skip them (use distill.data.AsrDataLoader)")

    # ------------------------------------------------------------------ checkpoints
    def _sampler_state(self) -> Any:
        if self.sampler is None or not hasattr(self.sampler, "state_dict") or self.batch_in_epoch == 0:
            return None  # at an epoch boundary set_epoch() alone restores the order
        return self.sampler.state_dict()

    def _trainer_state(self) -> dict:
        return {k: getattr(self, k) for k in (
            "step", "epoch", "batch_in_epoch", "best_value", "best_step", "n_nonfinite", "n_oom",
            "n_fp16_overflow", "consecutive_bad", "last_valid_step")}

    def _model_state(self) -> dict[str, torch.Tensor]:
        return ckpt.filter_state(self.model.state_dict(), tuple(self.cfg.exclude_from_checkpoint))

    def save_checkpoint(self, on_signal: bool = False) -> Optional[Path]:
        """Write a full checkpoint of the current update (collective under DDP; rank 0 writes).

        ``on_signal``: the checkpoint of a SIGTERM/SIGINT off the schedule, ``signal-<step>.pt``: it
        resumes like any other but takes no part in the ``keep_last`` rotation or in averaging, so that
        an interrupted-and-resumed run keeps the scheduled checkpoints of an uninterrupted one. Any
        checkpoint removes the signal checkpoints it supersedes.
        """
        rank_state = {"rank": self.rank, "sampler": self._sampler_state(), "rng": ckpt.rng_state()}
        states = du.gather_objects(rank_state)
        err: Optional[str] = None
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
                log.info("checkpoint %s written (epoch %d, batch %d of the epoch)", path, self.epoch,
                         self.batch_in_epoch)
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
            raise ConfigError(f"'{self.ckpt_dir}' already holds checkpoints ({existing[-1][1].name}, ...) "
                              "and train.resume is false: use resume=true to continue, or a new exp_dir")
        found = ckpt.latest_valid_checkpoint(self.ckpt_dir)
        if found is None:
            raise ckpt.CheckpointError(f"no checkpoint in '{self.ckpt_dir}' is readable; move them away "
                                       "to start afresh")
        path, obj = found
        self._load(path, obj)
        return True

    def _load(self, path: Path, obj: dict) -> None:
        st = obj["trainer"]
        excluded = tuple(self.cfg.exclude_from_checkpoint)
        missing, unexpected = self.model.load_state_dict(obj["model"], strict=False)
        missing = [k for k in missing if not (excluded and k.startswith(excluded))]
        if missing or unexpected:
            raise ckpt.CheckpointError(f"'{path}' does not fit the model: missing keys {missing[:5]}, "
                                       f"unexpected keys {list(unexpected)[:5]}")
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
                f"{self.world} would change the data order. Use the same number of processes")
        mine = states[self.rank] if self.rank < len(states) else None
        if mine is not None:
            self._pending_rng = mine["rng"]
        if self.batch_in_epoch > 0:
            if mine is not None and mine["sampler"] is not None and self.sampler is not None:
                self.sampler.load_state_dict(mine["sampler"])
            else:
                log.warning("no sampler state to restore: re-reading %d batches to reach the resume "
                            "position", self.batch_in_epoch)
                self._pending_skip = self.batch_in_epoch
        log.info("resumed from %s: update %d, epoch %d, batch %d of the epoch", path, self.step,
                 self.epoch, self.batch_in_epoch)

    def _write_model_file(self, name: str, **meta: Any) -> Path:
        state = ckpt.filter_state(self.model.state_dict(), tuple(self.cfg.exclude_from_checkpoint),
                                  self.cfg.export_prefix)
        return ckpt.save_model_file(state, self.exp_dir / name, step=self.step, epoch=self.epoch,
                                    meta=self.model_meta, **meta)

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
                ckpt.save_model_file(state, self.exp_dir / f"avg{n}.pt", step=self.step,
                                     averaged_from=[p.name for p in ckpts], meta=self.model_meta)

    # ------------------------------------------------------------------ logging
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
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(self.exp_dir / "tensorboard"),
                                     purge_step=self.step + 1 if resumed else None)
        if self.cfg.progress:
            from tqdm import tqdm
            total = self._total_steps() or None
            self._pbar = tqdm(total=total, initial=self.step, unit="upd", dynamic_ncols=True,
                              desc=f"epoch {self.epoch}", mininterval=1.0)

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

    def _log_interval(self, iv: _Interval) -> None:
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
        rec: dict[str, Any] = {"type": "train", "step": self.step, "epoch": self.epoch,
                               "loss": loss / num if num > 0 else float("nan")}
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
        log.info("epoch %d update %d: %s lr %.3g grad_norm %.3g %s/s %.4g", self.epoch, self.step,
                 " ".join(f"{k} {v:.4g}" for k, v in shown.items()), rec["lr"], rec["grad_norm"],
                 self.cfg.num_unit, rec["num_per_s"])

    # ------------------------------------------------------------------ validation
    def run_validation(self) -> dict[str, float]:
        """Call the validation callback, update best.pt, log; returns rank 0's metrics."""
        assert self.validate_fn is not None
        self.model.eval()
        try:
            with torch.no_grad(), self._autocast():
                metrics = {k: float(v) for k, v in dict(self.validate_fn(self.model)).items()}
        finally:
            self.model.train()
        metrics = du.broadcast_object(metrics)
        self.last_valid_step = self.step
        key = self.cfg.best_metric
        if key not in metrics:
            raise KeyError(f"train.best_metric '{key}' is not among the validation metrics "
                           f"{sorted(metrics)}")
        value = metrics[key]
        better = math.isfinite(value) and (
            self.best_value is None
            or (value < self.best_value if self.cfg.best_mode == "min" else value > self.best_value))
        if better:
            self.best_value, self.best_step = value, self.step
            if self.rank == 0:
                self._write_model_file("best.pt", metrics=metrics, best_metric=key)
        if self.rank == 0:
            self._record({"type": "valid", "step": self.step, "epoch": self.epoch, **metrics,
                          "best": better, "time": time.time()})
            if self._tb is not None:
                for k, v in metrics.items():
                    self._tb.add_scalar(f"valid/{k}", v, self.step)
                self._tb.flush()
            log.info("validation at update %d: %s%s", self.step,
                     " ".join(f"{k} {v:.4g}" for k, v in metrics.items()),
                     " (new best)" if better else f" (best {key} {self.best_value} at {self.best_step})")
        return metrics

    # ------------------------------------------------------------------ the loop
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def _free_memory(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()

    def _micro_step(self, batch: Any, win: _Window, iv: _Interval, sync: bool) -> None:
        """Forward one micro-batch, agree with the other ranks whether to use it, back-propagate."""
        ddp_ctx = (self.ddp.no_sync() if self.ddp is not None and not sync  # type: ignore[operator]
                   else contextlib.nullcontext())
        with ddp_ctx:
            status, detail, res = "ok", "", None
            try:
                with self._autocast():
                    res = _as_result(self.compute_loss(self.loss_model, move_to_device(batch, self.device)))
                if not bool(torch.isfinite(res.loss.detach()).all()):
                    status, detail = "nonfinite", f"loss={res.loss.item()}"
            except torch.OutOfMemoryError as e:
                status, detail, res = "oom", str(e).splitlines()[0] if str(e) else "out of memory", None
            if status == "oom":
                self._free_memory()
            flags = torch.tensor([status == "nonfinite", status == "oom", self._stop_signal is not None,
                                  res.num if res is not None and status == "ok" else 0.0],
                                 dtype=torch.float64, device=self.device if self.ddp is not None else "cpu")
            g = du.all_reduce_sum(flags).tolist()
            win.stop = win.stop or g[2] > 0
            if status != "ok":
                log.warning("epoch %d batch %d: %s (%s); batch skipped [%s]", self.epoch,
                            self.batch_in_epoch, "non-finite loss" if status == "nonfinite"
                            else "out of memory", detail, self.describe(batch))
            if g[0] > 0 or g[1] > 0:
                if g[0] > 0:
                    self.n_nonfinite += 1
                else:
                    self.n_oom += 1
                self.consecutive_bad += 1
                if status == "ok" and self.rank == 0 and self.world > 1:
                    log.warning("epoch %d batch %d skipped on every rank: another rank had a bad batch",
                                self.epoch, self.batch_in_epoch)
                del res
                return
            assert res is not None
            try:
                loss = res.loss.reshape(())
                (self.scaler.scale(loss) if self.scaler.is_enabled() else loss).backward()
            except torch.OutOfMemoryError:
                oom_in_backward = True
            else:
                oom_in_backward = False
            if oom_in_backward:
                if self.ddp is not None:
                    raise RuntimeError(
                        f"CUDA out of memory in the backward pass of epoch {self.epoch} batch "
                        f"{self.batch_in_epoch} [{self.describe(batch)}]: under DDP the ranks cannot be "
                        "re-synchronised after this; lower the batch size (max_duration)")
                log.warning("epoch %d batch %d: out of memory in backward; dropping this update's "
                            "gradients [%s]", self.epoch, self.batch_in_epoch, self.describe(batch))
                self.n_oom += 1
                self.consecutive_bad += 1
                del res
                self._free_memory()
                win.applied, win.num = 0, 0.0
                return
            win.applied += 1
            win.num += g[3]
            win.synced = win.synced or sync
            iv.loss += float(res.loss.detach().item())
            iv.num += res.num
            iv.audio += float(res.audio_sec)
            for k, v in res.stats.items():
                iv.stats[k] = iv.stats.get(k, 0.0) + float(v.detach().item() if isinstance(v, torch.Tensor) else v)

    def _params_with_grad(self) -> list[torch.Tensor]:
        return [p for p in self.model.parameters() if p.grad is not None]

    def _finish_window(self, win: _Window, iv: _Interval) -> bool:
        """Apply (or skip) the update of a completed window; True when an update was applied."""
        applied = False
        if win.applied > 0 and win.num > 0:
            if self.ddp is not None and not win.synced:
                # the synchronising micro-batch was skipped: average the gradients by hand
                for p in self.model.parameters():
                    if p.requires_grad:
                        if p.grad is None:
                            p.grad = torch.zeros_like(p)
                        du.all_reduce_sum(p.grad)
                        p.grad.div_(self.world)
            if self.scaler.is_enabled():
                self.scaler.unscale_(self.optimizer)
            # DDP averaged over ranks: grad = sum_ranks(grad of loss sums) / world
            factor = self.world / win.num
            params = self._params_with_grad()
            for p in params:
                p.grad.mul_(factor)
            max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
            norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            if self.scaler.is_enabled():
                scale = self.scaler.get_scale()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                applied = math.isfinite(norm)
                if not applied:
                    self.n_fp16_overflow += 1
                    log.debug("fp16 overflow at update %d (scale %g); update skipped", self.step, scale)
                    if self.scaler.get_scale() < 1.0:
                        self.consecutive_bad += 1
            elif math.isfinite(norm):
                self.optimizer.step()
                applied = True
            else:
                self.n_nonfinite += 1
                self.consecutive_bad += 1
                log.warning("update %d: non-finite gradient norm (%s); update skipped", self.step + 1, norm)
            if applied:
                iv.grad_norms.append(norm)
        self.optimizer.zero_grad(set_to_none=True)
        if applied:
            iv.lr = self.optimizer.param_groups[0]["lr"]  # the LR this update used
            self.scheduler.step()
            self.step += 1
            self.consecutive_bad = 0
            iv.updates += 1
        if self.consecutive_bad >= self.cfg.max_consecutive_nonfinite:
            raise TrainingDiverged(
                f"{self.consecutive_bad} consecutive batches/updates were skipped (non-finite loss or "
                f"gradient, or out of memory; totals: {self.n_nonfinite} non-finite, {self.n_oom} OOM) at "
                f"epoch {self.epoch}, update {self.step}: training has diverged or the data is broken. "
                "Lower the learning rate, enable grad_clip, or check the batches named in the warnings. "
                f"The last good checkpoint is {self._last_ckpt_path}")
        return applied

    def _after_update(self, iv: _Interval) -> tuple[_Interval, bool]:
        """Logging, validation, checkpoint and hooks after an applied update; True = stop now."""
        cfg = self.cfg
        self._apply_freeze()
        if self._pbar is not None:
            self._pbar.update(1)
        if self.step % cfg.log_interval == 0:
            self._log_interval(iv)
            iv = _Interval()
        if self.validate_fn is not None and cfg.valid_interval > 0 and self.step % cfg.valid_interval == 0:
            self.run_validation()
        if cfg.checkpoint_interval > 0 and self.step % cfg.checkpoint_interval == 0:
            self.save_checkpoint()
        if self.on_step_end is not None:
            self.on_step_end(self)
        done = cfg.max_steps > 0 and self.step >= cfg.max_steps
        return iv, done

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum: int, frame: Any) -> None:
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # second Ctrl-C: stop at once, without a checkpoint
            self._stop_signal = signum
            log.warning("received %s: finishing the current update, then writing a checkpoint "
                        "(Ctrl-C again to abort at once)", signal.Signals(signum).name)

        old = {}
        for s in (signal.SIGTERM, signal.SIGINT):
            old[s] = signal.signal(s, handler)
        return old

    def _epochs_done(self) -> bool:
        return self.cfg.max_epochs > 0 and self.epoch >= self.cfg.max_epochs

    def _steps_done(self) -> bool:
        return self.cfg.max_steps > 0 and self.step >= self.cfg.max_steps

    def _train(self) -> FitResult:
        cfg = self.cfg
        iv = _Interval()
        stop = False
        while not (self._steps_done() or self._epochs_done() or stop):
            mid_epoch = self.batch_in_epoch > 0
            if not mid_epoch and self._pending_rng is not None:
                ckpt.set_rng_state(self._pending_rng)  # epoch-boundary checkpoint: before iter()
                self._pending_rng = None
            if not mid_epoch and self.sampler is not None and hasattr(self.sampler, "set_epoch"):
                self.sampler.set_epoch(self.epoch)
            if self._pbar is not None:
                self._pbar.set_description(f"epoch {self.epoch}")
            try:
                it = iter(self.train_loader)
            except (RuntimeError, ValueError) as e:
                if not (mid_epoch and self._pending_rng is not None):
                    raise
                raise ckpt.CheckpointError(f"'{self._last_ckpt_path}': cannot restore its data position (epoch "
                                           f"{self.epoch}, batch {self.batch_in_epoch}): {e}") from e
            skip, self._pending_skip = self._pending_skip, 0
            for _ in range(skip):
                next(it)
            if self._pending_rng is not None:
                ckpt.set_rng_state(self._pending_rng)  # mid-epoch checkpoint: the iterator already existed
                self._pending_rng = None
            win = _Window()
            n_batches = 0
            for batch in it:
                n_batches += 1
                self.batch_in_epoch += 1
                win.micro += 1
                self._micro_step(batch, win, iv, sync=win.micro == cfg.accum_grad)
                if win.micro < cfg.accum_grad:
                    continue
                stop_req = win.stop
                if self._finish_window(win, iv):
                    iv, done = self._after_update(iv)
                    stop = done
                win = _Window()
                if stop_req:
                    return self._interrupted()
                if stop:
                    break
            else:
                if win.micro > 0:  # a partial window at the end of the epoch still makes an update
                    stop_req = win.stop
                    if self._finish_window(win, iv):
                        iv, done = self._after_update(iv)
                        stop = done
                    if stop_req:
                        return self._interrupted()
                if n_batches == 0 and not mid_epoch:
                    raise RuntimeError(f"the training data yielded no batch in epoch {self.epoch}")
                self.epoch += 1
                self.batch_in_epoch = 0
                if cfg.valid_at_epoch_end and self.validate_fn is not None and self.last_valid_step != self.step:
                    self.run_validation()
                if cfg.checkpoint_every_epoch:
                    self.save_checkpoint()
                if self._stop_signal is not None:
                    return self._interrupted()
        if self.validate_fn is not None and self.last_valid_step != self.step:
            self.run_validation()
        if self.last_ckpt_step != self.step or self._last_ckpt_path is None:
            self.save_checkpoint()
        self._finalize_outputs()
        log.info("training finished: %d updates, %d epochs; skipped %d non-finite and %d OOM batches%s",
                 self.step, self.epoch, self.n_nonfinite, self.n_oom,
                 f"; best {cfg.best_metric} {self.best_value:.4g} at update {self.best_step}"
                 if self.best_value is not None else "")
        return FitResult("finished", self.step, self.epoch, None, self.best_value, self.best_step,
                         self._last_ckpt_path)

    def _interrupted(self) -> FitResult:
        if self.last_ckpt_step != self.step or self._last_ckpt_path is None:
            self.save_checkpoint(on_signal=True)
        sig = self._stop_signal or signal.SIGTERM
        log.warning("stopped by %s at update %d; resume with the same command (checkpoint %s)",
                    signal.Signals(sig).name, self.step, self._last_ckpt_path)
        return FitResult("interrupted", self.step, self.epoch, int(sig), self.best_value, self.best_step,
                         self._last_ckpt_path)

    def fit(self) -> FitResult:
        """Train until ``max_steps``/``max_epochs`` or a SIGTERM/SIGINT; resumes when possible."""
        cfg = self.cfg
        if self.rank == 0:
            self.exp_dir.mkdir(parents=True, exist_ok=True)
            if cfg.log_file:
                setup_logging(self.exp_dir / cfg.log_file)
        else:  # other ranks: warnings only (e.g. a skipped batch), tagged with the rank
            root = logging.getLogger()
            root.setLevel(logging.WARNING)
            if not root.handlers:
                h = logging.StreamHandler()
                h.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [rank {self.rank}] "
                                                 "[%(name)s] %(message)s", datefmt="%Y-%m-%d %H:%M:%S"))
                root.addHandler(h)
        lock = self.exp_lock if self.exp_lock is not None else ExpDirLock(self.exp_dir)
        own_lock = not lock.held
        err = None
        if self.rank == 0 and own_lock:
            try:
                lock.acquire()
            except ExpDirLocked as e:
                err = str(e)
        err = du.broadcast_object(err)
        if err is not None:
            raise ExpDirLocked(err)
        old_handlers: dict[int, Any] = {}
        try:
            seed = cfg.seed + self.rank
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            self._setup()
            resumed = self._resume()
            self._apply_freeze()
            self.model.train()
            self._open_outputs(resumed)
            if self.rank == 0:
                n_train = sum(p.numel() for n, p in self.model.named_parameters() if n in self._trainable)
                log.info("training in %s on %s (world size %d): %d trainable parameters, %s",
                         self.exp_dir, self.device, self.world, n_train,
                         "resumed" if resumed else "from scratch")
            old_handlers = self._install_signals()
            return self._train()
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)
            self._close_outputs()
            if own_lock:
                lock.release()
