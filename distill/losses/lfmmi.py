"""LF-MMI in pure PyTorch: denominator log score, occupancies and the LF-MMI loss.

A path's score is the sum over frames of the network score of the arc's label plus the arc weight,
plus the final weight; ``logZ`` combines all paths with logsumexp. Per utterance
``LF-MMI = -(logZ_num - den_scale * logZ_den)`` where the numerator is the den graph restricted to the
paths whose CTC collapse is the reference, so ``LF-MMI >= 0`` for ``den_scale = 1``. All functions
are exact (no pruning), batched, run on CPU and CUDA, and are invariant to adding a per-frame constant
to the scores. See :mod:`distill.losses.fb` for the algorithm.

Utterances whose numerator cannot be reached (a reference longer than the frames allow, a token the
graph never emits) get a ``+inf`` loss and exactly zero gradient; :func:`distill.losses.reduce_finite`
drops and counts them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from distill.graph.fsa import Fsa
from distill.losses import fb

__all__ = ["LFMMILoss", "den_log_z", "den_occupancy", "den_layout", "check_inputs"]


def check_inputs(
    scores: torch.Tensor,
    lengths: torch.Tensor | Sequence[int],
    den: Fsa | None = None,
    targets: Sequence[Sequence[int]] | None = None,
    name: str = "scores",
) -> torch.Tensor:
    """Validate a batch; returns ``lengths`` as a LongTensor on the scores' device.

    Raises ValueError saying what is wrong: an empty batch, a scores tensor that is not [B, T, V]
    floating point, lengths that are negative or exceed T, a den graph label >= V, a target id outside
    1..V-1 or a targets list of the wrong size.
    """
    if not isinstance(scores, torch.Tensor) or scores.dim() != 3 or not scores.is_floating_point():
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"{name} must be a floating-point tensor [B, T, V], got {shape}")
    b_n, t_n, v_n = scores.shape
    if b_n == 0:
        raise ValueError(f"empty batch: {name} has B = 0 utterances")
    lens = torch.as_tensor(lengths)
    if lens.dim() != 1 or lens.numel() != b_n:
        raise ValueError(f"lengths must be 1-D with one entry per utterance ({b_n}), got shape {tuple(lens.shape)}")
    if lens.is_floating_point() or lens.dtype == torch.bool:
        raise ValueError(f"lengths must be integers, got dtype {lens.dtype}")
    lens_cpu = lens.cpu().long()
    neg = torch.nonzero(lens_cpu < 0).flatten()
    if neg.numel():
        i = int(neg[0])
        raise ValueError(f"lengths[{i}] = {int(lens_cpu[i])} is negative")
    over = torch.nonzero(lens_cpu > t_n).flatten()
    if over.numel():
        i = int(over[0])
        raise ValueError(f"lengths[{i}] = {int(lens_cpu[i])} exceeds the number of frames T = {t_n}")
    if den is not None and den.max_label() >= v_n:
        raise ValueError(f"the den graph uses label {den.max_label()} but {name} have only V = {v_n} columns")
    if targets is not None:
        if len(targets) != b_n:
            raise ValueError(f"targets has {len(targets)} entries for a batch of {b_n} utterances")
        for i, tgt in enumerate(targets):
            for j, tok in enumerate(tgt):
                if (
                    isinstance(tok, bool)
                    or not isinstance(tok, int)
                    and not (isinstance(tok, torch.Tensor) and tok.numel() == 1 and not tok.is_floating_point())
                ):
                    raise ValueError(f"targets[{i}][{j}] = {tok!r} is not an integer token id")
                if not 1 <= int(tok) < v_n:
                    raise ValueError(
                        f"targets[{i}][{j}] = {int(tok)} is not a token id in 1..{v_n - 1} (0 is the blank)"
                    )
    return lens_cpu.to(scores.device)


def _dtype(scores: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    """Internal precision of the den pass: float64 for float64 scores, else float32 (its per-frame
    renormalisation keeps float32 exact to rounding; float64 GEMM is ~7x slower on CPU)."""
    if dtype is not None:
        return dtype
    return torch.float64 if scores.dtype == torch.float64 else torch.float32


class _LogZ(torch.autograd.Function):
    """logZ [B] of a layout; backward = upstream grad x occupancy (beta pass, no per-frame tape)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layout: fb.Layout, lengths: torch.Tensor, checkpoint: int) -> torch.Tensor:
        fw = fb.forward_pass(layout, x, lengths, checkpoint)
        ctx.layout, ctx.fw = layout, fw
        ctx.save_for_backward(x, lengths)
        return fw.logz.to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, lengths = ctx.saved_tensors
        return fb.occupancy(ctx.layout, x, lengths, ctx.fw, scale=grad), None, None, None


