"""What the training loop's callables return: :class:`LossResult` (the loss contract of
``compute_loss``; see :mod:`distill.train.trainer`), :class:`FitResult` (the outcome of a run) and
:class:`TrainingDiverged`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

__all__ = ["LossResult", "FitResult", "TrainingDiverged", "ComputeLoss", "Validate", "as_loss_result"]


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
    signal: int | None = None
    best_value: float | None = None
    best_step: int | None = None
    checkpoint: Path | None = None

    @property
    def exit_code(self) -> int:
        """0 when finished; ``128 + signal`` when stopped by SIGTERM/SIGINT (143 / 130)."""
        return 0 if self.status == "finished" else 128 + int(self.signal or 0)


class TrainingDiverged(RuntimeError):
    """Too many consecutive updates were skipped (non-finite losses/gradients or OOM)."""


ComputeLoss = Callable[[nn.Module, Any], "LossResult | tuple"]
Validate = Callable[[nn.Module], Mapping[str, float]]


def as_loss_result(out: Any) -> LossResult:
    """``compute_loss``'s return value as a checked :class:`LossResult` (``num`` a float)."""
    if isinstance(out, LossResult):
        res = out
    elif isinstance(out, (tuple, list)) and len(out) == 3:
        res = LossResult(loss=out[0], stats=dict(out[1] or {}), num=out[2])
    else:
        raise TypeError(f"compute_loss must return LossResult or (loss_sum, stats, num), got {type(out).__name__}")
    if not isinstance(res.loss, torch.Tensor) or res.loss.numel() != 1:
        raise TypeError(
            "compute_loss: loss must be a one-element tensor (the sum over the batch), got "
            f"{getattr(res.loss, 'shape', type(res.loss).__name__)}"
        )
    num = float(res.num.item() if isinstance(res.num, torch.Tensor) else res.num)
    if num < 0 or not math.isfinite(num):
        raise ValueError(f"compute_loss: num must be a finite count >= 0, got {num}")
    res.num = num
    return res
