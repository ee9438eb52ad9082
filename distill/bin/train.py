"""Stages 3–5: one entry point for teacher fine-tuning, stage-1 and stage-2 distillation, baselines.

    python -m distill.bin.train --config conf/teacher.yaml [key=value ...]
    python -m distill.bin.train --config conf/stage1.yaml teacher=exp/teacher/model
    torchrun --nproc-per-node 4 -m distill.bin.train --config conf/stage2.yaml

``task: teacher`` trains one model on the labels (LF-MMI and/or CTC); ``task: distill`` trains a
student from a frozen teacher; ``task: distill_streaming`` does the same with a chunk-streaming
student (stage 2). Every option is validated before any work starts; see docs/stages.md. The run
resumes from the newest checkpoint in ``exp_dir`` (``resume: true``) and ends by writing the final
model (``final: best | last | avg``) as a Hugging Face directory ``<exp_dir>/model``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

import torch

from distill.config import ConfigError, config_to_dict, dump_config, load_config, path_field
from distill.data.tokenizer import TokenizerError, TokenMismatchError, check_same_tokens, copy_token_files
from distill.losses.objective import ObjectiveConfig
from distill.train.config import TrainConfig

log = logging.getLogger("distill.bin.train")

TASKS = ("teacher", "distill", "distill_streaming")


@dataclass
class DataSection:
    """Training/validation batches (lhotse dynamic bucketing over ``<lang_dir>/cuts_*.jsonl.gz``)."""

    max_duration: float = 100.0  # seconds of audio per batch (per process)
    max_cuts: Optional[int] = None
    num_buckets: int = 10
    speed_perturb: list[float] = field(default_factory=list)  # e.g. [0.9, 1.0, 1.1]; must be off with teacher_cache
    valid_max_duration: float = 200.0
    valid_max_batches: int = 0  # 0 = the whole dev set
    wer_normalize: Optional[str] = None  # e.g. gigaspeech (see distill.scoring.wer)


@dataclass
class ModelSection:
    """The model trained by ``task: teacher``."""

    init: Literal["pretrained", "scratch"] = "pretrained"
    path: Optional[str] = path_field(None)  # HF directory or fairseq .pt (init: pretrained)
    preset: Optional[str] = None  # init: scratch (see distill.models.PRESETS)
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
    preset: Optional[str] = "student-12x384-cnn128-256"
    init_from: Optional[str] = path_field(None)  # a model (HF dir / .pt) to start from instead (stage 2: S_N)
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
    left_chunks: Optional[int] = None  # left context in chunks (None = unlimited)
    causal_pos_conv: bool = True


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
    den: Optional[str] = None  # denominator graph; default <lang_dir>/den.pt (when an LF-MMI term is used)
    teacher: Optional[str] = path_field(None)  # teacher model (HF dir / fairseq .pt) for distill*
    model: ModelSection = field(default_factory=ModelSection)
    student: StudentSection = field(default_factory=StudentSection)
    streaming: StreamingSection = field(default_factory=StreamingSection)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    spec_augment: SpecAugmentSection = field(default_factory=SpecAugmentSection)
    data: DataSection = field(default_factory=DataSection)
    teacher_cache: bool = False  # store teacher outputs per cut on disk and reuse them across epochs
    teacher_cache_dir: Optional[str] = path_field(None, output_dir=True)  # default <exp_dir>/teacher_cache
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
            bad("objective", f"task teacher trains on labels only, but {sorted(distill_terms)} are weighted: "
                "set distill_weight, kl_weight and feature_weight to 0")
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
                bad("data.speed_perturb", "must be off with teacher_cache: true (cached targets are for the "
                    "unperturbed audio)")
            if not distill_terms:
                bad("teacher_cache", "no distillation term is weighted: there is nothing to cache")
    if cfg.task != "teacher" and cfg.student.init_from is None and cfg.student.overrides.get("wave_norm") == "utterance" \
            and (cfg.student.streamable or cfg.task == "distill_streaming"):
        bad("student.overrides", "wave_norm 'utterance' needs the whole utterance and the student could not stream "
            "in stage 2: remove it (a student of a per-utterance teacher then uses causal running "
            "normalisation, wave_norm: running) or set student.streamable: false for an offline-only student")
    if cfg.task == "distill_streaming":
        s = cfg.streaming
        if not s.chunk_frames or any(c < 0 for c in s.chunk_frames):
            bad("streaming.chunk_frames", f"a non-empty list of chunk sizes >= 0 (0 = full attention), got "
                f"{s.chunk_frames}")
        if s.left_chunks is not None and s.left_chunks < 0:
            bad("streaming.left_chunks", "must be >= 0 or null")
    if used & {"mmi_kd", "lfmmi"}:
        den = Path(cfg.den) if cfg.den else Path(cfg.lang_dir) / "den.pt"
        if not den.is_file():
            bad("den", f"denominator graph '{den}' does not exist: build it with `python -m "
                f"distill.bin.build_den_graph --config conf/den.yaml lang_dir={cfg.lang_dir}`")
    if cfg.num_workers < 0:
        bad("num_workers", "must be >= 0")
    if cfg.data.max_duration <= 0:
        bad("data.max_duration", "must be > 0")
    if cfg.final == "avg" and cfg.train.average_last < 2:
        bad("final", "avg needs train.average_last >= 2 (or use final: best / last)")
    from distill.models.config import PRESETS, W2V2Config

    fields = {f.name for f in dataclasses.fields(W2V2Config)}
    for key, preset, ov in (("model", cfg.model.preset, cfg.model.overrides),
                            ("student", cfg.student.preset, cfg.student.overrides)):
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


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple[TrainStageConfig, str]:
    """``--config FILE [key=value ...]`` → a checked config (exit status 2 with the key on an error)."""
    import argparse

    import yaml

    ap = argparse.ArgumentParser(prog="python -m distill.bin.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help="YAML file with the stage's options")
    ap.add_argument("--print-config", action="store_true", help="print the effective config and exit")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    args = ap.parse_args(argv)
    src = args.config or "<defaults>"
    if args.overrides:
        src += " (with command-line overrides)"
    try:
        cfg = load_config(TrainStageConfig, args.config, args.overrides)
        check_config(cfg, src)
    except ConfigError as e:
        ap.exit(2, f"error: {e}\n")
    if args.print_config:
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        raise SystemExit(0)
    return cfg, src


# --------------------------------------------------------------------------------------------------
def _override_values(overrides: dict[str, Any], key: str) -> dict[str, Any]:
    from distill.models.config import W2V2Config

    known = {f.name for f in dataclasses.fields(W2V2Config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"key '{key}': unknown model config field(s) {unknown} (known: W2V2Config fields)")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}


def _preset_config(preset: str, overrides: dict[str, Any], key: str) -> Any:
    from distill.models.config import get_config

    try:
        return get_config(preset).replace(**_override_values(overrides, f"{key.rsplit('.', 1)[0]}.overrides"))
    except KeyError as e:
        raise ConfigError(f"key '{key}': {e.args[0]}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"key '{key.rsplit('.', 1)[0]}.overrides': {e}") from None


def _apply_overrides(model: Any, overrides: dict[str, Any], key: str) -> Any:
    from distill.train.tasks import rebuild_with_config

    if not overrides:
        return model
    try:
        return rebuild_with_config(model, **_override_values(overrides, key))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"key '{key}': {e}") from None


def _load_model(path: str, key: str, vocab_size: Optional[int] = None) -> Any:
    from distill.models import CheckpointError, load_pretrained

    try:
        return load_pretrained(path, vocab_size=vocab_size)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        raise ConfigError(f"key '{key}': cannot load '{path}': {e}") from None


def _check_tokens(path: str, label: str, key: str, model: Any, lang_dir: str, vocab: int) -> None:
    """ConfigError naming ``key`` unless the model at ``path`` has the lang dir's output units (its token
    inventory when it carries one, else its size): see :func:`distill.data.tokenizer.check_same_tokens`."""
    try:
        check_same_tokens(path, label, lang_dir, "lang dir", a_size=model.config.vocab_size, b_size=vocab)
    except TokenizerError as e:
        raise ConfigError(f"key '{key}': {e}") from None


def build_teacher_model(cfg: TrainStageConfig, vocab: int, stats_loader: Optional[Callable[[], Any]] = None) -> Any:
    """Stage 3's model: pretrained (a new head when the checkpoint's does not fit) or from scratch.
    ``stats_loader`` makes a loader of training batches for ``wave_norm: fixed`` statistics."""
    from torch import nn

    from distill.models import CheckpointError, build_model, load_pretrained
    from distill.train.tasks import estimate_wave_stats

    m = cfg.model
    changes = {}
    if m.init == "scratch":
        mcfg = _preset_config(m.preset, m.overrides, "model.preset")
        if (mcfg.wave_norm == "fixed" and not {"wave_mean", "wave_std"} & set(m.overrides)
                and stats_loader is not None and m.wave_stats_batches > 0):
            mean, std = estimate_wave_stats(stats_loader(), m.wave_stats_batches)
            mcfg = mcfg.replace(wave_mean=mean, wave_std=std)
            log.info("wave_norm fixed: mean %.3g, std %.4g from %d training batches", mean, std, m.wave_stats_batches)
        model = build_model(mcfg, vocab)
    else:
        changes = dict(m.overrides)
        try:
            model = load_pretrained(m.path, vocab_size=vocab)
        except CheckpointError as first:
            model = _load_model(m.path, "model.path")
            if model.config.vocab_size == vocab:
                raise ConfigError(f"key 'model.path': {first}") from None
            why = f"'{m.path}' has an output layer of {model.config.vocab_size} units; the lang has {vocab}"
        else:
            try:
                check_same_tokens(m.path, "checkpoint", cfg.lang_dir, "lang dir", a_size=vocab, b_size=vocab)
                why = ""
            except TokenMismatchError as e:  # a packaged checkpoint with other tokens than the lang's
                why = str(e)
            except TokenizerError as e:
                raise ConfigError(f"key 'model.path': {e}") from None
        if why:
            log.warning("%s: a new output layer is trained", why)
            model.lm_head = nn.Linear(model.config.hidden_size, vocab)
            nn.init.normal_(model.lm_head.weight, std=0.02)
            nn.init.zeros_(model.lm_head.bias)
            model.config = model.config.replace(vocab_size=vocab)
    sa = cfg.spec_augment
    if sa.time_prob > 0:
        changes.update(mask_time_prob=sa.time_prob, mask_time_length=sa.time_length)
    return _apply_overrides(model.train(), changes, "model.overrides")


def build_task(cfg: TrainStageConfig, tokenizer: Any, cmvn_loader: Optional[Callable[[], Any]] = None) -> Any:
    """The module the trainer trains (see :mod:`distill.train.tasks`). ``cmvn_loader`` makes a loader of
    training batches for the Fbank front-end's CMVN (fresh students) and ``wave_norm: fixed`` statistics
    (teachers from scratch)."""
    from distill.graph.fsa import Fsa
    from distill.losses.objective import DistillObjective
    from distill.models import make_student
    from distill.train import tasks as T

    vocab = tokenizer.vocab_size
    obj_cfg = cfg.objective
    den = None
    if obj_cfg.ever_used() & {"mmi_kd", "lfmmi"}:
        den_path = cfg.den or str(Path(cfg.lang_dir) / "den.pt")
        try:
            den = Fsa.load(den_path)
        except (OSError, ValueError) as e:
            raise ConfigError(f"key 'den': {e}") from None
        if den.max_label() >= vocab:
            raise ConfigError(f"key 'den': '{den_path}' uses token id {den.max_label()} but the lang has "
                              f"{vocab} tokens: rebuild it for this lang_dir")

    def dims(m: Any) -> tuple[int, int, int]:
        return m.config.num_hidden_layers, m.config.hidden_size, m.config.feature_dim

    sa = cfg.spec_augment
    if cfg.task == "teacher":
        model = build_teacher_model(cfg, vocab, cmvn_loader)
        T.add_channel_masking(model, sa.channel_masks, sa.channel_width)
        return T.TeacherTask(model, DistillObjective(obj_cfg, den, dims(model)))

    teacher = _load_model(cfg.teacher, "teacher") if cfg.teacher else None
    if teacher is not None:
        _check_tokens(cfg.teacher, "teacher", "teacher", teacher, cfg.lang_dir, vocab)
    st = cfg.student
    changes: dict[str, Any] = {}
    if st.init_from:
        student = _load_model(st.init_from, "student.init_from")
        _check_tokens(st.init_from, "model", "student.init_from", student, cfg.lang_dir, vocab)
        changes = dict(st.overrides)
    else:
        student = make_student(teacher, _preset_config(st.preset, st.overrides, "student.preset"),
                               layer_init=st.layer_init, copy_head=st.copy_head,
                               streamable=st.streamable or cfg.task == "distill_streaming")
    prior = False  # running normalisation that replaces a per-utterance one: its prior comes from the data
    if cfg.task == "distill_streaming" and student.config.wave_norm == "utterance" and "wave_norm" not in changes:
        log.warning("'%s' normalises each utterance, which cannot stream: the streaming student uses causal "
                    "running normalisation (wave_norm: running) instead", st.init_from)
        changes["wave_norm"] = "running"
        prior = True
    elif not st.init_from and teacher is not None and teacher.config.wave_norm == "utterance":
        prior = student.config.wave_norm == "running" and not {"wave_mean", "wave_std"} & set(st.overrides)
    if prior and cmvn_loader is not None and st.wave_stats_batches > 0:
        mean, std = T.estimate_wave_stats(cmvn_loader(), st.wave_stats_batches)
        changes.update(wave_mean=mean, wave_std=std)
        log.info("wave_norm running: prior mean %.3g, std %.4g from %d training batches", mean, std,
                 st.wave_stats_batches)
    if sa.time_prob > 0:
        changes.update(mask_time_prob=sa.time_prob, mask_time_length=sa.time_length)
    student = _apply_overrides(student.train(), changes, "student.overrides")
    T.add_channel_masking(student, sa.channel_masks, sa.channel_width)
    if (student.config.frontend == "fbank" and st.fbank_cmvn_batches > 0 and not st.init_from
            and cmvn_loader is not None):
        mean, std = T.estimate_fbank_cmvn(student, cmvn_loader(), st.fbank_cmvn_batches)
        log.info("fbank CMVN from %d batches: mean %.2f, std %.2f (averages over bins)",
                 st.fbank_cmvn_batches, float(mean.mean()), float(std.mean()))
    objective = DistillObjective(obj_cfg, den, dims(student), dims(teacher) if teacher is not None else None)
    if not objective.needs_teacher():
        teacher = None  # labels-only baseline: the teacher only initialised the student
    cache = None
    if cfg.teacher_cache:
        cache_dir = cfg.teacher_cache_dir or str(Path(cfg.exp_dir) / "teacher_cache")
        fp = T.config_fingerprint(teacher, cfg.teacher)
        fp["targets"] = objective.teacher_needs()
        from distill.data.manifests import read_cuts_size

        size = read_cuts_size(cfg.lang_dir, "train") or (None, None)  # checks the cache fits the free disk
        cache = T.TeacherCache(cache_dir, fp, getattr(torch, cfg.teacher_cache_dtype),
                               values_per_frame=T.cache_values_per_frame(teacher, fp["targets"]),
                               hours=size[0], utterances=size[1])
        cache.open()
    chunks: list[int] = cfg.streaming.chunk_frames if cfg.task == "distill_streaming" else []
    return T.DistillTask(student, teacher, objective, chunks, cfg.streaming.left_chunks,
                         cfg.streaming.causal_pos_conv, cache)


def _freeze_prefixes(cfg: TrainStageConfig, task: Any) -> None:
    """Freeze prefixes are written relative to the trained model (``feature_extractor.``); those not
    naming a part of the task module get the trained model's prefix (``student.``/``model.``)."""
    tops = {n.split(".")[0] + "." for n, _ in task.named_parameters()}
    for fr in cfg.train.freeze:
        fr.prefixes = [p if any(p.startswith(t) for t in tops) else task.trained_prefix + p for p in fr.prefixes]


