"""The models of a training stage, built from its config: the model of ``task: teacher`` (pretrained
or from scratch) and the teacher and student of the distillation tasks, with a :class:`ConfigError`
naming the key when a path, preset or override does not fit; and the set-up steps they share: a
config rebuild that keeps the weights, SpecAugment channel masks, input statistics from training
batches (``wave_norm`` constants, Fbank CMVN).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from distill.config import ConfigError
from distill.data.augment import mask_time_channels
from distill.data.tokenizer import TokenizerError, TokenMismatchError, check_same_tokens
from distill.models import CheckpointError, build_model, load_pretrained, make_student
from distill.models.config import W2V2Config, get_config
from distill.models.wav2vec2 import W2V2Model

from .stage_config import TrainStageConfig

__all__ = [
    "rebuild_with_config",
    "add_channel_masking",
    "estimate_wave_stats",
    "estimate_fbank_cmvn",
    "build_teacher_model",
    "load_teacher",
    "build_student",
]

log = logging.getLogger("distill.bin.train")  # the stage's log lines keep the logger name of its entry point


def rebuild_with_config(model: W2V2Model, **changes: Any) -> W2V2Model:
    """A copy of ``model`` whose config has ``changes`` (e.g. dropouts, SpecAugment time masking), with
    the weights carried over. Needed because dropout rates and the mask embedding are fixed at build
    time. A new ``masked_spec_embed`` (time masking switched on) is freshly initialised."""
    if not changes:
        return model
    new = W2V2Model(model.config.replace(**changes))
    try:
        missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    except RuntimeError as e:  # a shape differs (strict=False only forgives missing/unexpected keys)
        first = str(e).split("\n\t")[1] if "\n\t" in str(e) else str(e)
        raise ValueError(f"config changes {sorted(changes)} change the parameter layout ({first.strip()})") from None
    bad = [k for k in list(missing) + list(unexpected) if k != "masked_spec_embed"]
    if bad:
        raise ValueError(f"config changes {sorted(changes)} change the parameter layout ({bad[:4]})")
    if hasattr(model, "init_report"):
        new.init_report = model.init_report
    return new.train(model.training)


def add_channel_masking(model: W2V2Model, num_masks: int, max_width: int) -> None:
    """SpecAugment channel masks on the front-end features (input of the feature projection), in
    training mode only; a forward pre-hook, so the saved model is unchanged."""
    if num_masks <= 0 or max_width <= 0:
        return

    def hook(module: nn.Module, args: tuple) -> tuple | None:
        if not module.training:
            return None
        x = args[0]
        return (
            mask_time_channels(x, None, num_time_masks=0, num_channel_masks=num_masks, max_channel_width=max_width),
        )

    model.feature_projection.register_forward_pre_hook(hook)


@torch.no_grad()
def _loader_mean_std(
    loader: Any, max_batches: int, rows: Callable[[Tensor], Tensor], var_floor: float, what: str
) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation (float64, per column) of ``rows(valid audio)`` -- a [T, D] tensor
    per utterance -- over up to ``max_batches`` batches of ``loader``."""
    total, sq, count = 0.0, 0.0, 0
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        for wav, n in zip(batch["audio"], batch["audio_lens"].tolist()):
            x = rows(wav[:n]).double()
            total = total + x.sum(0)
            sq = sq + x.pow(2).sum(0)
            count += x.shape[0]
    if not count:
        raise ValueError(f"{what}: no samples in the training data")
    mean = total / count
    return mean, (sq / count - mean**2).clamp(min=var_floor).sqrt()


def estimate_wave_stats(loader: Any, max_batches: int = 20) -> tuple[float, float]:
    """Mean and standard deviation of the valid samples of up to ``max_batches`` training batches: the
    constants of ``wave_norm: fixed`` (a causal stand-in for per-utterance normalisation)."""
    mean, std = _loader_mean_std(loader, max_batches, lambda x: x[:, None], 1e-12, "estimate_wave_stats")
    return float(mean), float(std)


def estimate_fbank_cmvn(model: W2V2Model, loader: Any, max_batches: int = 20) -> tuple[Tensor, Tensor]:
    """Global fbank mean/std over up to ``max_batches`` training batches, written into the Fbank
    front-end's CMVN buffers (they are saved with the model)."""
    fe = model.fbank_frontend
    mean, std = _loader_mean_std(
        loader, max_batches, lambda x: fe.compute_fbank(x[None]).squeeze(0), 1e-8, "estimate_fbank_cmvn"
    )
    fe.mean.copy_(mean.to(fe.mean.dtype))
    fe.std.copy_(std.to(fe.std.dtype))
    return fe.mean.clone(), fe.std.clone()


