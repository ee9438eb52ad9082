"""Learning-rate schedules as a registry of factor functions.

A schedule maps the 1-based index ``u`` of the update about to be applied to a factor that multiplies
each parameter group's base learning rate (``OptimConfig.lr``). :func:`build_scheduler` wraps the
factor in a :class:`torch.optim.lr_scheduler.LambdaLR`, whose ``state_dict`` holds only plain numbers,
so it can be checkpointed and loaded with ``torch.load(weights_only=True)``.

New schedules register with ``@register_schedule("name")``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from distill.config import ConfigError

from .config import ScheduleConfig

__all__ = ["SCHEDULES", "register_schedule", "schedule_factor", "build_scheduler"]

Factor = Callable[[int], float]
ScheduleFactory = Callable[[ScheduleConfig, int], Factor]

SCHEDULES: dict[str, ScheduleFactory] = {}


def register_schedule(name: str) -> Callable[[ScheduleFactory], ScheduleFactory]:
    """Decorator adding ``factory(cfg, total_steps) -> factor(u)`` to :data:`SCHEDULES`."""

    def deco(fn: ScheduleFactory) -> ScheduleFactory:
        if name in SCHEDULES:
            raise ValueError(f"schedule '{name}' is already registered")
        SCHEDULES[name] = fn
        return fn

    return deco


def _warmup(u: int, warmup: int, start: float = 0.0) -> float:
    """Linear ramp from ``start`` (before the first update) to 1 at update ``warmup``."""
    return start + (1.0 - start) * min(1.0, u / warmup)


def _need_total(cfg: ScheduleConfig, total: int) -> int:
    if total <= 0:
        raise ConfigError(
            f"schedule '{cfg.name}' needs the total number of updates: set "
            "train.max_steps or train.schedule.total_steps"
        )
    return total


@register_schedule("tri_stage")
def _tri_stage(cfg: ScheduleConfig, total: int) -> Factor:
    if cfg.phase_ratio is not None:
        total = _need_total(cfg, total)
        warm, hold = (int(total * r) for r in cfg.phase_ratio[:2])
        decay = total - warm - hold
    else:
        warm, hold, decay = cfg.warmup_steps, cfg.hold_steps, cfg.decay_steps
    init, final = cfg.init_lr_scale, cfg.final_lr_scale
    if final <= 0 and cfg.decay == "exponential":
        raise ConfigError("schedule 'tri_stage': exponential decay needs final_lr_scale > 0")

    def factor(u: int) -> float:
        if warm > 0 and u <= warm:
            return _warmup(u, warm, init)
        t = u - warm - hold
        if t <= 0:
            return 1.0
        if t >= decay:
            return final
        frac = t / decay
        if cfg.decay == "exponential":
            return math.exp(math.log(final) * frac)
        return 1.0 - (1.0 - final) * frac

    return factor


@register_schedule("noam")
def _noam(cfg: ScheduleConfig, total: int) -> Factor:
    warm = max(1, cfg.warmup_steps)
    return lambda u: min(u / warm, math.sqrt(warm / max(u, 1)))


def _warmup_then_decay(cfg: ScheduleConfig, total: int, shape: Callable[[float], float]) -> Factor:
    """Linear warm-up, then ``final + (1 - final) * shape(frac)`` with frac going 0 -> 1 until ``total``."""
    total = _need_total(cfg, total)
    warm, final = cfg.warmup_steps, cfg.final_lr_scale

    def factor(u: int) -> float:
        if warm > 0 and u <= warm:
            return _warmup(u, warm)
        frac = min(1.0, (u - warm) / max(1, total - warm))
        return final + (1.0 - final) * shape(frac)

    return factor


@register_schedule("cosine")
def _cosine(cfg: ScheduleConfig, total: int) -> Factor:
    return _warmup_then_decay(cfg, total, lambda frac: 0.5 * (1.0 + math.cos(math.pi * frac)))


@register_schedule("linear")
def _linear(cfg: ScheduleConfig, total: int) -> Factor:
    return _warmup_then_decay(cfg, total, lambda frac: 1.0 - frac)


@register_schedule("constant")
def _constant(cfg: ScheduleConfig, total: int) -> Factor:
    warm = cfg.warmup_steps
    return lambda u: _warmup(u, warm) if warm > 0 else 1.0


def schedule_factor(cfg: ScheduleConfig, total_steps: int = 0) -> Factor:
    """The factor function ``u -> lr / peak_lr`` of ``cfg`` (``u`` = 1-based update index)."""
    if cfg.name not in SCHEDULES:
        raise ConfigError(
            f"train config: key 'schedule.name': unknown schedule '{cfg.name}' (known: {', '.join(sorted(SCHEDULES))})"
        )
    total = cfg.total_steps or total_steps
    return SCHEDULES[cfg.name](cfg, total)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR whose ``last_epoch`` counts applied updates; call ``.step()`` after each update.

    LambdaLR evaluates its lambda at ``last_epoch`` (0 before the first update), hence the shift to
    the 1-based update index: the very first update already uses ``factor(1)`` (never a zero LR).
    """
    factor = schedule_factor(cfg, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: factor(s + 1))
