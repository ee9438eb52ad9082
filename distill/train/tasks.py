"""Per-stage loss assembly: the modules the :class:`~distill.train.Trainer` trains.

Each task is one ``nn.Module`` holding every trainable part (the trained model and the distillation
projections) plus, for distillation, the frozen teacher; ``forward(batch)`` returns the summed loss,
its frame count and the unweighted components, so that a DDP wrapper sees one forward per batch.

* :class:`TeacherTask` (stage 3): LF-MMI (+ CTC) fine-tuning of one model on the labels.
* :class:`DistillTask` (stages 4 and 5, baselines): a student learns from a frozen teacher (eval mode,
  no gradient, excluded from checkpoints) with :class:`~distill.losses.objective.DistillObjective`;
  teacher outputs come on the fly or from a :class:`TeacherCache`; with ``chunks`` the student is
  chunk-streaming and draws its chunk size per batch (dynamic-chunk training).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from distill.losses.objective import DistillObjective, TeacherTargets
from distill.models.wav2vec2 import W2V2Model

from .results import LossResult
from .teacher_cache import TeacherCache, TeacherCacheError, cache_values_per_frame

__all__ = ["TeacherTask", "DistillTask", "TeacherCache", "TeacherCacheError", "cache_values_per_frame", "compute_loss"]

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000


def compute_loss(model: nn.Module, batch: Mapping[str, Any]) -> LossResult:
    """The trainer's loss callable for every task: one forward of the (possibly DDP-wrapped) task."""
    out = model(batch)
    return LossResult(
        loss=out["loss"], num=out["num"], stats=out["stats"], audio_sec=float(batch["audio_lens"].sum()) / SAMPLE_RATE
    )


class _TaskBase(nn.Module):
    """What both tasks share: the update counter hook and dropped-utterance accounting."""

    trained_prefix = ""

    def __init__(self) -> None:
        super().__init__()
        self.step_fn: Callable[[], int] = lambda: 10**12  # set to the trainer's update counter
        self.num_dropped: dict[str, int] = {}

    def trained_model(self) -> W2V2Model:
        raise NotImplementedError

    def _note_dropped(self, dropped: dict[str, int], batch: Mapping[str, Any]) -> None:
        for k, n in dropped.items():
            before = self.num_dropped.get(k, 0)
            self.num_dropped[k] = before + n
            if before < 20:
                log.warning(
                    "%d utterance(s) with a non-finite %s loss dropped from the batch %s (total %d)",
                    n,
                    k,
                    list(batch.get("cut_ids", []))[:4],
                    before + n,
                )

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        res, _ = self.run(batch)
        return {"loss": res.loss, "num": res.num, "stats": res.stats}

    def run(self, batch: Mapping[str, Any]) -> tuple[Any, Any]:
        raise NotImplementedError


class TeacherTask(_TaskBase):
    """Stage 3: the model trained on the labels (LF-MMI, CTC or both; see the objective's weights)."""

    trained_prefix = "model."

    def __init__(self, model: W2V2Model, objective: DistillObjective) -> None:
        super().__init__()
        if objective.needs_teacher():
            raise ValueError("the teacher task trains on labels only: set the distillation weights to 0")
        self.model = model
        self.objective = objective

    def trained_model(self) -> W2V2Model:
        return self.model

    def run(self, batch: Mapping[str, Any]):
        out = self.model(batch["audio"], batch["audio_lens"])
        res = self.objective(out.scores, out.lengths, step=self.step_fn(), targets=batch["tokens"])
        self._note_dropped(res.dropped, batch)
        return res, out


