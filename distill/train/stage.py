"""One training stage (stages 3–5), from its checked :class:`~distill.train.stage_config.TrainStageConfig`
to the exported model: the lock of the experiment directory, data loaders, the task module (model(s),
objective, denominator graph, teacher cache), the :class:`~distill.train.trainer.Trainer`, and the final
model as a self-contained Hugging Face directory. ``python -m distill.bin.train`` calls :func:`run`.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from distill.config import ConfigError, dump_config
from distill.data import Tokenizer, load_cuts, make_dataloader
from distill.data.manifests import read_cuts_size
from distill.data.tokenizer import copy_token_files
from distill.graph.fsa import Fsa
from distill.log import setup_logging
from distill.losses.objective import DistillObjective
from distill.models import save_pretrained
from distill.models.wav2vec2 import W2V2Model

from . import distributed
from . import tasks as T
from .checkpoint import load_model_state
from .lock import ExpDirLock, ExpDirLocked
from .stage_config import TrainStageConfig
from .stage_models import add_channel_masking, build_student, build_teacher_model, load_teacher
from .teacher_cache import TeacherCache, cache_values_per_frame, config_fingerprint
from .trainer import Trainer
from .validation import make_validate

__all__ = ["build_task", "export_final", "make_train_loader", "run"]

log = logging.getLogger("distill.bin.train")  # the stage's log lines keep the logger name of its entry point


def build_task(cfg: TrainStageConfig, tokenizer: Any, cmvn_loader: Callable[[], Any] | None = None) -> Any:
    """The module the trainer trains (see :mod:`distill.train.tasks`). ``cmvn_loader`` makes a loader of
    training batches for the Fbank front-end's CMVN (fresh students) and ``wave_norm: fixed`` statistics
    (teachers from scratch)."""
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
            raise ConfigError(
                f"key 'den': '{den_path}' uses token id {den.max_label()} but the lang has "
                f"{vocab} tokens: rebuild it for this lang_dir"
            )

    def dims(m: Any) -> tuple[int, int, int]:
        return m.config.num_hidden_layers, m.config.hidden_size, m.config.feature_dim

    sa = cfg.spec_augment
    if cfg.task == "teacher":
        model = build_teacher_model(cfg, vocab, cmvn_loader)
        add_channel_masking(model, sa.channel_masks, sa.channel_width)
        return T.TeacherTask(model, DistillObjective(obj_cfg, den, dims(model)))

    teacher = load_teacher(cfg, vocab)
    student = build_student(cfg, teacher, vocab, cmvn_loader)
    s = cfg.streaming
    streaming = cfg.task == "distill_streaming"
    if streaming and teacher is not None and s.teacher_chunk_frames:
        # before the cache fingerprint, which records the teacher's config
        teacher.set_streaming(s.teacher_chunk_frames, s.left_chunks, teacher.config.causal_pos_conv)
    objective = DistillObjective(obj_cfg, den, dims(student), dims(teacher) if teacher is not None else None)
    if not objective.needs_teacher():
        teacher = None  # labels-only baseline: the teacher only initialised the student
    cache = None
    if cfg.teacher_cache:
        cache_dir = cfg.teacher_cache_dir or str(Path(cfg.exp_dir) / "teacher_cache")
        fp = config_fingerprint(teacher, cfg.teacher)
        fp["targets"] = objective.teacher_needs()
        size = read_cuts_size(cfg.lang_dir, "train") or (None, None)  # checks the cache fits the free disk
        cache = TeacherCache(
            cache_dir,
            fp,
            getattr(torch, cfg.teacher_cache_dtype),
            values_per_frame=cache_values_per_frame(teacher, fp["targets"]),
            hours=size[0],
            utterances=size[1],
        )
        cache.open()
    return T.DistillTask(
        student,
        teacher,
        objective,
        s.chunk_frames if streaming else [],
        s.left_chunks,
        s.causal_pos_conv,
        cache,
        teacher_delay=s.teacher_delay_frames if streaming else 0,
    )


def _freeze_prefixes(cfg: TrainStageConfig, task: Any) -> None:
    """Freeze prefixes are written relative to the trained model (``feature_extractor.``); those not
    naming a part of the task module get the trained model's prefix (``student.``/``model.``)."""
    tops = {n.split(".")[0] + "." for n, _ in task.named_parameters()}
    for fr in cfg.train.freeze:
        fr.prefixes = [p if any(p.startswith(t) for t in tops) else task.trained_prefix + p for p in fr.prefixes]


