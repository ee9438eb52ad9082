"""The training objective of every stage: distillation terms, label terms and their weights.

One weighted sum covers the teacher fine-tuning (label terms only), DistillW2V2's two distillation
stages and the baselines (DESIGN.md, docs/stages.md)::

    L = d * [ (1-a) * L_hid + a * ( b * L_mmi_kd + (1-b) * L_out ) ]
        + c * L_lfmmi + w_ctc * L_ctc + w_kl * L_kl + w_feat * L_feat

* ``L_hid``   mean over mapped layers i of MSE(W_i h_S[i], h_T[g(i)]), g(i) = round(i * L_T / L_S)
  (hidden-state indices: 0 = encoder input, i = output of layer i); ``W_i`` learnable projections;
  ``hidden_target_norm: layer`` replaces h_T by its per-frame layer norm (no affine).
* ``L_out``   MSE between student and teacher per-frame log-posteriors.
* ``L_mmi_kd`` :func:`distill.losses.kd.lfmmi_kd_loss` (teacher soft alignment as numerator).
* ``L_lfmmi`` LF-MMI on the reference labels; ``L_ctc`` CTC on the labels.
* ``L_kl``    Shrinking Bigfoot's frame-level KL(P_T || P_S) of temperature-softened posteriors, x T^2.
* ``L_feat``  input distillation (Wang et al.): MSE(W_f f_S, f_T) of the front-end outputs.

Every term is a **sum over valid frames** (MSEs average over the feature dimension inside a frame;
sequence losses are sums over the utterance's frames already); the trainer divides by the batch's
total frames (``num``). Utterances whose sequence loss is not finite (unreachable numerator,
``-inf`` teacher score) are dropped from that term by :func:`reduce_finite` and counted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.config import ConfigError
from distill.graph.fsa import Fsa
from distill.losses.kd import lfmmi_kd_loss
from distill.losses.lfmmi import LFMMILoss
from distill.losses.reduce import reduce_finite

__all__ = [
    "ObjectiveConfig",
    "DistillObjective",
    "TeacherTargets",
    "ObjectiveResult",
    "layer_map",
    "frame_kl",
    "masked_mse_sum",
]

log = logging.getLogger(__name__)

COMPONENTS = ("hid", "out", "mmi_kd", "lfmmi", "ctc", "kl", "feat")


@dataclass
class ObjectiveConfig:
    """Weights of the training objective (see the module docstring for the formula)."""

    distill_weight: float = 1.0  # d: weight of the DistillW2V2 bracket (0 = no DistillW2V2 terms)
    alpha: float = 0.8  # a: prediction-layer share vs hidden-state MSE
    beta: float = 0.8  # b: LF-MMI-KD share vs output MSE inside the prediction-layer term
    lfmmi_weight: float = 0.0  # c: LF-MMI on the reference labels
    ctc_weight: float = 0.0  # CTC on the reference labels
    kl_weight: float = 0.0  # Shrinking Bigfoot frame-level KL on posteriors
    kl_temperature: float = 1.0
    feature_weight: float = 0.0  # input distillation: front-end output regression
    feature_only_steps: int = 0  # phase 1 of input distillation: only L_feat for the first N updates
    ctc_only_steps: int = 0  # only L_ctc (weight 1) for the first N updates (teacher warm-up)
    den_scale: float = 1.0  # LF-MMI denominator scale (label LF-MMI)
    include_input_layer: bool = False  # also regress hidden_states[0] (the encoder input) onto the teacher's
    # L_hid targets: "none" = the teacher's hidden states as they are (plain MSE); "layer" = each frame
    # scaled to zero mean / unit variance over features (no affine), so L_hid starts near 1 per frame
    # whatever the teacher's residual-stream scale (pre-LN teachers grow it layer by layer)
    hidden_target_norm: Literal["none", "layer"] = "none"
    proj_init: Literal["auto", "identity", "random"] = "auto"  # auto: identity when widths match

    def validate(self, where: str = "objective") -> None:
        """Raise :class:`ConfigError` naming the key of a bad value."""
        for k in ("distill_weight", "lfmmi_weight", "ctc_weight", "kl_weight", "feature_weight", "den_scale"):
            if getattr(self, k) < 0:
                raise ConfigError(f"{where}: key '{k}': must be >= 0, got {getattr(self, k)}")
        for k in ("alpha", "beta"):
            if not 0.0 <= getattr(self, k) <= 1.0:
                raise ConfigError(f"{where}: key '{k}': must lie in [0, 1], got {getattr(self, k)}")
        if self.hidden_target_norm not in ("none", "layer"):
            raise ConfigError(
                f"{where}: key 'hidden_target_norm': must be 'none' or 'layer', got {self.hidden_target_norm!r}"
            )
        if self.kl_temperature <= 0:
            raise ConfigError(f"{where}: key 'kl_temperature': must be > 0, got {self.kl_temperature}")
        for k in ("feature_only_steps", "ctc_only_steps"):
            if getattr(self, k) < 0:
                raise ConfigError(f"{where}: key '{k}': must be >= 0")
        if not any(self.weights(10**12).values()):
            raise ConfigError(f"{where}: every loss weight is 0: nothing to train")

    def weights(self, step: int) -> dict[str, float]:
        """Effective weight of each component at update ``step`` (phases included)."""
        if step < self.feature_only_steps:
            return {k: (1.0 if k == "feat" else 0.0) for k in COMPONENTS}
        if step < self.ctc_only_steps:
            return {k: (1.0 if k == "ctc" else 0.0) for k in COMPONENTS}
        d, a, b = self.distill_weight, self.alpha, self.beta
        return {
            "hid": d * (1 - a),
            "out": d * a * (1 - b),
            "mmi_kd": d * a * b,
            "lfmmi": self.lfmmi_weight,
            "ctc": self.ctc_weight,
            "kl": self.kl_weight,
            "feat": self.feature_weight,
        }

    def ever_used(self) -> set[str]:
        """Components with a non-zero weight at some update."""
        used = {k for k, w in self.weights(10**12).items() if w > 0}
        if self.feature_only_steps > 0:
            used.add("feat")
        if self.ctc_only_steps > 0:
            used.add("ctc")
        return used


@dataclass
class TeacherTargets:
    """What the objective needs from the teacher, for a batch padded to the student's ``T``.

    ``hidden`` maps a teacher hidden-state index to [B, T, D_T]; absent entries are not needed.
    """

    lengths: Tensor
    scores: Tensor | None = None
    hidden: dict[int, Tensor] = field(default_factory=dict)
    features: Tensor | None = None

    def delayed(self, frames: int) -> TeacherTargets:
        """The frame-level targets (scores, hidden states) ``frames`` later: frame t gets frame t - frames,
        the first frame repeated before it; lengths and front-end features stay."""
        if frames <= 0:
            return self
        t = next((x.shape[1] for x in (self.scores, *self.hidden.values()) if x is not None), 0)
        idx = (torch.arange(t, device=self.lengths.device) - frames).clamp(min=0)

        def shift(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.index_select(1, idx)

        return TeacherTargets(
            lengths=self.lengths,
            scores=shift(self.scores),
            hidden={i: shift(h) for i, h in self.hidden.items()},
            features=self.features,
        )


@dataclass
class ObjectiveResult:
    loss: Tensor  # 0-dim, summed over the batch
    num: float  # valid frames
    stats: dict[str, float]  # unweighted component sums (reported per frame by the trainer)
    dropped: dict[str, int]  # utterances dropped per sequence term (non-finite)


def layer_map(n_student: int, n_teacher: int, include_input: bool = False) -> list[tuple[int, int]]:
    """``(student hidden index, teacher hidden index)`` pairs, g(i) = round(i * L_T / L_S) for i = 1..L_S
    (1:1 when the depths match; 12 -> 24 gives 2i); index 0 (the encoder input) maps to 0."""
    pairs = [(0, 0)] if include_input else []
    for i in range(1, n_student + 1):
        pairs.append((i, max(1, min(n_teacher, round(i * n_teacher / n_student)))))
    return pairs


def _valid_mask(lengths: Tensor, t: int) -> Tensor:
    return torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]


def masked_mse_sum(x: Tensor, y: Tensor, lengths: Tensor) -> Tensor:
    """Sum over valid frames of the per-frame mean squared error ([B,T,D] inputs), in float32."""
    diff = (x.float() - y.float()).pow(2).mean(dim=-1)
    return (diff * _valid_mask(lengths, x.shape[1]).to(diff.dtype)).sum()


def frame_kl(student_scores: Tensor, teacher_scores: Tensor, lengths: Tensor, temperature: float = 1.0) -> Tensor:
    """Sum over valid frames of ``T^2 * KL(softmax(z_T/T) || softmax(z_S/T))`` (Shrinking Bigfoot).

    The scores may be logits or log-posteriors: a per-frame constant cancels in the softmax.
    """
    log_p_s = torch.log_softmax(student_scores.float() / temperature, dim=-1)
    log_p_t = torch.log_softmax(teacher_scores.detach().float() / temperature, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)
    return (kl * _valid_mask(lengths, kl.shape[1]).to(kl.dtype)).sum() * temperature**2


def _linear(d_in: int, d_out: int, init: str) -> nn.Linear:
    lin = nn.Linear(d_in, d_out)
    if init == "identity" or (init == "auto" and d_in == d_out):
        if d_in != d_out:
            raise ConfigError(
                f"objective: key 'proj_init': identity projections need equal widths, got {d_in} -> {d_out}"
            )
        with torch.no_grad():
            lin.weight.copy_(torch.eye(d_in))
            lin.bias.zero_()
    return lin


class DistillObjective(nn.Module):
    """The weighted objective with its learnable projections (``proj.<k>`` for hidden layers, ``feat_proj``).

    Args:
        cfg: the weights.
        den: the denominator graph (needed for ``mmi_kd`` and ``lfmmi``).
        student_dims: ``(layers, hidden width, front-end width)`` of the trained model.
        teacher_dims: the same for the teacher (None when no teacher term is used).
    """

    def __init__(
        self,
        cfg: ObjectiveConfig,
        den: Fsa | None,
        student_dims: tuple[int, int, int],
        teacher_dims: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.den = den
        used = cfg.ever_used()
        self.used = used
        if used & {"mmi_kd", "lfmmi"} and den is None:
            raise ConfigError("objective: the LF-MMI terms need a denominator graph (key 'den')")
        if self.needs_teacher() and teacher_dims is None:
            raise ConfigError("objective: distillation terms are weighted but there is no teacher (key 'teacher')")
        self.lfmmi = LFMMILoss(den, cfg.den_scale) if "lfmmi" in used and den is not None else None
        ls, ds, cs = student_dims
        self.pairs: list[tuple[int, int]] = []
        self.proj = nn.ModuleList()
        self.feat_proj: nn.Linear | None = None
        if teacher_dims is not None:
            lt, dt, ct = teacher_dims
            if "hid" in used:
                self.pairs = layer_map(ls, lt, cfg.include_input_layer)
                self.proj = nn.ModuleList(_linear(ds, dt, cfg.proj_init) for _ in self.pairs)
            if "feat" in used:
                self.feat_proj = _linear(cs, ct, cfg.proj_init)

    def needs_teacher(self) -> bool:
        return bool(self.used & {"hid", "out", "mmi_kd", "kl", "feat"})

    def teacher_needs(self) -> dict[str, object]:
        """Which teacher outputs the terms read: ``scores`` (bool), ``hidden`` (indices), ``features`` (bool)."""
        return {
            "scores": bool(self.used & {"out", "mmi_kd", "kl"}),
            "hidden": sorted({t for _, t in self.pairs}),
            "features": "feat" in self.used,
        }

    def forward(
        self,
        student_scores: Tensor,
        lengths: Tensor,
        *,
        step: int = 10**12,
        student_hidden: Sequence[Tensor] = (),
        student_features: Tensor | None = None,
        teacher: TeacherTargets | None = None,
        targets: Sequence[Sequence[int]] | None = None,
    ) -> ObjectiveResult:
        """The loss of a batch at update ``step``; only the components weighted at that step are computed.

        ``student_scores`` may be None in the feature-only phase (then ``lengths`` are the front-end's).
        """
        w = self.cfg.weights(step)
        lengths = lengths.long()
        total = torch.zeros((), device=lengths.device, dtype=torch.float32)
        stats: dict[str, float] = {}
        dropped: dict[str, int] = {}
        if any(w[k] > 0 for k in ("hid", "out", "mmi_kd", "kl", "feat")):
            if teacher is None:
                raise ValueError("the objective needs teacher targets at this step")
            if not torch.equal(teacher.lengths.to(lengths.device).long(), lengths):
                raise ValueError(
                    f"teacher and student frame counts differ: {teacher.lengths.tolist()} vs "
                    f"{lengths.tolist()} (different front-end geometry?)"
                )
        for name in COMPONENTS:
            if w[name] > 0:
                value, n_bad = self.term(
                    name,
                    student_scores,
                    lengths,
                    student_hidden=student_hidden,
                    student_features=student_features,
                    teacher=teacher,
                    targets=targets,
                )
                total = total + w[name] * value
                stats[name] = float(value.detach())
                if n_bad:
                    dropped[name] = n_bad
        return ObjectiveResult(total, float(lengths.sum()), stats, dropped)

    def term(
        self,
        name: str,
        student_scores: Tensor | None,
        lengths: Tensor,
        *,
        student_hidden: Sequence[Tensor] = (),
        student_features: Tensor | None = None,
        teacher: TeacherTargets | None = None,
        targets: Sequence[Sequence[int]] | None = None,
    ) -> tuple[Tensor, int]:
        """One unweighted component (a sum over the batch's valid frames) and the number of utterances
        dropped from it (non-finite sequence losses). ``forward`` is the weighted sum of these; they are
        separate so that bench_train can time each term's forward and backward."""
        lengths = lengths.long()
        if name == "hid":
            acc = torch.zeros((), device=lengths.device)
            for (s_i, t_i), proj in zip(self.pairs, self.proj):
                target = teacher.hidden[t_i]
                if self.cfg.hidden_target_norm == "layer":
                    target = F.layer_norm(target.float(), target.shape[-1:])
                acc = acc + masked_mse_sum(proj(student_hidden[s_i]), target, lengths)
            return acc / max(1, len(self.pairs)), 0
        if name == "out":
            return masked_mse_sum(student_scores, teacher.scores, lengths), 0
        if name == "mmi_kd":
            with torch.autocast(student_scores.device.type, enabled=False):
                per_utt = lfmmi_kd_loss(student_scores.float(), teacher.scores.float(), lengths, self.den)
            return reduce_finite(per_utt)
        if name == "lfmmi":
            if targets is None:
                raise ValueError("LF-MMI on labels needs the batch's token sequences")
            with torch.autocast(student_scores.device.type, enabled=False):
                per_utt = self.lfmmi(student_scores.float(), lengths, targets)
            return reduce_finite(per_utt)
        if name == "ctc":
            if targets is None:
                raise ValueError("CTC needs the batch's token sequences")
            flat = torch.tensor([t for seq in targets for t in seq], dtype=torch.long, device=lengths.device)
            tlens = torch.tensor([len(seq) for seq in targets], dtype=torch.long, device=lengths.device)
            per_utt = F.ctc_loss(
                student_scores.float().transpose(0, 1),
                flat,
                lengths,
                tlens,
                blank=0,
                reduction="none",
                zero_infinity=False,
            )
            return reduce_finite(per_utt)
        if name == "kl":
            return frame_kl(student_scores, teacher.scores, lengths, self.cfg.kl_temperature), 0
        if name == "feat":
            assert self.feat_proj is not None and student_features is not None and teacher.features is not None
            return masked_mse_sum(self.feat_proj(student_features), teacher.features, lengths), 0
        raise ValueError(f"unknown objective component {name!r} (one of {', '.join(COMPONENTS)})")