def export_final(cfg: TrainStageConfig, task: Any) -> Path:
    """Write the chosen final weights of the trained model to ``<exp_dir>/model`` (Hugging Face format),
    with the lang dir's token files, so that the directory is self-contained."""
    import copy

    from distill.models import save_pretrained
    from distill.models.wav2vec2 import W2V2Model
    from distill.train.checkpoint import load_model_state

    exp = Path(cfg.exp_dir)
    names = {"best": "best.pt", "last": "last.pt", "avg": f"avg{cfg.train.average_last}.pt"}
    path = exp / names[cfg.final]
    if not path.exists():
        log.warning("%s does not exist (no validation ran?); exporting last.pt", path)
        path = exp / "last.pt"
    trained = task.trained_model()
    config = copy.deepcopy(trained.config)
    if getattr(task, "chunks", None):
        config = config.replace(chunk_frames=task.chunks[0], left_chunks=task.left_chunks if task.chunks[0] else None,
                                causal_pos_conv=task.causal_pos_conv)
    model = W2V2Model(config)
    model.load_state_dict(load_model_state(path))
    out = save_pretrained(model.eval(), exp / "model")
    copy_token_files(cfg.lang_dir, out)
    (exp / "final.json").write_text(json.dumps({"source": path.name, "model": str(out)}, indent=1) + "\n")
    log.info("final model (%s) written to %s", path.name, out)
    return out


