"""Distillation losses on the LF-MMI denominator graph."""
from __future__ import annotations

from typing import Sequence

import torch

from distill.graph.fsa import Fsa
from distill.losses import fb
from distill.losses.lfmmi import check_inputs, den_layout

__all__ = ["lfmmi_kd_loss"]


class _KD(torch.autograd.Function):
    """logZ_den(x_S) - sum gamma_T x_S; the gradient buffer starts as -gamma_T and gets gamma_S added."""

    @staticmethod
    def forward(ctx, x_s: torch.Tensor, x_t: torch.Tensor, layout: fb.SharedLayout, lengths: torch.Tensor,
                checkpoint: int) -> torch.Tensor:
        fw_t = fb.forward_pass(layout, x_t, lengths, checkpoint)
        buf = fb.occupancy(layout, x_t, lengths, fw_t, out=torch.zeros_like(x_s))  # gamma_T, x_S's dtype
        cross = torch.stack([(buf[b, : int(n)] * x_s[b, : int(n)]).sum().double()
                             for b, n in enumerate(lengths.tolist())])
        fw_s = fb.forward_pass(layout, x_s, lengths, checkpoint)
        loss = fw_s.logz - cross
        loss = torch.where(fw_t.ok, loss, torch.full_like(loss, float("nan")))
        ctx.layout, ctx.fw_s, ctx.fw_t, ctx.buf, ctx.checkpoint = layout, fw_s, fw_t, buf, checkpoint
        ctx.save_for_backward(x_s, x_t, lengths)
        return loss.to(x_s.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x_s, x_t, lengths = ctx.saved_tensors
        # the stored gamma_T becomes the gradient in place; a second backward (retain_graph) recomputes it
        out = ctx.buf if ctx.buf is not None else fb.occupancy(ctx.layout, x_t, lengths, ctx.fw_t,
                                                                out=torch.zeros_like(x_s))
        ctx.buf = None
        g = torch.where(torch.isfinite(grad), grad, torch.zeros_like(grad))
        out.mul_(-g[:, None, None].to(out.dtype))  # -g gamma_T
        fb.occupancy(ctx.layout, x_s, lengths, ctx.fw_s, out=out, scale=g)  # + g gamma_S
        return out, None, None, None, None


def lfmmi_kd_loss(student_scores: torch.Tensor, teacher_scores: torch.Tensor,
                  lengths: torch.Tensor | Sequence[int], den: Fsa,
                  dtype: torch.dtype | None = None, checkpoint: int = 0) -> torch.Tensor:
    """The "modified LF-MMI" distillation loss [B] (DESIGN.md, our reading of DistillW2V2):

    ``logZ_den(student) - sum_t sum_k gamma_T[t, k] * x_S[t, k]``

    where gamma_T are the teacher's occupancies on ``den`` (no gradient flows to the teacher). The
    numerator is the teacher's soft alignment, so the gradient w.r.t. the student scores is
    ``gamma_S - gamma_T``; the loss equals KL(P_T || P_S) over den paths plus the teacher's path
    entropy (a constant), so it is minimal when the student's path posterior matches the teacher's.
    Utterances whose teacher log score is not finite give NaN (dropped by reduce_finite). Memory: one
    [B, T, V] buffer besides the inputs.
    """
    lens = check_inputs(student_scores, lengths, den, name="student_scores")
    check_inputs(teacher_scores, lens, den, name="teacher_scores")
    if teacher_scores.shape != student_scores.shape:
        raise ValueError(f"teacher scores {tuple(teacher_scores.shape)} and student scores "
                         f"{tuple(student_scores.shape)} differ in shape")
    layout = den_layout(student_scores, den, dtype)
    return _KD.apply(student_scores, teacher_scores.detach(), layout, lens, checkpoint)
