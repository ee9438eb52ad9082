"""Generic training engine shared by every training stage (teacher, distillation, baselines).

See ``docs/training.md``. Main entry points: :class:`Trainer`, :class:`TrainConfig`,
:func:`average_checkpoints`, and the :mod:`distill.train.distributed` helpers. The recipe's training
stage (``python -m distill.bin.train``) is :mod:`distill.train.stage` (schema:
:mod:`distill.train.stage_config`; models: :mod:`distill.train.stage_models`; losses:
:mod:`distill.train.tasks`), not imported here.
"""

from .averaging import average_checkpoints, average_state_dicts
from .batches import describe_batch
from .checkpoint import CheckpointError, atomic_save, latest_valid_checkpoint, load_model_state
from .config import FreezeConfig, OptimConfig, ScheduleConfig, TrainConfig
from .lock import ExpDirLock, ExpDirLocked
from .optim import build_optimizer
from .results import FitResult, LossResult, TrainingDiverged
from .samplers import IndexBatchSampler
from .schedulers import SCHEDULES, build_scheduler, register_schedule, schedule_factor
from .trainer import Trainer

__all__ = [
    "Trainer",
    "TrainConfig",
    "OptimConfig",
    "ScheduleConfig",
    "FreezeConfig",
    "LossResult",
    "FitResult",
    "TrainingDiverged",
    "build_optimizer",
    "describe_batch",
    "average_checkpoints",
    "average_state_dicts",
    "CheckpointError",
    "atomic_save",
    "latest_valid_checkpoint",
    "load_model_state",
    "ExpDirLock",
    "ExpDirLocked",
    "IndexBatchSampler",
    "SCHEDULES",
    "build_scheduler",
    "register_schedule",
    "schedule_factor",
]