def make_train_loader(cfg: TrainStageConfig, tokenizer: Any, rank: int, world: int) -> Any:
    """This rank's shuffled training batches; the :class:`~distill.data.AsrDataLoader` is also the trainer's
    resume position (exact mid-epoch, whatever its workers prefetched)."""
    from distill.data import load_cuts, make_dataloader

    d = cfg.data
    return make_dataloader(load_cuts(cfg.lang_dir, "train"), tokenizer, d.max_duration, shuffle=True,
                           rank=rank, world_size=world, seed=cfg.seed, num_buckets=d.num_buckets,
                           num_workers=cfg.num_workers, speed_perturb=d.speed_perturb or None,
                           max_cuts=d.max_cuts)


def _lock_exp_dir(exp_dir: str, rank: int) -> Any:
    """Rank 0 takes ``<exp_dir>/.lock`` before anything is loaded or written, so that a second run on the
    same directory stops at once (:class:`~distill.train.ExpDirLocked`, naming the holder) instead of
    overwriting ``train.yaml`` or filling the teacher cache of the running one."""
    from distill.train import ExpDirLock, ExpDirLocked, distributed

    lock = ExpDirLock(exp_dir)
    err = None
    if rank == 0:
        try:
            lock.acquire()
        except ExpDirLocked as e:
            err = str(e)
    err = distributed.broadcast_object(err)
    if err is not None:
        raise ExpDirLocked(err)
    return lock


