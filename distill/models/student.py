"""Students initialised from a teacher (DistillW2V2 stage 1; Shrinking Bigfoot's layer subsets)."""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import nn

from .config import W2V2Config, get_config
from .wav2vec2 import W2V2Model

__all__ = ["make_student", "teacher_layer_for"]

log = logging.getLogger(__name__)


def teacher_layer_for(i: int, n_student: int, n_teacher: int, layer_init: str = "every_k") -> int:
    """0-based teacher layer that initialises (and, for hidden-state MSE, teaches) student layer ``i``.

    ``every_k``: student layer i+1 <- teacher layer round((i+1) * L_T / L_S) (1-based), i.e. every
    k-th layer ending with the last; ``first_k``: teacher layer i."""
    if layer_init == "first_k":
        return i
    if layer_init == "every_k":
        return max(0, min(n_teacher - 1, round((i + 1) * n_teacher / n_student) - 1))
    raise ValueError(f"layer_init must be 'every_k' or 'first_k', got {layer_init!r}")


def _copy(dst: nn.Module, src: nn.Module) -> bool:
    """Copy all parameters/buffers if every shape matches; report whether it did."""
    s, d = src.state_dict(), dst.state_dict()
    if s.keys() != d.keys() or any(s[k].shape != d[k].shape for k in s):
        return False
    dst.load_state_dict(s)
    return True


@torch.no_grad()
def make_student(
    teacher: W2V2Model,
    config: str | W2V2Config,
    layer_init: Literal["every_k", "first_k"] = "every_k",
    vocab_size: int | None = None,
    copy_head: bool = True,
    streamable: bool = True,
) -> W2V2Model:
    """A student of ``config`` (preset name or config) with weights copied from ``teacher`` where shapes
    allow, fresh initialisation elsewhere.

    Copied: the teacher's waveform scaling (``wave_norm``) unless the config sets one -- except that a
    ``streamable`` student of a per-utterance teacher gets causal running normalisation (``running``;
    its prior, ``wave_mean``/``wave_std``, is the caller's to estimate on training data); the CNN when
    its shape and norm match; the feature layer norm / projection when the
    widths match; the positional conv and encoder layer norm when the width matches; layer i from
    teacher layer :func:`teacher_layer_for` when width, FFN and heads match; the head when widths
    match and ``copy_head`` (a new head otherwise). ``student.init_report`` lists what was copied.
    """
    cfg = get_config(config)
    tcfg = teacher.config
    if cfg.do_stable_layer_norm != tcfg.do_stable_layer_norm:
        log.warning("student and teacher layer-norm layouts differ; encoder layers are not copied")
    vocab = tcfg.vocab_size if vocab_size is None else vocab_size
    if cfg.frontend == "cnn" and tcfg.frontend == "cnn" and cfg.wave_norm == "none" and tcfg.wave_norm != "none":
        # the student's CNN starts from (and its features are taught by) a CNN that saw scaled input
        cfg = cfg.replace(
            wave_norm=tcfg.wave_norm, wave_mean=tcfg.wave_mean, wave_std=tcfg.wave_std, wave_prior_s=tcfg.wave_prior_s
        )
        if streamable and cfg.wave_norm == "utterance":
            cfg = cfg.replace(wave_norm="running")
            log.info(
                "the teacher normalises each utterance, which cannot stream: the student uses causal "
                "running normalisation (wave_norm: running)"
            )
    student = W2V2Model(cfg.replace(vocab_size=vocab))
    report: list[str] = []
    if cfg.frontend == "cnn" and tcfg.frontend == "cnn" and cfg.feat_extract_norm == tcfg.feat_extract_norm:
        if _copy(student.feature_extractor, teacher.feature_extractor):
            report.append("feature_extractor")
    if cfg.frontend == "fbank" and tcfg.frontend == "fbank":
        if _copy(student.fbank_frontend, teacher.fbank_frontend):
            report.append("fbank_frontend")
    if _copy(student.feature_projection.layer_norm, teacher.feature_projection.layer_norm):
        report.append("feature_projection.layer_norm")
    if _copy(student.feature_projection.projection, teacher.feature_projection.projection):
        report.append("feature_projection.projection")
    if _copy(student.encoder.pos_conv_embed, teacher.encoder.pos_conv_embed):
        report.append("encoder.pos_conv_embed")
    if _copy(student.encoder.layer_norm, teacher.encoder.layer_norm):
        report.append("encoder.layer_norm")
    if cfg.num_attention_heads == tcfg.num_attention_heads and cfg.do_stable_layer_norm == tcfg.do_stable_layer_norm:
        for i, layer in enumerate(student.encoder.layers):
            j = teacher_layer_for(i, cfg.num_hidden_layers, tcfg.num_hidden_layers, layer_init)
            if _copy(layer, teacher.encoder.layers[j]):
                report.append(f"encoder.layers.{i}<-{j}")
    if copy_head and vocab == tcfg.vocab_size and _copy(student.lm_head, teacher.lm_head):
        report.append("lm_head")
    if (
        getattr(student, "masked_spec_embed", None) is not None
        and getattr(teacher, "masked_spec_embed", None) is not None
    ):
        if student.masked_spec_embed.shape == teacher.masked_spec_embed.shape:
            student.masked_spec_embed.copy_(teacher.masked_spec_embed)
    log.info("student initialised from teacher: %s", ", ".join(report) or "nothing (all fresh)")
    student.init_report = report
    return student
