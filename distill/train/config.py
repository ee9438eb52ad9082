"""Configuration dataclasses of the trainer: plain, YAML-friendly, validated by :mod:`distill.config`.

A stage's schema embeds :class:`TrainConfig` as a section, e.g. ``train: {max_steps: 20000, optim:
{lr: 5e-5}}``, and overrides reach it with dotted keys (``train.optim.lr=3e-5``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from distill.config import ConfigError

__all__ = ["OptimConfig", "ScheduleConfig", "FreezeConfig", "TrainConfig"]


@dataclass
class OptimConfig:
    """AdamW (or Adam) hyper-parameters."""

    name: Literal["adamw", "adam"] = "adamw"
    lr: float = 5e-5  # peak learning rate; schedules multiply it by a factor in [0, 1]
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.01
    # Biases and 1-D parameters (layer-norm gains) get no weight decay, as is usual for Transformers.
    no_decay_1d: bool = True


@dataclass
class ScheduleConfig:
    """Learning-rate schedule; ``name`` selects an entry of :data:`distill.train.schedulers.SCHEDULES`.

    * ``tri_stage`` (W2V2 fine-tuning): linear warm-up from ``init_lr_scale`` to 1 over
      ``warmup_steps``, hold at 1 for ``hold_steps``, decay (exponential or linear) to
      ``final_lr_scale`` over ``decay_steps``, then stay there. With ``phase_ratio`` the three phase
      lengths are fractions of the total number of steps instead.
    * ``noam``: linear warm-up to 1 at ``warmup_steps``, then ``sqrt(warmup_steps / step)``.
    * ``cosine``: linear warm-up, then half a cosine from 1 down to ``final_lr_scale`` at the last step.
    * ``linear``: linear warm-up, then linear decay to ``final_lr_scale`` at the last step.
    * ``constant``: linear warm-up, then 1.
    """

    name: str = "tri_stage"
    warmup_steps: int = 0
    hold_steps: int = 0
    decay_steps: int = 0
    phase_ratio: list[float] | None = None
    init_lr_scale: float = 0.01
    final_lr_scale: float = 0.05
    decay: Literal["exponential", "linear"] = "exponential"
    # Length of the schedule; 0 = take TrainConfig.max_steps (or max_epochs x batches per epoch).
    total_steps: int = 0


@dataclass
class FreezeConfig:
    """Freeze the parameters whose names start with any of ``prefixes`` for the first ``steps`` updates.

    ``steps: -1`` freezes them for the whole run. Example: ``{prefixes: [feature_extractor.],
    steps: 10000}`` keeps the W2V2 CNN fixed for 10k updates.
    """

    prefixes: list[str] = field(default_factory=list)
    steps: int = -1


@dataclass
class TrainConfig:
    """Everything the generic :class:`~distill.train.trainer.Trainer` needs (not the model or data)."""

    exp_dir: str = "exp/train"
    seed: int = 42
    device: str = "auto"  # auto = cuda:LOCAL_RANK when CUDA is available, else cpu
    max_steps: int = 0  # optimizer updates; 0 = no limit (then max_epochs must be set)
    max_epochs: int = 0  # 0 = no limit (then max_steps must be set)
    accum_grad: int = 1  # micro-batches per optimizer update
    grad_clip: float = 0.0  # max global L2 grad norm; <= 0 disables clipping (the norm is still logged)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast on CUDA only; fp32 on CPU
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    freeze: list[FreezeConfig] = field(default_factory=list)
    # Logging / validation
    log_interval: int = 50  # updates between progress/TensorBoard/jsonl records
    valid_interval: int = 0  # updates between validations; 0 = only at the end of each epoch
    valid_at_epoch_end: bool = True
    best_metric: str = "loss"  # key of the validation dict that chooses best.pt
    best_mode: Literal["min", "max"] = "min"
    progress: bool = True  # tqdm bar on rank 0
    tensorboard: bool = True
    log_file: str = "train.log"  # relative to exp_dir; "" leaves the logging set-up alone
    num_unit: str = "frames"  # what LossResult.num counts, for the throughput display
    # Checkpoints
    checkpoint_interval: int = 1000  # updates between full checkpoints; 0 = only epoch ends/end/signal
    checkpoint_every_epoch: bool = True
    keep_last: int = 3  # full checkpoints kept in exp_dir/checkpoints
    average_last: int = 0  # >1: write exp_dir/avg<N>.pt from the last N checkpoints at the end
    resume: bool = True  # continue from the newest valid checkpoint in exp_dir/checkpoints
    # State-dict keys starting with these prefixes are not saved (e.g. a frozen teacher: "teacher.").
    exclude_from_checkpoint: list[str] = field(default_factory=list)
    # Model files (best.pt, last.pt, avg*.pt) keep only keys under this prefix, with it stripped
    # (e.g. "student." so that best.pt loads straight into the student); "" keeps all keys.
    export_prefix: str = ""
    # Robustness
    max_consecutive_nonfinite: int = 20  # abort after this many skipped updates in a row
    ddp_find_unused_parameters: bool = False

    def validate(self) -> None:
        """Check cross-field constraints; raises :class:`ConfigError` naming the key."""

        def bad(key: str, msg: str) -> None:
            raise ConfigError(f"train config: key '{key}': {msg}")

        if self.max_steps < 0:
            bad("max_steps", f"must be >= 0, got {self.max_steps}")
        if self.max_epochs < 0:
            bad("max_epochs", f"must be >= 0, got {self.max_epochs}")
        if self.max_steps == 0 and self.max_epochs == 0:
            bad("max_steps", "set max_steps or max_epochs (both are 0: training would never end)")
        if self.accum_grad < 1:
            bad("accum_grad", f"must be >= 1, got {self.accum_grad}")
        if self.log_interval < 1:
            bad("log_interval", f"must be >= 1, got {self.log_interval}")
        for key in ("valid_interval", "checkpoint_interval"):
            if getattr(self, key) < 0:
                bad(key, f"must be >= 0, got {getattr(self, key)}")
        if self.keep_last < 1:
            bad("keep_last", f"must be >= 1, got {self.keep_last}")
        if self.average_last > self.keep_last:
            bad(
                "average_last",
                f"{self.average_last} > keep_last={self.keep_last}: the checkpoints to "
                "average would already be deleted; raise keep_last",
            )
        if self.max_consecutive_nonfinite < 1:
            bad("max_consecutive_nonfinite", "must be >= 1")
        if self.optim.lr <= 0:
            bad("optim.lr", f"must be > 0, got {self.optim.lr}")
        if not all(0.0 <= b < 1.0 for b in self.optim.betas):
            bad("optim.betas", f"must lie in [0, 1), got {list(self.optim.betas)}")
        for i, fr in enumerate(self.freeze):
            if not fr.prefixes:
                bad(f"freeze[{i}].prefixes", "is empty")
            if fr.steps < -1:
                bad(f"freeze[{i}].steps", f"must be -1 (always) or >= 0, got {fr.steps}")
        s = self.schedule
        if s.phase_ratio is not None and (len(s.phase_ratio) != 3 or abs(sum(s.phase_ratio) - 1) > 1e-6):
            bad("schedule.phase_ratio", f"must be 3 fractions summing to 1, got {s.phase_ratio}")
        for key in ("warmup_steps", "hold_steps", "decay_steps", "total_steps"):
            if getattr(s, key) < 0:
                bad(f"schedule.{key}", "must be >= 0")


def replace(cfg: TrainConfig, **changes: object) -> TrainConfig:
    """A copy of ``cfg`` with some fields changed (handy in tests and scripts)."""
    return dataclasses.replace(cfg, **changes)
