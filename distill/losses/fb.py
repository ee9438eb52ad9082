"""Exact forward-backward over an `Fsa` for a batch of score matrices, in pure PyTorch.

Design (docs/lfmmi.md has the long version):

* **State-labelled graph.** The `Fsa` is rewritten so that every state has one emission label: a new
  state is a distinct (destination, label) pair of the arcs. For CTC-topology graphs (arcs into CTC
  state k carry k) this is the identity. Then one frame is
  ``alpha_t = (alpha_{t-1} @ M) * e_t[label]``: a fixed transition matrix M and a gather of per-frame
  emissions: a few large tensor ops. M is dense (one GEMM; BPE-500 den graphs), CSR sparse, or, for
  large back-off den graphs, *rank one + sparse* (``rank_one_plus_sparse``: the back-off path makes
  the token columns ``bow(history) x p_unigram(token)`` except for the listed n-grams), which costs
  O(#n-grams + S) per frame instead of O(S^2).
* **Denominator in probability space with per-frame rescaling** (float32 for float32 scores, float64
  for float64 scores or the factored form): emissions are ``exp(x_t - max_k x_t[k])``, graph weights
  ``exp(w - max w)``, and alpha is renormalised to sum 1 per utterance after every frame; the logs of
  the normalisers and shifts give the exact log score. Arc weights more than ~700 nats below the
  graph's largest count as absent.
* **Numerators in log space** (float64, segment logsumexp): they constrain the future, so prefixes far
  below the best one at frame t may own the posterior later (probability space lost ~1600 nats on a
  peaky 3000-frame test). States that cannot reach a final state in the frames left are masked.
* **Backward by a beta pass**, not an autograd tape: ``beta_{t-1} = M (e_t * beta_t) / c_t``;
  occupancy ``gamma_t = alpha_t * beta_t`` summed per label is the gradient of the log score. To bound
  memory alpha is kept only every K frames and recomputed segment by segment in the backward pass.
* **Batches.** A shared graph (the denominator) keeps state vectors [B, S]; per-utterance graphs (the
  numerators) are stacked block-diagonally into one flat state vector.
* The Hessian-vector product needed to differentiate occupancies uses the expectation semiring
  (a tangent alpha and beta pass).

This module holds the passes; they run on any `Layout` (:mod:`distill.losses.layouts`: the interface
and the two layouts), built from a `CompiledGraph` (:mod:`distill.losses.compiled_graph`) and, for
numerators, by :func:`distill.losses.numerator.numerator_layout`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# the pieces the passes run on, importable from here as before
from distill.losses.compiled_graph import _CACHE, NEG_INF, CompiledGraph, compile_graph  # noqa: F401
from distill.losses.layouts import FlatLayout, Layout, SharedLayout
from distill.losses.numerator import numerator_layout

__all__ = [
    "CompiledGraph",
    "FlatLayout",
    "Layout",
    "SharedLayout",
    "compile_graph",
    "forward_pass",
    "hvp",
    "log_z",
    "numerator_layout",
    "occupancy",
]


_BLOCK = 32  # frames whose emissions (and occupancies) are computed in one go
_SMALL_BYTES = 1 << 20  # block temporaries always allowed
_STORE_BYTES = 32 << 20  # alphas of every frame are kept when they take at most this (or 1/4 of the scores)


@dataclass
class _Forward:
    logz: torch.Tensor  # [B] float64
    ok: torch.Tensor  # [B] bool: finite log score
    norm: torch.Tensor  # [Tmax, B] per-frame normalisers in the layout's domain
    log_zf: torch.Tensor  # [B] log of the final sum of the normalised alpha
    store: dict  # frame -> alpha after that frame
    segment: int  # checkpoint interval (1: every frame stored)
    tmax: int
    lens: list[int]


def _frame_max(x: torch.Tensor) -> torch.Tensor:
    m = x.detach().amax(-1)
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def _block_frames(layout: Layout, x: torch.Tensor) -> int:
    """Frames per block of emissions/occupancies: a block's temporaries stay below 1/32 of the score
    tensor (memory goal: 2x scores + graph) or 1 MiB."""
    b_n, t_n, v_n = x.shape
    per_frame = b_n * max(v_n, layout.state_bytes() // max(b_n, 1) // 8) * 8
    budget = max(x.numel() * x.element_size() // 32, _SMALL_BYTES)
    return int(max(1, min(_BLOCK, budget // max(per_frame, 1))))


class _Emissions:
    """Per-state emissions in the layout's domain, computed block by block of frames."""

    def __init__(self, layout: Layout, x: torch.Tensor) -> None:
        self.layout, self.x = layout, x.detach()
        self.m = _frame_max(x)
        self.t0, self.block = -(1 << 40), None
        self.size = _block_frames(layout, x)

    def __call__(self, t: int) -> torch.Tensor:
        if not self.t0 <= t < self.t0 + self.size:
            self.t0 = (t // self.size) * self.size
            xs = self.x[:, self.t0 : self.t0 + self.size].to(self.layout.dtype)
            ms = self.m[:, self.t0 : self.t0 + self.size, None].to(self.layout.dtype)
            self.block = self.layout.emis_block(xs - ms)
        return self.block[t - self.t0]


def _mask(layout: Layout, t: int, lens: torch.Tensor, lens_cpu: list[int], rel: str) -> torch.Tensor | None:
    """Per-state mask of utterances with ``t rel length`` ("<": active, "<last": not at last frame),
    or None when it holds for all (decided on the CPU copy of the lengths, no device sync)."""
    if rel == "<":
        if t < min(lens_cpu):
            return None
        return layout.per_state(t < lens)
    if t < min(lens_cpu) - 1:
        return None
    return layout.per_state(t < lens - 1)


def _step(
    layout: Layout, emis: _Emissions, t: int, a_prev: torch.Tensor | None, lens: torch.Tensor, lens_cpu: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One frame: (normalised alpha, normaliser [B] in the layout's domain). Inactive utterances keep
    their alpha; a dead utterance (normaliser 0) turns NaN and is caught from the normalisers."""
    pre = layout.init() if a_prev is None else layout.fwd(a_prev)
    a = layout.mul(pre, emis(t))
    viable = layout.viable(lens, t)
    if viable is not None:
        a = torch.where(viable, a, torch.full_like(a, layout.zero))
    a, c = layout.normalize(a)
    active = _mask(layout, t, lens, lens_cpu, "<")
    if active is not None:
        a = torch.where(active, a, torch.full_like(a, layout.zero) if a_prev is None else a_prev)
    return a, c


def _segment_size(layout: Layout, x: torch.Tensor, tmax: int, checkpoint: int) -> int:
    if checkpoint > 0:
        return checkpoint
    store_all = tmax * layout.state_bytes()
    if store_all <= max(x.numel() * x.element_size() // 4, _STORE_BYTES):
        return 1  # no recomputation in the beta pass
    return max(1, math.ceil(math.sqrt(tmax)))


def forward_pass(layout: Layout, x: torch.Tensor, lengths: torch.Tensor, checkpoint: int = 0) -> _Forward:
    """Alpha pass: exact log scores [B] (float64) and what the beta pass needs."""
    b_n = x.shape[0]
    lens_cpu = [int(v) for v in lengths.cpu().tolist()]
    tmax = max(lens_cpu) if b_n else 0
    dev = x.device
    lens = lengths.to(dev)
    emis = _Emissions(layout, x)
    seg = _segment_size(layout, x, tmax, checkpoint)
    norm = torch.empty(tmax, b_n, dtype=layout.dtype, device=dev)
    store: dict[int, torch.Tensor] = {}
    a = None
    for t in range(tmax):
        a, norm[t] = _step(layout, emis, t, a, lens, lens_cpu)
        if seg == 1 or t % seg == seg - 1:
            store[t] = a
    active = torch.arange(tmax, device=dev)[:, None] < lens[None, :]  # [T, B]
    zero = torch.zeros((), dtype=torch.float64, device=dev)
    logc = torch.where(active, layout.log_norm(norm).double() + emis.m[:, :tmax].t().double(), zero).sum(0)
    dead = (active & layout.is_dead(norm)).any(0)
    if a is None:
        log_zf = torch.full((b_n,), NEG_INF, dtype=torch.float64, device=dev)
    else:
        log_zf = layout.final_sum(a).double()
    logz = logc + log_zf + lens.double() * layout.arc_shift + layout.final_shift
    logz = torch.where(dead | (log_zf == NEG_INF), torch.full_like(logz, NEG_INF), logz)
    logz = torch.where(lens == 0, layout.final_start().double(), logz)
    ok = torch.isfinite(logz) & (lens > 0)
    return _Forward(logz, ok, norm, torch.where(ok, log_zf, torch.zeros_like(log_zf)), store, seg, tmax, lens_cpu)


def _alphas(
    layout: Layout, emis: _Emissions, lens: torch.Tensor, fw: _Forward, t0: int, t1: int
) -> dict[int, torch.Tensor]:
    """alpha for frames t0..t1-1, from the store or recomputed from the checkpoint before t0."""
    if all(t in fw.store for t in range(t0, t1)):
        return {t: fw.store[t] for t in range(t0, t1)}
    out: dict[int, torch.Tensor] = {}
    a = fw.store[t0 - 1] if t0 > 0 else None
    for t in range(t0, t1):
        a, _ = _step(layout, emis, t, a, lens, fw.lens)
        out[t] = a
    return out


def _segments(fw: _Forward) -> list[tuple[int, int]]:
    s = fw.segment
    return [(t0, min(t0 + s, fw.tmax)) for t0 in range(0, fw.tmax, s)]


def _beta_step(
    layout: Layout,
    emis: _Emissions,
    fw: _Forward,
    t: int,
    beta: torch.Tensor | None,
    like: torch.Tensor,
    fin: torch.Tensor,
    lens: torch.Tensor,
) -> torch.Tensor:
    """beta_t from beta_{t+1} (starting at each utterance's last frame; zero past it)."""
    if beta is None:
        nb = torch.full_like(like, layout.zero)
    else:
        nb = layout.unnorm(layout.bwd(layout.mul(beta, emis(t + 1))), fw.norm[t + 1])
    inner = _mask(layout, t, lens, fw.lens, "<last")
    if inner is None:
        return nb
    last = layout.per_state(t == lens - 1)
    return torch.where(last, fin.expand_as(like), torch.where(inner, nb, torch.full_like(nb, layout.zero)))


def occupancy(
    layout: Layout,
    x: torch.Tensor,
    lengths: torch.Tensor,
    fw: _Forward,
    out: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Beta pass: per-frame label occupancies [B, T, V] = d logZ / d x (zero on padded frames and for
    utterances whose log score is not finite).

    With ``out`` the occupancies times ``scale`` [B] are added into it in place (one gradient buffer
    for several terms), else a new tensor of x's dtype is returned.
    """
    b_n, t_n, v_n = x.shape
    dev = x.device
    lens = lengths.to(dev)
    emis = _Emissions(layout, x)
    if out is None:
        out = torch.zeros(b_n, t_n, v_n, dtype=x.dtype, device=dev)
    w = torch.ones(b_n, dtype=layout.dtype, device=dev) if scale is None else scale.to(dev, layout.dtype)
    w = torch.where(fw.ok, w, torch.zeros_like(w))[None, :, None]
    keep = w != 0
    block = _block_frames(layout, x)
    pending: list[torch.Tensor] = []  # alpha * beta of frames t_hi - 1, t_hi - 2, ... (descending)

    def flush(t_lo: int) -> None:
        # one label reduction per block of frames instead of one per frame
        occ = layout.to_labels_block(layout.prob(torch.stack(pending[::-1]))) * w  # [K, B, V]
        occ = torch.where(keep, occ, torch.zeros_like(occ))
        out[:, t_lo : t_lo + len(pending)] += occ.transpose(0, 1).to(out.dtype)
        pending.clear()

    fin = layout.beta_init(fw.log_zf)
    beta = None
    for t0, t1 in reversed(_segments(fw)):
        alphas = _alphas(layout, emis, lens, fw, t0, t1)
        for t in range(t1 - 1, t0 - 1, -1):
            a_t = alphas.pop(t)
            beta = _beta_step(layout, emis, fw, t, beta, a_t, fin, lens)
            pending.append(layout.mul(a_t, beta))
            if len(pending) == block:
                flush(t)
    if pending:
        flush(0)
    return out


def hvp(layout: SharedLayout, x: torch.Tensor, lengths: torch.Tensor, fw: _Forward, grad: torch.Tensor) -> torch.Tensor:
    """Hessian of logZ times ``grad`` [B, T, V]: the gradient of ``sum(grad * occupancy)``.

    Expectation semiring: with g(path) = sum_t grad[t, label_t], the result at (t, k) is
    E[1{label_t = k} g] - gamma_t[k] E[g] under the path posterior; a tangent alpha accumulates g over
    prefixes and a tangent beta over suffixes. Everything is stored (this is not the training path).
    Probability-space (shared) layouts only.
    """
    if layout.log_space:
        raise NotImplementedError("hvp needs a probability-space layout")
    b_n, t_n, v_n = x.shape
    dev = x.device
    lens = lengths.to(dev)
    emis = _Emissions(layout, x)
    gd = grad.detach().to(layout.dtype)
    alphas, tangents = [], []
    a = at = None
    for t in range(fw.tmax):
        active = layout.per_state(t < lens)
        a_new, c = _step(layout, emis, t, a, lens, fw.lens)
        g_t = layout.gather(gd[:, t])
        if at is None:
            at_new = a_new * g_t
        else:
            prop = layout.unnorm(layout.fwd(at) * emis(t), c)
            viable = layout.viable(lens, t)
            if viable is not None:
                prop = torch.where(viable, prop, torch.zeros_like(prop))
            at_new = torch.where(active, prop + a_new * g_t, at)
        a, at = a_new, at_new
        alphas.append(a)
        tangents.append(at)
    out = torch.zeros(b_n, t_n, v_n, dtype=x.dtype, device=dev)
    if fw.tmax == 0:
        return out
    fin = layout.beta_init(fw.log_zf)
    e_g = (at * fin).sum(1)  # E[g] per utterance
    beta = bt = None
    for t in range(fw.tmax - 1, -1, -1):
        a_t, at_t = alphas[t], tangents[t]
        if beta is None:
            nb = nbt = torch.zeros_like(a_t)
        else:
            e = emis(t + 1)
            g1 = layout.gather(gd[:, t + 1])
            nb = layout.unnorm(layout.bwd(beta * e), fw.norm[t + 1])
            nbt = layout.unnorm(layout.bwd((bt + g1 * beta) * e), fw.norm[t + 1])
        last = layout.per_state(t == lens - 1)
        inner = layout.per_state(t < lens - 1)
        beta = torch.where(last, fin.expand_as(a_t), torch.where(inner, nb, torch.zeros_like(nb)))
        bt = torch.where(inner, nbt, torch.zeros_like(nbt))
        gam = layout.to_labels(a_t * beta)
        cross = layout.to_labels(at_t * beta + a_t * bt)
        out[:, t] = (cross - gam * e_g[:, None]).to(x.dtype)
    return torch.where(fw.ok[:, None, None], out, torch.zeros_like(out))


def log_z(layout: Layout, x: torch.Tensor, lengths: torch.Tensor, checkpoint: int = 0) -> torch.Tensor:
    """Exact log scores [B] (float64), no gradient."""
    return forward_pass(layout, x, lengths, checkpoint).logz