def export_final(cfg: TrainStageConfig, task: Any) -> Path:
    """Write the chosen final weights of the trained model to ``<exp_dir>/model`` (Hugging Face format),
    with the lang dir's token files, so that the directory is self-contained."""
    exp = Path(cfg.exp_dir)
    names = {"best": "best.pt", "last": "last.pt", "avg": f"avg{cfg.train.average_last}.pt"}
    path = exp / names[cfg.final]
    if not path.exists():
        log.warning("%s does not exist (no validation ran?); exporting last.pt", path)
        path = exp / "last.pt"
    trained = task.trained_model()
    config = copy.deepcopy(trained.config)
    if getattr(task, "chunks", None):
        config = config.replace(
            chunk_frames=task.chunks[0],
            left_chunks=task.left_chunks if task.chunks[0] else None,
            causal_pos_conv=task.causal_pos_conv,
        )
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
    d = cfg.data
    return make_dataloader(
        load_cuts(cfg.lang_dir, "train"),
        tokenizer,
        d.max_duration,
        shuffle=True,
        rank=rank,
        world_size=world,
        seed=cfg.seed,
        num_buckets=d.num_buckets,
        num_workers=cfg.num_workers,
        speed_perturb=d.speed_perturb or None,
        max_cuts=d.max_cuts,
    )


def _lock_exp_dir(exp_dir: str, rank: int) -> ExpDirLock:
    """Rank 0 takes ``<exp_dir>/.lock`` before anything is loaded or written, so that a second run on the
    same directory stops at once (:class:`~distill.train.ExpDirLocked`, naming the holder) instead of
    overwriting ``train.yaml`` or filling the teacher cache of the running one."""
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
            setup_logging(Path(cfg.exp_dir) / tc.log_file)
        if cfg.objective.feature_only_steps > 0:
            tc.ddp_find_unused_parameters = True  # feat_proj / projections idle in one of the two phases
        torch.manual_seed(cfg.seed)
        tok = Tokenizer.load(cfg.lang_dir)
        d = cfg.data
        train_dl = make_train_loader(cfg, tok, rank, world)
        dev_dl = make_dataloader(
            load_cuts(cfg.lang_dir, "dev"),
            tok,
            d.valid_max_duration,
            shuffle=False,
            rank=rank,
            world_size=world,
            seed=cfg.seed,
            num_workers=0,
        )
        task = build_task(
            cfg,
            tok,
            lambda: make_dataloader(load_cuts(cfg.lang_dir, "train"), tok, d.max_duration, shuffle=True, seed=cfg.seed),
        )
        if rank == 0:  # the config as written (freeze prefixes relative to the trained model), re-runnable
            Path(cfg.exp_dir).mkdir(parents=True, exist_ok=True)
            dump_config(cfg, Path(cfg.exp_dir) / "train.yaml")
        _freeze_prefixes(cfg, task)
        freeze_fns = []
        if cfg.objective.feature_only_steps > 0:
            prefix = (
                "student.fbank_frontend." if task.student.config.frontend == "fbank" else "student.feature_extractor."
            )
            freeze_fns.append(
                ((lambda n, p=prefix: not n.startswith((p, "objective.feat_proj."))), cfg.objective.feature_only_steps)
            )
        trained = task.trained_model()
        trainer = Trainer(
            tc,
            task,
            T.compute_loss,
            train_dl,
            sampler=train_dl,
            validate=make_validate(task, dev_dl, tok, d.wer_normalize, d.valid_max_batches),
            freeze_fns=freeze_fns,
            model_meta={"task": cfg.task, "model_config": trained.config.to_dict()},
            exp_lock=lock,
        )
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
