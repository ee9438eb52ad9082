"""The stage-agnostic training loop shared by the teacher, the distillation stages and the baselines.

A stage supplies a model, a loss callable and a data loader; the :class:`Trainer` owns everything
else: AdamW + LR schedule, gradient accumulation and clipping, mixed precision, parameter freezing,
DDP, validation and best-model selection, crash-safe checkpoints with exact resume, signal handling,
non-finite/OOM batch skipping, and progress/TensorBoard/jsonl logging. This module is the loop (set-up,
freezing, micro-batches, updates, signals); its parts live beside it: checkpoints and resume in
:mod:`~distill.train.save_resume`, logging and validation in :mod:`~distill.train.outputs`, the
result types in :mod:`~distill.train.results`. It is longer than 500 lines because the
micro-step, the update and the interruption paths share the loop's state and read best side by side.

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
import gc
import logging
import math
import random
import signal
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from distill.config import ConfigError
from distill.log import setup_logging

from . import checkpoint as ckpt
from . import distributed as du
from .batches import describe_batch, move_to_device
from .config import TrainConfig
from .freezing import frozen_at, make_freeze_rules
from .lock import ExpDirLock, ExpDirLocked
from .optim import build_optimizer
from .outputs import Interval, OutputsMixin
from .results import ComputeLoss, FitResult, LossResult, TrainingDiverged, Validate, as_loss_result
from .save_resume import SaveResumeMixin
from .schedulers import build_scheduler

# LossResult, FitResult, TrainingDiverged, describe_batch, move_to_device, build_optimizer: importable from
# here as before their modules were split off
__all__ = [
    "LossResult",
    "FitResult",
    "TrainingDiverged",
    "Trainer",
    "describe_batch",
    "move_to_device",
    "build_optimizer",
]

log = logging.getLogger(__name__)


class _Window:
    """Accumulators of one optimizer update (accum_grad micro-batches)."""

    def __init__(self) -> None:
        self.micro = 0  # micro-batches seen
        self.applied = 0  # micro-batches back-propagated (on every rank)
        self.num = 0.0  # global normaliser of the applied micro-batches
        self.synced = False  # a DDP-synchronising backward happened
        self.stop = False


class Trainer(SaveResumeMixin, OutputsMixin):
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

    def __init__(
        self,
        cfg: TrainConfig,
        model: nn.Module,
        compute_loss: ComputeLoss,
        train_loader: Iterable[Any],
        *,
        sampler: Any = None,
        validate: Validate | None = None,
        freeze_fns: Sequence[tuple[Callable[[str], bool], int]] = (),
        describe_batch: Callable[[Any], str] = describe_batch,
        on_step_end: Callable[[Trainer], None] | None = None,
        device: str | torch.device | None = None,
        model_meta: dict | None = None,
        exp_lock: ExpDirLock | None = None,
    ) -> None:
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
            raise RuntimeError(
                f"WORLD_SIZE={self.world} but no process group: call "
                "distill.train.distributed.init() before creating the Trainer"
            )
        self._freeze_rules = make_freeze_rules(cfg.freeze, [n for n, _ in model.named_parameters()], list(freeze_fns))
        # state saved in checkpoints
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.n_nonfinite = 0
        self.n_oom = 0
        self.n_fp16_overflow = 0
        self.consecutive_bad = 0
        self.last_valid_step = -1
        self.last_ckpt_step = -1
        # runtime
        self.ddp: nn.Module | None = None
        self._frozen: frozenset[str] | None = None
        self._stop_signal: int | None = None
        self._pending_rng: dict | None = None
        self._pending_skip = 0
        self._last_ckpt_path: Path | None = None
        self._tb: Any = None
        self._pbar: Any = None
        self._jsonl: Any = None

    # ------------------------------------------------------------------ set-up
    def _apply_freeze(self) -> None:
        """Set ``requires_grad`` for the current step; (re)wrap DDP when the trainable set changes."""
        frozen = frozen_at(self._freeze_rules, self._trainable, self.step)
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
            self.ddp = DDP(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.cfg.ddp_find_unused_parameters,
            )

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
        if (
            self.sampler is not None
            and self.sampler is getattr(self.train_loader, "sampler", None)
            and getattr(self.train_loader, "num_workers", 0) > 0
        ):
            log.warning(
                "the DataLoader prefetches with workers and its sampler's state counts the prefetched "
                "batches: a mid-epoch resume may skip them (use distill.data.AsrDataLoader)"
            )

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

    def _micro_step(self, batch: Any, win: _Window, iv: Interval, sync: bool) -> None:
        """Forward one micro-batch, agree with the other ranks whether to use it, back-propagate."""
        ddp_ctx = (
            self.ddp.no_sync()
            if self.ddp is not None and not sync  # type: ignore[operator]
            else contextlib.nullcontext()
        )
        with ddp_ctx:
            status, detail, res = "ok", "", None
            try:
                with self._autocast():
                    res = as_loss_result(self.compute_loss(self.loss_model, move_to_device(batch, self.device)))
                if not bool(torch.isfinite(res.loss.detach()).all()):
                    status, detail = "nonfinite", f"loss={res.loss.item()}"
            except torch.OutOfMemoryError as e:
                status, detail, res = "oom", str(e).splitlines()[0] if str(e) else "out of memory", None
            if status == "oom":
                self._free_memory()
            flags = torch.tensor(
                [
                    status == "nonfinite",
                    status == "oom",
                    self._stop_signal is not None,
                    res.num if res is not None and status == "ok" else 0.0,
                ],
                dtype=torch.float64,
                device=self.device if self.ddp is not None else "cpu",
            )
            g = du.all_reduce_sum(flags).tolist()
            win.stop = win.stop or g[2] > 0
            if status != "ok":
                log.warning(
                    "epoch %d batch %d: %s (%s); batch skipped [%s]",
                    self.epoch,
                    self.batch_in_epoch,
                    "non-finite loss" if status == "nonfinite" else "out of memory",
                    detail,
                    self.describe(batch),
                )
            if g[0] > 0 or g[1] > 0:
                if g[0] > 0:
                    self.n_nonfinite += 1
                else:
                    self.n_oom += 1
                self.consecutive_bad += 1
                if status == "ok" and self.rank == 0 and self.world > 1:
                    log.warning(
                        "epoch %d batch %d skipped on every rank: another rank had a bad batch",
                        self.epoch,
                        self.batch_in_epoch,
                    )
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
                        "re-synchronised after this; lower the batch size (max_duration)"
                    )
                log.warning(
                    "epoch %d batch %d: out of memory in backward; dropping this update's gradients [%s]",
                    self.epoch,
                    self.batch_in_epoch,
                    self.describe(batch),
                )
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

    def _finish_window(self, win: _Window, iv: Interval) -> bool:
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
                f"The last good checkpoint is {self._last_ckpt_path}"
            )
        return applied

    def _after_update(self, iv: Interval) -> tuple[Interval, bool]:
        """Logging, validation, checkpoint and hooks after an applied update; True = stop now."""
        cfg = self.cfg
        self._apply_freeze()
        if self._pbar is not None:
            self._pbar.update(1)
        if self.step % cfg.log_interval == 0:
            self._log_interval(iv)
            iv = Interval()
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
            log.warning(
                "received %s: finishing the current update, then writing a checkpoint (Ctrl-C again to abort at once)",
                signal.Signals(signum).name,
            )

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
        iv = Interval()
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
                raise ckpt.CheckpointError(
                    f"'{self._last_ckpt_path}': cannot restore its data position (epoch "
                    f"{self.epoch}, batch {self.batch_in_epoch}): {e}"
                ) from e
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
        log.info(
            "training finished: %d updates, %d epochs; skipped %d non-finite and %d OOM batches%s",
            self.step,
            self.epoch,
            self.n_nonfinite,
            self.n_oom,
            f"; best {cfg.best_metric} {self.best_value:.4g} at update {self.best_step}"
            if self.best_value is not None
            else "",
        )
        return FitResult("finished", self.step, self.epoch, None, self.best_value, self.best_step, self._last_ckpt_path)

    def _interrupted(self) -> FitResult:
        if self.last_ckpt_step != self.step or self._last_ckpt_path is None:
            self.save_checkpoint(on_signal=True)
        sig = self._stop_signal or signal.SIGTERM
        log.warning(
            "stopped by %s at update %d; resume with the same command (checkpoint %s)",
            signal.Signals(sig).name,
            self.step,
            self._last_ckpt_path,
        )
        return FitResult(
            "interrupted", self.step, self.epoch, int(sig), self.best_value, self.best_step, self._last_ckpt_path
        )

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
                h.setFormatter(
                    logging.Formatter(
                        f"%(asctime)s %(levelname)s [rank {self.rank}] [%(name)s] %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S",
                    )
                )
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
                log.info(
                    "training in %s on %s (world size %d): %d trainable parameters, %s",
                    self.exp_dir,
                    self.device,
                    self.world,
                    n_train,
                    "resumed" if resumed else "from scratch",
                )
            old_handlers = self._install_signals()
            return self._train()
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)
            self._close_outputs()
            if own_lock:
                lock.release()
