"""Distillation losses on the LF-MMI denominator graph."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from distill.graph.fsa import Fsa
from distill.losses import fb
from distill.losses.lfmmi import check_inputs, den_layout

__all__ = ["lfmmi_kd_loss"]


class _KD(torch.autograd.Function):
    """logZ_den(x_S) - sum gamma_T x_S with teacher and student stacked into one batch of 2B rows:
    one alpha and one beta pass give gamma_T (the cross term) and gamma_S (the gradient) together,
    so the per-frame work (one GEMM on 2B rows costs about what one on B rows does) is done twice
    instead of six times (teacher alpha + beta, student alpha, then student alpha again + beta).
    The gradient ``gamma_S - gamma_T`` is formed in the forward when the student needs one."""

    @staticmethod
    def forward(
        ctx, x_s: torch.Tensor, x_t: torch.Tensor, layout: fb.SharedLayout, lengths: torch.Tensor, checkpoint: int
    ) -> torch.Tensor:
        b_n = x_s.shape[0]
        x = torch.cat([x_t, x_s.detach()])
        lens2 = torch.cat([lengths, lengths])
        fw = fb.forward_pass(layout, x, lens2, checkpoint)
        occ = fb.occupancy(layout, x, lens2, fw)  # [2B, T, V]: gamma_T on top of gamma_S
        gamma_t, gamma_s = occ[:b_n], occ[b_n:]
        valid = torch.arange(x.shape[1], device=x.device)[None, :, None] < lengths[:, None, None]
        cross = torch.where(valid, gamma_t * x_s, torch.zeros_like(x_s)).sum((1, 2), dtype=torch.float64)
        loss = fw.logz[b_n:] - cross
        loss = torch.where(fw.ok[:b_n], loss, torch.full_like(loss, float("nan")))
        ctx.grad_buf = gamma_s.sub_(gamma_t) if ctx.needs_input_grad[0] else None
        return loss.to(x_s.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        g = torch.where(torch.isfinite(grad), grad, torch.zeros_like(grad))
        return ctx.grad_buf * g[:, None, None].to(ctx.grad_buf.dtype), None, None, None, None


def lfmmi_kd_loss(
    student_scores: torch.Tensor,
    teacher_scores: torch.Tensor,
    lengths: torch.Tensor | Sequence[int],
    den: Fsa,
    dtype: torch.dtype | None = None,
    checkpoint: int = 0,
) -> torch.Tensor:
    """The "modified LF-MMI" distillation loss [B] (DESIGN.md, our reading of DistillW2V2):

    ``logZ_den(student) - sum_t sum_k gamma_T[t, k] * x_S[t, k]``

    where gamma_T are the teacher's occupancies on ``den`` (no gradient flows to the teacher). The
    numerator is the teacher's soft alignment, so the gradient w.r.t. the student scores is
    ``gamma_S - gamma_T``; the loss equals KL(P_T || P_S) over den paths plus the teacher's path
    entropy (a constant), so it is minimal when the student's path posterior matches the teacher's.
    Utterances whose teacher log score is not finite give NaN (dropped by reduce_finite). Memory: the
    stacked scores and their occupancies ([2B, T, V] each) during the forward, then one [B, T, V]
    gradient buffer.
    """
    lens = check_inputs(student_scores, lengths, den, name="student_scores")
    check_inputs(teacher_scores, lens, den, name="teacher_scores")
    if teacher_scores.shape != student_scores.shape:
        raise ValueError(
            f"teacher scores {tuple(teacher_scores.shape)} and student scores "
            f"{tuple(student_scores.shape)} differ in shape"
        )
    layout = den_layout(student_scores, den, dtype, batch=2 * student_scores.shape[0])
    return _KD.apply(student_scores, teacher_scores.detach().to(student_scores.dtype), layout, lens, checkpoint)