def run(cfg: TrainStageConfig) -> int:
    """Train one stage; returns the exit status (0, or 128+signal when interrupted)."""
    from distill.data import Tokenizer, load_cuts, make_dataloader
    from distill.train import Trainer, distributed
    from distill.train import tasks as T

    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    rank, world = distributed.init()
    lock = None
    try:
        lock = _lock_exp_dir(cfg.exp_dir, rank)
        tc = cfg.train
        tc.exp_dir, tc.device, tc.resume, tc.seed = cfg.exp_dir, cfg.device, cfg.resume, cfg.seed
        tc.exclude_from_checkpoint = sorted(set(tc.exclude_from_checkpoint) | {"teacher."})
        tc.export_prefix = "model." if cfg.task == "teacher" else "student."
        if rank == 0 and tc.log_file:  # the model set-up below logs too (student init, input statistics)
            from distill.log import setup_logging

            setup_logging(Path(cfg.exp_dir) / tc.log_file)
        if cfg.objective.feature_only_steps > 0:
            tc.ddp_find_unused_parameters = True  # feat_proj / projections idle in one of the two phases
        torch.manual_seed(cfg.seed)
        tok = Tokenizer.load(cfg.lang_dir)
        d = cfg.data
        train_dl = make_train_loader(cfg, tok, rank, world)
        dev_dl = make_dataloader(load_cuts(cfg.lang_dir, "dev"), tok, d.valid_max_duration, shuffle=False,
                                 rank=rank, world_size=world, seed=cfg.seed, num_workers=0)
        task = build_task(cfg, tok, lambda: make_dataloader(load_cuts(cfg.lang_dir, "train"), tok, d.max_duration,
                                                            shuffle=True, seed=cfg.seed))
        if rank == 0:  # the config as written (freeze prefixes relative to the trained model), re-runnable
            Path(cfg.exp_dir).mkdir(parents=True, exist_ok=True)
            dump_config(cfg, Path(cfg.exp_dir) / "train.yaml")
        _freeze_prefixes(cfg, task)
        freeze_fns = []
        if cfg.objective.feature_only_steps > 0:
            prefix = "student.fbank_frontend." if task.student.config.frontend == "fbank" else \
                "student.feature_extractor."
            freeze_fns.append(((lambda n, p=prefix: not n.startswith((p, "objective.feat_proj."))),
                               cfg.objective.feature_only_steps))
        trained = task.trained_model()
        trainer = Trainer(tc, task, T.compute_loss, train_dl, sampler=train_dl,
                          validate=T.make_validate(task, dev_dl, tok, d.wer_normalize, d.valid_max_batches),
                          freeze_fns=freeze_fns,
                          model_meta={"task": cfg.task, "model_config": trained.config.to_dict()},
                          exp_lock=lock)
        task.step_fn = lambda: trainer.step
        result = trainer.fit()
        if task.num_dropped:
            log.warning("utterances dropped for a non-finite loss (this process): %s", task.num_dropped)
        if getattr(task, "cache", None) is not None:
            log.info("teacher cache: %d hits, %d misses", task.cache.hits, task.cache.misses)
        if result.status == "finished" and rank == 0:
            export_final(cfg, task)
        distributed.cleanup()
        return result.exit_code
    except BaseException:
        distributed.cleanup(barrier=False)
        raise
    finally:
        if lock is not None:
            lock.release()


def main(argv: Optional[Sequence[str]] = None) -> None:
    cfg, src = parse_args(argv)
    from distill.data.prep_common import DataPrepError
    from distill.data.tokenizer import TokenizerError
    from distill.models import CheckpointError
    from distill.train import CheckpointError as TrainCheckpointError
    from distill.train import ExpDirLocked
    from distill.train.tasks import TeacherCacheError

    try:
        code = run(cfg)
    except ConfigError as e:
        print(f"error: {src}: {e}", file=sys.stderr)
        code = 2
    except (ExpDirLocked, TrainCheckpointError, CheckpointError, TeacherCacheError, DataPrepError,
            TokenizerError) as e:
        print(f"error: {e}", file=sys.stderr)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
