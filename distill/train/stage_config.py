"""The schema of a training stage (stages 3–5): :class:`TrainStageConfig`, its sections, and the
cross-field checks that run before any work starts (:func:`check_config`).

``python -m distill.bin.train`` parses a YAML file into it; :func:`distill.train.stage.run` runs it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from distill.config import ConfigError, path_field
from distill.losses.objective import ObjectiveConfig
from distill.models.config import PRESETS, W2V2Config

from .config import TrainConfig

__all__ = [
    "TASKS",
    "DataSection",
    "ModelSection",
    "StudentSection",
    "StreamingSection",
    "SpecAugmentSection",
    "TrainStageConfig",
    "check_config",
]

TASKS = ("teacher", "distill", "distill_streaming")


@dataclass
class DataSection:
    """Training/validation batches (lhotse dynamic bucketing over ``<lang_dir>/cuts_*.jsonl.gz``)."""

    max_duration: float = 100.0  # seconds of audio per batch (per process)
    max_cuts: int | None = None
    num_buckets: int = 10
    speed_perturb: list[float] = field(default_factory=list)  # e.g. [0.9, 1.0, 1.1]; must be off with teacher_cache
    valid_max_duration: float = 200.0
    valid_max_batches: int = 0  # 0 = the whole dev set
    wer_normalize: str | None = None  # e.g. gigaspeech (see distill.scoring.wer)


@dataclass
class ModelSection:
    """The model trained by ``task: teacher``."""

    init: Literal["pretrained", "scratch"] = "pretrained"
    path: str | None = path_field(None)  # HF directory or fairseq .pt (init: pretrained)
    preset: str | None = None  # init: scratch (see distill.models.PRESETS)
    # W2V2Config fields: with init: scratch any field (architecture too); with a checkpoint only fields
    # that keep the parameter layout (dropouts, layerdrop, mask_time_prob, ...)
    overrides: dict[str, Any] = field(default_factory=dict)
    # init: scratch with overrides wave_norm: fixed and no wave_mean/wave_std: estimate them on this
    # many training batches
    wave_stats_batches: int = 20


@dataclass
class StudentSection:
    """The student of ``task: distill*``: from a preset initialised from the teacher, or from a model."""

    # the recipes' default: 12 x 384 on a lighter CNN, 13.4x smaller / ~11x faster than w2v2-large (its CNN
    # starts fresh; "student-12x384" copies the teacher's but is only 3.7x faster; README Benchmarks)
    preset: str | None = "student-12x384-cnn128-256"
    init_from: str | None = path_field(None)  # a model (HF dir / .pt) to start from instead (stage 2: S_N)
    layer_init: Literal["every_k", "first_k"] = "every_k"
    copy_head: bool = True
    # W2V2Config fields applied to the preset before the student is built (architecture too), or to
    # the init_from model (then only fields that keep the parameter layout: dropouts, ...)
    overrides: dict[str, Any] = field(default_factory=dict)
    fbank_cmvn_batches: int = 20  # Fbank front-end: estimate global CMVN on this many batches (0 = identity)
    # the student must be able to stream (stage 2): a teacher that normalises each utterance (lv60) gets
    # a student with causal running normalisation (wave_norm: running) whose prior is estimated on
    # wave_stats_batches training batches; false keeps the teacher's scaling (an offline-only student)
    streamable: bool = True
    wave_stats_batches: int = 20


@dataclass
class StreamingSection:
    """Chunk-streaming student (stage 2): chunk sizes in 20 ms frames; 0 in the list = full attention."""

    chunk_frames: list[int] = field(default_factory=lambda: [24])  # several = dynamic-chunk training
    left_chunks: int | None = None  # left context in chunks (None = unlimited)
    causal_pos_conv: bool = True
    # the teacher's attention during stage 2 (ours, not the paper's; null = full context as in the paper):
    # N > 0 = chunk-masked to N frames (N = chunk_frames: the student's right context; larger: a little
    # look-ahead); its positional conv stays as trained
    teacher_chunk_frames: int | None = None
    # the teacher's targets delayed by N frames: student frame t learns teacher frame t - N, so a chunked
    # student may emit a token after the full-context teacher does (ours)
    teacher_delay_frames: int = 0


@dataclass
class SpecAugmentSection:
    """Masking of the trained model's features (training only): W2V2 time masks with the learned
    mask embedding, and channel masks (zeros) on the front-end output."""

    time_prob: float = 0.0  # ~share of frames masked (W2V2 mask_time_prob: prob*T/time_length spans)
    time_length: int = 10
    channel_masks: int = 0
    channel_width: int = 64


@dataclass
class TrainStageConfig:
    """Stages 3–5 of the recipe: ``task: teacher | distill | distill_streaming``."""

    task: Literal["teacher", "distill", "distill_streaming"] = "distill"
    lang_dir: str = path_field("data/lang")
    exp_dir: str = path_field("exp/train", output_dir=True)
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)
    resume: bool = True  # continue from the newest checkpoint in exp_dir
    num_workers: int = 2  # DataLoader worker processes
    num_threads: int = 0  # torch CPU threads (0 = torch's default)
    seed: int = 42
    den: str | None = None  # denominator graph; default <lang_dir>/den.pt (when an LF-MMI term is used)
    teacher: str | None = path_field(None)  # teacher model (HF dir / fairseq .pt) for distill*
    model: ModelSection = field(default_factory=ModelSection)
    student: StudentSection = field(default_factory=StudentSection)
    streaming: StreamingSection = field(default_factory=StreamingSection)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    spec_augment: SpecAugmentSection = field(default_factory=SpecAugmentSection)
    data: DataSection = field(default_factory=DataSection)
    teacher_cache: bool = False  # store teacher outputs per cut on disk and reuse them across epochs
    teacher_cache_dir: str | None = path_field(None, output_dir=True)  # default <exp_dir>/teacher_cache
    teacher_cache_dtype: Literal["float16", "float32"] = "float16"
    final: Literal["best", "last", "avg"] = "best"  # weights exported to <exp_dir>/model (avg: train.average_last)
    train: TrainConfig = field(default_factory=TrainConfig)


def check_config(cfg: TrainStageConfig, src: str) -> None:
    """Cross-field checks; :class:`ConfigError` naming the key and the file."""

    def bad(key: str, msg: str) -> None:
        raise ConfigError(f"{src}: key '{key}': {msg}")

    try:
        cfg.objective.validate(f"{src}: objective")
        cfg.train.validate()
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith(src) else f"{src}: {msg}") from None
    obj = cfg.objective
    used = obj.ever_used()
    distill_terms = used & {"hid", "out", "mmi_kd", "kl", "feat"}
    if cfg.task == "teacher":
        if distill_terms:
            bad(
                "objective",
                f"task teacher trains on labels only, but {sorted(distill_terms)} are weighted: "
                "set distill_weight, kl_weight and feature_weight to 0",
            )
        if cfg.model.init == "pretrained" and cfg.model.path is None:
            bad("model.path", "required with model.init: pretrained (a HF directory or fairseq .pt)")
        if cfg.model.init == "scratch" and not cfg.model.preset:
            bad("model.preset", "required with model.init: scratch")
        if cfg.teacher_cache:
            bad("teacher_cache", "only for the distillation tasks")
    else:
        if cfg.teacher is None and (distill_terms or cfg.student.init_from is None):
            bad("teacher", f"required for task {cfg.task} (the teacher model: a HF directory or fairseq .pt)")
        if cfg.student.init_from is None and not cfg.student.preset:
            bad("student.preset", "set a student preset or student.init_from")
        if cfg.teacher_cache:
            if cfg.data.speed_perturb and any(f != 1.0 for f in cfg.data.speed_perturb):
                bad(
                    "data.speed_perturb",
                    "must be off with teacher_cache: true (cached targets are for the unperturbed audio)",
                )
            if not distill_terms:
                bad("teacher_cache", "no distillation term is weighted: there is nothing to cache")
    if (
        cfg.task != "teacher"
        and cfg.student.init_from is None
        and cfg.student.overrides.get("wave_norm") == "utterance"
        and (cfg.student.streamable or cfg.task == "distill_streaming")
    ):
        bad(
            "student.overrides",
            "wave_norm 'utterance' needs the whole utterance and the student could not stream "
            "in stage 2: remove it (a student of a per-utterance teacher then uses causal running "
            "normalisation, wave_norm: running) or set student.streamable: false for an offline-only student",
        )
    if cfg.task == "distill_streaming":
        s = cfg.streaming
        if not s.chunk_frames or any(c < 0 for c in s.chunk_frames):
            bad(
                "streaming.chunk_frames",
                f"a non-empty list of chunk sizes >= 0 (0 = full attention), got {s.chunk_frames}",
            )
        if s.left_chunks is not None and s.left_chunks < 0:
            bad("streaming.left_chunks", "must be >= 0 or null")
        if s.teacher_chunk_frames is not None and s.teacher_chunk_frames <= 0:
            bad("streaming.teacher_chunk_frames", f"must be > 0 or null (full context), got {s.teacher_chunk_frames}")
        if s.teacher_delay_frames < 0:
            bad("streaming.teacher_delay_frames", f"must be >= 0, got {s.teacher_delay_frames}")
    if used & {"mmi_kd", "lfmmi"}:
        den = Path(cfg.den) if cfg.den else Path(cfg.lang_dir) / "den.pt"
        if not den.is_file():
            bad(
                "den",
                f"denominator graph '{den}' does not exist: build it with `python -m "
                f"distill.bin.build_den_graph --config conf/den.yaml lang_dir={cfg.lang_dir}`",
            )
    if cfg.num_workers < 0:
        bad("num_workers", "must be >= 0")
    if cfg.data.max_duration <= 0:
        bad("data.max_duration", "must be > 0")
    if cfg.final == "avg" and cfg.train.average_last < 2:
        bad("final", "avg needs train.average_last >= 2 (or use final: best / last)")
    fields = {f.name for f in dataclasses.fields(W2V2Config)}
    for key, preset, ov in (
        ("model", cfg.model.preset, cfg.model.overrides),
        ("student", cfg.student.preset, cfg.student.overrides),
    ):
        if preset is not None and preset not in PRESETS:
            bad(f"{key}.preset", f"unknown preset {preset!r}; known: {', '.join(sorted(PRESETS))}")
        unknown = sorted(set(ov) - fields)
        if unknown:
            bad(f"{key}.overrides", f"unknown model config field(s) {unknown}")
        for k, v in ov.items():  # free-form values: the float check of distill.config does not reach them
            if isinstance(v, float) and not math.isfinite(v):
                bad(f"{key}.overrides.{k}", f"{v} is not a finite number (no option accepts nan or inf)")
    sa = cfg.spec_augment
    if not 0.0 <= sa.time_prob < 1.0:
        bad("spec_augment.time_prob", "must lie in [0, 1)")
    if cfg.train.exp_dir not in ("exp/train", cfg.exp_dir):
        bad("train.exp_dir", f"'{cfg.train.exp_dir}' differs from exp_dir '{cfg.exp_dir}': set only exp_dir")