class DistillTask(_TaskBase):
    """Stages 4/5 and the distillation baselines: ``student`` learns from the frozen ``teacher``.

    Args:
        student: the trained model (the exported one).
        teacher: frozen; kept in eval mode whatever ``train()`` is called with; may be None when the
            objective uses labels only (the labels-only baseline).
        objective: the loss with its projections.
        chunks: streaming chunk sizes in frames (0 = full attention); one is drawn per training
            batch, ``chunks[0]`` is used in evaluation and export. Empty: the student does not stream.
        left_chunks, causal_pos_conv: the streaming configuration of the student.
        cache: a :class:`TeacherCache` (already opened) or None for on-the-fly teacher outputs.
        teacher_delay: frames by which the teacher's frame-level targets are delayed
            (:meth:`TeacherTargets.delayed`); 0 = aligned as in the paper.
    """

    trained_prefix = "student."

    def __init__(
        self,
        student: W2V2Model,
        teacher: W2V2Model | None,
        objective: DistillObjective,
        chunks: Sequence[int] = (),
        left_chunks: int | None = None,
        causal_pos_conv: bool = True,
        cache: TeacherCache | None = None,
        teacher_delay: int = 0,
    ) -> None:
        super().__init__()
        self.student = student
        self.teacher_delay = int(teacher_delay)
        self.objective = objective
        if objective.needs_teacher() and teacher is None:
            raise ValueError("the objective has distillation terms but no teacher was given")
        if teacher is not None:
            if teacher.config.vocab_size != student.config.vocab_size:
                raise ValueError(
                    f"teacher vocabulary {teacher.config.vocab_size} != student vocabulary {student.config.vocab_size}"
                )
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        self.teacher = teacher
        self.chunks = [int(c) for c in chunks]
        self.left_chunks = left_chunks
        self.causal_pos_conv = causal_pos_conv
        self.cache = cache
        self.needs = objective.needs_teacher() and objective.teacher_needs()
        if self.chunks:
            self._set_chunk(self.chunks[0])

    def trained_model(self) -> W2V2Model:
        return self.student

    def train(self, mode: bool = True) -> DistillTask:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def _set_chunk(self, chunk: int) -> None:
        if chunk == self.student.config.chunk_frames and (
            chunk == 0 or self.student.config.causal_pos_conv == self.causal_pos_conv
        ):
            return
        self.student.set_streaming(chunk, self.left_chunks if chunk > 0 else None, self.causal_pos_conv)

    def draw_chunk(self) -> int:
        """The chunk of a training batch: uniform over ``chunks`` from the global torch RNG (which the
        trainer checkpoints, so a resumed run draws the same sequence)."""
        if len(self.chunks) == 1:
            return self.chunks[0]
        return self.chunks[int(torch.randint(len(self.chunks), ()).item())]

    # ---- teacher targets ---------------------------------------------------------------------
    def _teacher_forward(self, wave: Tensor, lens: Tensor, features_only: bool) -> TeacherTargets:
        assert self.teacher is not None
        with torch.no_grad():
            if features_only:
                feats, out_lens = self.teacher.frontend_features(wave, lens)
                return TeacherTargets(lengths=out_lens, features=feats)
            out = self.teacher(wave, lens)
        n = self.needs
        return TeacherTargets(
            lengths=out.lengths,
            scores=out.scores if n["scores"] else None,
            hidden={i: out.hidden_states[i] for i in n["hidden"]},
            features=out.features if n["features"] else None,
        )

    def _split(self, t: TeacherTargets, b: int) -> dict[str, Tensor]:
        n = int(t.lengths[b])
        entry: dict[str, Tensor] = {}
        if t.scores is not None:
            entry["scores"] = t.scores[b, :n]
        if t.hidden:
            entry["hidden"] = torch.stack([t.hidden[i][b, :n] for i in self.needs["hidden"]])
        if t.features is not None:
            entry["features"] = t.features[b, :n]
        return entry

    def _collate(
        self, entries: list[dict[str, Tensor]], lengths: Tensor, t_max: int, dtype: torch.dtype, ids: Sequence[str]
    ) -> TeacherTargets:
        dev = lengths.device
        for cid, e, n in zip(ids, entries, lengths.tolist()):
            got = {k: int(v.shape[-2]) for k, v in e.items()}
            if any(g != n for g in got.values()):
                raise TeacherCacheError(
                    f"teacher cache entry of cut {cid} has {got} frames, the audio gives "
                    f"{n}: the audio changed since the cache was written; delete the cache"
                )

        def pad(key: str, idx: int | None = None) -> Tensor:
            rows = [e[key] if idx is None else e[key][idx] for e in entries]
            out = torch.zeros(len(rows), t_max, *rows[0].shape[1:], dtype=dtype, device=dev)
            for b, r in enumerate(rows):
                out[b, : r.shape[0]] = r.to(dev, dtype)
            return out

        first = entries[0]
        return TeacherTargets(
            lengths=lengths,
            scores=pad("scores") if "scores" in first else None,
            hidden={i: pad("hidden", k) for k, i in enumerate(self.needs["hidden"])} if "hidden" in first else {},
            features=pad("features") if "features" in first else None,
        )

    def teacher_targets(self, batch: Mapping[str, Any], features_only: bool = False) -> TeacherTargets:
        """Teacher outputs for the batch: from the cache when every cut is there, else computed
        (and stored for the missing cuts). The cache is used for training batches only."""
        wave, lens = batch["audio"], batch["audio_lens"]
        if self.cache is None or not self.training or features_only:
            return self._teacher_forward(wave, lens, features_only)
        ids = list(batch["cut_ids"])
        entries = [self.cache.get(c) for c in ids]
        if all(e is not None for e in entries):
            self.cache.hits += len(ids)
            t_max = int(self.student.output_lengths(torch.tensor([wave.shape[1]]))[0])
            dtype = next(self.student.parameters()).dtype
            return self._collate(entries, self.student.output_lengths(lens.long()), t_max, dtype, ids)
        t = self._teacher_forward(wave, lens, False)
        for b, (cid, e) in enumerate(zip(ids, entries)):
            if e is None:
                self.cache.put(cid, self._split(t, b))
                self.cache.misses += 1
        return t

    # ---- the loss ----------------------------------------------------------------------------
    def run(self, batch: Mapping[str, Any]):
        step = self.step_fn()
        cfg = self.objective.cfg
        if self.chunks:
            self._set_chunk(self.draw_chunk() if self.training else self.chunks[0])
        wave, lens = batch["audio"], batch["audio_lens"]
        if step < cfg.feature_only_steps:  # input distillation, phase 1: front-ends only
            t = self.teacher_targets(batch, features_only=True)
            feats, out_lens = self.student.frontend_features(wave, lens)
            res = self.objective(None, out_lens, step=step, student_features=feats, teacher=t)
            return res, None
        w = cfg.weights(step)
        t = None
        if any(w[k] > 0 for k in ("hid", "out", "mmi_kd", "kl", "feat")):
            t = self.teacher_targets(batch).delayed(self.teacher_delay)
        out = self.student(wave, lens)
        res = self.objective(
            out.scores,
            out.lengths,
            step=step,
            student_hidden=out.hidden_states,
            student_features=out.features,
            teacher=t,
            targets=batch["tokens"],
        )
        self._note_dropped(res.dropped, batch)
        return res, out