# ---- the stage's models from its config ----------------------------------------------------------
def _override_values(overrides: dict[str, Any], key: str) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(W2V2Config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"key '{key}': unknown model config field(s) {unknown} (known: W2V2Config fields)")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}


def _preset_config(preset: str, overrides: dict[str, Any], key: str) -> Any:
    try:
        return get_config(preset).replace(**_override_values(overrides, f"{key.rsplit('.', 1)[0]}.overrides"))
    except KeyError as e:
        raise ConfigError(f"key '{key}': {e.args[0]}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"key '{key.rsplit('.', 1)[0]}.overrides': {e}") from None


def _apply_overrides(model: Any, overrides: dict[str, Any], key: str) -> Any:
    if not overrides:
        return model
    try:
        return rebuild_with_config(model, **_override_values(overrides, key))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"key '{key}': {e}") from None


def _load_model(path: str, key: str, vocab_size: int | None = None) -> Any:
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


def build_teacher_model(cfg: TrainStageConfig, vocab: int, stats_loader: Callable[[], Any] | None = None) -> Any:
    """Stage 3's model: pretrained (a new head when the checkpoint's does not fit) or from scratch.
    ``stats_loader`` makes a loader of training batches for ``wave_norm: fixed`` statistics."""
    m = cfg.model
    changes = {}
    if m.init == "scratch":
        mcfg = _preset_config(m.preset, m.overrides, "model.preset")
        if (
            mcfg.wave_norm == "fixed"
            and not {"wave_mean", "wave_std"} & set(m.overrides)
            and stats_loader is not None
            and m.wave_stats_batches > 0
        ):
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


def load_teacher(cfg: TrainStageConfig, vocab: int) -> W2V2Model | None:
    """The frozen teacher of ``task: distill*`` (None without ``teacher``), checked against the lang's tokens."""
    teacher = _load_model(cfg.teacher, "teacher") if cfg.teacher else None
    if teacher is not None:
        _check_tokens(cfg.teacher, "teacher", "teacher", teacher, cfg.lang_dir, vocab)
    return teacher


def build_student(
    cfg: TrainStageConfig, teacher: W2V2Model | None, vocab: int, cmvn_loader: Callable[[], Any] | None = None
) -> W2V2Model:
    """The student of ``task: distill*``: a preset initialised from ``teacher`` or the model
    ``student.init_from``, with its overrides, input scaling that streams, SpecAugment and (a fresh Fbank
    front-end) CMVN. ``cmvn_loader`` makes a loader of training batches for the input statistics."""
    sa = cfg.spec_augment
    st = cfg.student
    changes: dict[str, Any] = {}
    if st.init_from:
        student = _load_model(st.init_from, "student.init_from")
        _check_tokens(st.init_from, "model", "student.init_from", student, cfg.lang_dir, vocab)
        changes = dict(st.overrides)
    else:
        student = make_student(
            teacher,
            _preset_config(st.preset, st.overrides, "student.preset"),
            layer_init=st.layer_init,
            copy_head=st.copy_head,
            streamable=st.streamable or cfg.task == "distill_streaming",
        )
    prior = False  # running normalisation that replaces a per-utterance one: its prior comes from the data
    if cfg.task == "distill_streaming" and student.config.wave_norm == "utterance" and "wave_norm" not in changes:
        log.warning(
            "'%s' normalises each utterance, which cannot stream: the streaming student uses causal "
            "running normalisation (wave_norm: running) instead",
            st.init_from,
        )
        changes["wave_norm"] = "running"
        prior = True
    elif not st.init_from and teacher is not None and teacher.config.wave_norm == "utterance":
        prior = student.config.wave_norm == "running" and not {"wave_mean", "wave_std"} & set(st.overrides)
    if prior and cmvn_loader is not None and st.wave_stats_batches > 0:
        mean, std = estimate_wave_stats(cmvn_loader(), st.wave_stats_batches)
        changes.update(wave_mean=mean, wave_std=std)
        log.info(
            "wave_norm running: prior mean %.3g, std %.4g from %d training batches", mean, std, st.wave_stats_batches
        )
    if sa.time_prob > 0:
        changes.update(mask_time_prob=sa.time_prob, mask_time_length=sa.time_length)
    student = _apply_overrides(student.train(), changes, "student.overrides")
    add_channel_masking(student, sa.channel_masks, sa.channel_width)
    if (
        student.config.frontend == "fbank"
        and st.fbank_cmvn_batches > 0
        and not st.init_from
        and cmvn_loader is not None
    ):
        mean, std = estimate_fbank_cmvn(student, cmvn_loader(), st.fbank_cmvn_batches)
        log.info(
            "fbank CMVN from %d batches: mean %.2f, std %.2f (averages over bins)",
            st.fbank_cmvn_batches,
            float(mean.mean()),
            float(std.mean()),
        )
    return student
