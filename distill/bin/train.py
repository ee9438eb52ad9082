"""Stages 3–5: one entry point for teacher fine-tuning, stage-1 and stage-2 distillation, baselines.

    python -m distill.bin.train --config conf/teacher.yaml [key=value ...]
    python -m distill.bin.train --config conf/stage1.yaml teacher=exp/teacher/model
    torchrun --nproc-per-node 4 -m distill.bin.train --config conf/stage2.yaml

``task: teacher`` trains one model on the labels (LF-MMI and/or CTC); ``task: distill`` trains a
student from a frozen teacher; ``task: distill_streaming`` does the same with a chunk-streaming
student (stage 2). Every option is validated before any work starts; see docs/stages.md. The run
resumes from the newest checkpoint in ``exp_dir`` (``resume: true``) and ends by writing the final
model (``final: best | last | avg``) as a Hugging Face directory ``<exp_dir>/model``. This module parses
the command line into a :class:`~distill.train.stage_config.TrainStageConfig`; :func:`distill.train.stage.run`
trains.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from distill.config import ConfigError, load_config, show_config
from distill.data.prep_common import DataPrepError
from distill.data.tokenizer import TokenizerError
from distill.models import CheckpointError
from distill.train import CheckpointError as TrainCheckpointError
from distill.train import ExpDirLocked
from distill.train.stage import run
from distill.train.stage_config import TrainStageConfig, check_config
from distill.train.teacher_cache import TeacherCacheError

__all__ = ["TrainStageConfig", "check_config", "parse_args", "main"]


def parse_args(argv: Sequence[str] | None = None) -> tuple[TrainStageConfig, str]:
    """``--config FILE [key=value ...]`` → a checked config (exit status 2 with the key on an error)."""
    ap = argparse.ArgumentParser(prog="python -m distill.bin.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help="YAML file with the stage's options")
    ap.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective config, with the file that set each value, and exit",
    )
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    args = ap.parse_args(argv)
    src = args.config or "<defaults>"
    if args.overrides:
        src += " (with command-line overrides)"
    try:
        if args.print_config:
            show_config(TrainStageConfig, args.config, args.overrides)
        cfg = load_config(TrainStageConfig, args.config, args.overrides)
        check_config(cfg, src)
    except ConfigError as e:
        ap.exit(2, f"error: {e}\n")
    if args.print_config:
        raise SystemExit(0)
    return cfg, src


def main(argv: Sequence[str] | None = None) -> None:
    """Parse, train (:func:`distill.train.stage.run`) and exit: 2 for a config error, 1 for a refused
    input (checkpoint, lock, data, tokens, teacher cache), else the run's status."""
    cfg, src = parse_args(argv)
    try:
        code = run(cfg)
    except ConfigError as e:
        print(f"error: {src}: {e}", file=sys.stderr)
        code = 2
    except (ExpDirLocked, TrainCheckpointError, CheckpointError, TeacherCacheError, DataPrepError, TokenizerError) as e:
        print(f"error: {e}", file=sys.stderr)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