class _LFMMI(torch.autograd.Function):
    """-(logZ_num - den_scale logZ_den) [B]; one gradient buffer: den_scale gamma_den - gamma_num."""

    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        num: fb.FlatLayout,
        den: fb.SharedLayout | None,
        lengths: torch.Tensor,
        den_scale: float,
        checkpoint: int,
    ) -> torch.Tensor:
        fw_num = fb.forward_pass(num, x, lengths, checkpoint)
        loss = -fw_num.logz
        fw_den = None
        if den is not None:
            fw_den = fb.forward_pass(den, x, lengths, checkpoint)
            loss = loss + den_scale * fw_den.logz
        ctx.num, ctx.den, ctx.fw_num, ctx.fw_den, ctx.den_scale = num, den, fw_num, fw_den, den_scale
        ctx.save_for_backward(x, lengths)
        return loss.to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, lengths = ctx.saved_tensors
        g = grad.double()
        out = fb.occupancy(ctx.num, x, lengths, ctx.fw_num, scale=-g)
        if ctx.den is not None:
            fb.occupancy(ctx.den, x, lengths, ctx.fw_den, out=out, scale=ctx.den_scale * g)
        return out, None, None, None, None, None


class _Occupancy(torch.autograd.Function):
    """Occupancies [B, T, V]; backward = Hessian-vector product (expectation semiring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layout: fb.Layout, lengths: torch.Tensor) -> torch.Tensor:
        fw = fb.forward_pass(layout, x, lengths, checkpoint=1)
        ctx.layout, ctx.fw = layout, fw
        ctx.save_for_backward(x, lengths)
        return fb.occupancy(layout, x, lengths, fw)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, lengths = ctx.saved_tensors
        return fb.hvp(ctx.layout, x, lengths, ctx.fw, grad), None, None


def den_layout(
    scores: torch.Tensor, den: Fsa, dtype: torch.dtype | None = None, batch: int | None = None
) -> fb.SharedLayout:
    """The shared (denominator) layout of ``den`` for a batch like ``scores`` (of ``batch`` rows if given)."""
    g = fb.compile_graph(den, scores.device, _dtype(scores, dtype))
    return fb.SharedLayout(g, scores.shape[0] if batch is None else batch, scores.shape[2])


def den_log_z(
    scores: torch.Tensor,
    lengths: torch.Tensor | Sequence[int],
    den: Fsa,
    dtype: torch.dtype | None = None,
    checkpoint: int = 0,
) -> torch.Tensor:
    """Exact log score [B] of ``scores`` [B, T, V] (first ``lengths[b]`` frames) against ``den``.

    Differentiable: the gradient is the occupancy. ``dtype`` is the internal precision (default:
    float64 for float64 scores, else float32); ``checkpoint`` the alpha checkpoint interval in frames
    (0: automatic, 1: keep every frame).
    """
    lens = check_inputs(scores, lengths, den)
    return _LogZ.apply(scores, den_layout(scores, den, dtype), lens, checkpoint)


def den_occupancy(
    scores: torch.Tensor, lengths: torch.Tensor | Sequence[int], den: Fsa, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Per-frame label occupancies [B, T, V] on ``den`` (posterior probability that frame t carries
    label k; each valid frame sums to 1, padded frames are 0). Differentiable (Hessian-vector product)."""
    lens = check_inputs(scores, lengths, den)
    layout = den_layout(scores, den, dtype)
    if scores.requires_grad and torch.is_grad_enabled():
        return _Occupancy.apply(scores, layout, lens)
    with torch.no_grad():
        fw = fb.forward_pass(layout, scores, lens)
        return fb.occupancy(layout, scores, lens, fw)


class LFMMILoss(torch.nn.Module):
    """Per-utterance LF-MMI ``-(logZ_num - den_scale * logZ_den)`` (not reduced; see reduce_finite).

    ``den`` is the denominator graph (CTC topology composed with P); numerators are built on the fly
    from ``targets`` as restrictions of ``den`` (float64, log space). ``dtype``: internal precision of
    the den pass (default by the scores' dtype, see den_log_z); ``checkpoint``: alpha checkpoint
    interval (0 = automatic).
    """

    def __init__(self, den: Fsa, den_scale: float = 1.0, dtype: torch.dtype | None = None, checkpoint: int = 0) -> None:
        super().__init__()
        if not isinstance(den, Fsa):
            raise ValueError(f"LFMMILoss needs a distill.graph.Fsa den graph, got {type(den).__name__}")
        self.den = den
        self.den_scale = float(den_scale)
        self.dtype = dtype
        self.checkpoint = checkpoint

    def forward(
        self, scores: torch.Tensor, lengths: torch.Tensor | Sequence[int], targets: Sequence[Sequence[int]]
    ) -> torch.Tensor:
        lens = check_inputs(scores, lengths, self.den, targets)
        targets = [[int(t) for t in tgt] for tgt in targets]
        den = den_layout(scores, self.den, self.dtype)
        num = fb.numerator_layout(den.g, targets, scores.shape[2])
        return _LFMMI.apply(scores, num, den if self.den_scale != 0.0 else None, lens, self.den_scale, self.checkpoint)

    def extra_repr(self) -> str:
        return f"den={self.den!r}, den_scale={self.den_scale}"
