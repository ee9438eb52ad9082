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
"""
from __future__ import annotations

import math
import warnings
import weakref
from dataclasses import dataclass
from typing import Sequence

import torch

from distill.graph.fsa import Fsa, _csr, _expand

__all__ = ["CompiledGraph", "compile_graph", "SharedLayout", "FlatLayout", "numerator_layout",
           "log_z", "occupancy", "hvp"]

NEG_INF = float("-inf")


def frames_to_final(n: int, src: torch.Tensor, dst: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
    """Fewest arcs (frames) from each state to a final state (a large number where none is reachable).

    States that cannot finish in the frames left are masked out of alpha: their prefixes are doomed, and
    without the mask they could dominate the per-frame normaliser and underflow the paths that finish.
    """
    big = torch.iinfo(torch.long).max // 4
    dist = torch.full((n,), big, dtype=torch.long)
    frontier = torch.nonzero(final > 0).flatten()
    dist[frontier] = 0
    order, ptr = _csr(dst, n)
    srcs = src[order]
    k = 0
    while frontier.numel():
        k += 1
        _, pos = _expand(ptr, frontier)
        prev = srcs[pos].unique()
        prev = prev[dist[prev] == big]
        dist[prev] = k
        frontier = prev
    return dist


def _segment_median(values: torch.Tensor, index: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(median of values per segment (0 where empty), non-empty mask)."""
    order = torch.argsort(values)
    order = order[torch.argsort(index[order], stable=True)]  # by segment, then by value
    cnt = torch.bincount(index, minlength=n)
    start = torch.cumsum(cnt, 0) - cnt
    out = torch.zeros(n, dtype=values.dtype)
    has = cnt > 0
    out[has] = values[order[start[has] + cnt[has] // 2]]
    return out, has


def rank_one_plus_sparse(s: int, src: torch.Tensor, dst: torch.Tensor, p: torch.Tensor,
                         max_fraction: float = 0.25) -> tuple[torch.Tensor, ...] | None:
    """Write the transition matrix M (COO, float64) as ``alpha u^T + R`` with R sparse, if possible.

    This is the back-off structure of a den graph: from every state, the back-off path reaches every
    token with weight bow(history) x p_unigram(token), so the dense columns (the token states) are a
    rank-one matrix plus the listed n-grams and the CTC self-loops. ``u`` and ``alpha`` are medians of
    entry ratios (back-off entries are the majority of every row and column), and R = M - alpha u^T is
    exact (entries equal to float64 rounding are dropped).
    Returns (alpha, u, r_src, r_dst, r_val) or None when R would keep more than ``max_fraction`` of
    the entries.
    """
    nnz = p.numel()
    if nnz == 0:
        return None
    dense_col = torch.bincount(dst, minlength=s) >= max(2, s // 2)
    if not bool(dense_col.any()):
        return None
    in_dense = dense_col[dst]
    # u: per dense column the median over rows of M[s, k] / M[s, k*], k* the dense column with the
    # least mass (a rare token: its entries are back-off entries in almost every row)
    mass = torch.zeros(s, dtype=torch.float64).index_add_(0, dst, p)
    k_star = int(torch.argmin(torch.where(dense_col, mass, torch.full_like(mass, math.inf))))
    ref = torch.zeros(s, dtype=torch.float64)
    at_ref = dst == k_star
    ref[src[at_ref]] = p[at_ref]
    use = in_dense & (ref[src] > 0)
    u = torch.zeros(s, dtype=torch.float64)
    u_med, u_has = _segment_median(p[use] / ref[src[use]], dst[use], s)
    u[u_has] = u_med[u_has]
    use = u[dst] > 0
    alpha, _ = _segment_median(p[use] / u[dst[use]], src[use], s)
    approx = alpha[src] * u[dst]
    r = p - approx
    keep = r.abs() > 1e-12 * torch.maximum(p, approx)
    n_u = int((u > 0).sum())
    present = torch.bincount(src[use], minlength=s)
    miss_rows = torch.nonzero((alpha > 0) & (present < n_u)).flatten()
    n_missing = int((n_u - present[miss_rows]).sum())
    if int(keep.sum()) + n_missing > max_fraction * nnz or miss_rows.numel() * n_u > 4 * nnz:
        return None
    r_src, r_dst, r_val = src[keep], dst[keep], r[keep]
    if n_missing:  # entries of alpha u^T where M has none: R = -alpha u there
        cols = torch.nonzero(u > 0).flatten()
        ms = miss_rows.repeat_interleave(cols.numel())
        mk = cols.repeat(miss_rows.numel())
        absent = ~torch.isin(ms * s + mk, src * s + dst)
        ms, mk = ms[absent], mk[absent]
        r_src, r_dst = torch.cat([r_src, ms]), torch.cat([r_dst, mk])
        r_val = torch.cat([r_val, -alpha[ms] * u[mk]])
    return alpha, u, r_src, r_dst, r_val


def _csr_pair(src: torch.Tensor, dst: torch.Tensor, val: torch.Tensor, s: int, device: torch.device,
              dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR of M^T (rows = destination, for the forward) and of M (for the backward)."""
    idx = torch.stack([dst, src]).to(device)
    v = val.to(device, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        mt = torch.sparse_coo_tensor(idx, v, (s, s)).coalesce().to_sparse_csr()
        m = torch.sparse_coo_tensor(idx.flip(0), v, (s, s)).coalesce().to_sparse_csr()
    return mt, m


class CompiledGraph:
    """A graph in state-labelled, probability-space form on one device (see the module docstring)."""

    def __init__(self, fsa: Fsa, device: torch.device, dtype: torch.dtype = torch.float64,
                 mode: str | None = None) -> None:
        """``mode``: "dense" (GEMM), "csr" (sparse), "factored" (rank one + sparse, float64, falls back
        to the automatic choice when M has no such structure) or None: factored when it exists and
        the graph is large (S > 4096), else dense when S <= 4096 or M is >= 1/16 full, else CSR."""
        f = fsa.to("cpu")
        ok = f.score > NEG_INF
        src, dst, lab, w = f.src[ok], f.dst[ok], f.label[ok], f.score[ok].double()
        n = f.num_states
        lmax = int(lab.max()) + 1 if lab.numel() else 1
        uniq, inv = torch.unique(dst * lmax + lab, return_inverse=True)
        s = uniq.numel()
        under, label = uniq // lmax, uniq % lmax
        order, ptr = _csr(src, n)
        rep, pos = _expand(ptr, under)
        arc = order[pos]
        t_src, t_dst, t_w = rep, inv[arc], w[arc]
        from_start = src == f.start
        self.arc_shift = float(w.max()) if w.numel() else 0.0
        fin = f.final.double()
        finite = fin[torch.isfinite(fin)]
        self.final_shift = float(finite.max()) if finite.numel() else 0.0
        self.final_start = float(fin[f.start])
        # merge transitions between the same pair of new states (a sum of probabilities)
        key, kinv = torch.unique(t_src * max(s, 1) + t_dst, return_inverse=True)
        p = torch.zeros(key.numel(), dtype=torch.float64).index_add_(0, kinv, torch.exp(t_w - self.arc_shift))
        keep = p > 0
        key, p = key[keep], p[keep]
        self.num_states = s
        self.num_labels = lmax
        self.nnz = int(key.numel())
        self.src_cpu, self.dst_cpu, self.p_cpu = key // max(s, 1), key % max(s, 1), p
        self.label_cpu = label
        self.init_cpu = torch.zeros(s, dtype=torch.float64).index_add_(
            0, inv[from_start], torch.exp(w[from_start] - self.arc_shift))
        fs = fin[under] - self.final_shift
        self.final_cpu = torch.where(torch.isfinite(fs), torch.exp(fs), torch.zeros_like(fs))
        # search index for the numerator: transitions sorted by (src, label of dst)
        nkey = self.src_cpu * lmax + label[self.dst_cpu]
        self.num_order = torch.argsort(nkey, stable=True)
        self.num_keys = nkey[self.num_order]
        dist = frames_to_final(s, self.src_cpu, self.dst_cpu, self.final_cpu)

        self.device, self.dtype = torch.device(device), dtype
        self.label = label.to(self.device)
        self.init = self.init_cpu.to(self.device, dtype)
        self.final = self.final_cpu.to(self.device, dtype)
        self.dist = dist.to(self.device) if dist.numel() and int(dist.max()) > 0 else None
        src_c, dst_c, p_c = self.src_cpu, self.dst_cpu, self.p_cpu
        factors = None
        if mode == "factored" or (mode is None and s > 4096):
            factors = rank_one_plus_sparse(s, src_c, dst_c, p_c, 1.0 if mode == "factored" else 0.25)
        if factors is not None:
            self.mode = "factored"
            self.dtype = dtype = torch.float64  # R has negative corrections: keep float64
            self.init, self.final = self.init.double(), self.final.double()
            alpha, u, r_src, r_dst, r_val = factors
            self.alpha, self.u = alpha.to(self.device), u.to(self.device)
            self.rt, self.r = _csr_pair(r_src, r_dst, r_val, s, self.device, dtype)
            self.r_nnz = int(r_val.numel())
        elif mode == "dense" or (mode in (None, "factored") and (s <= 4096 or s * s <= 16 * self.nnz)):
            self.mode = "dense"
            self.m = torch.zeros(s, s, dtype=dtype, device=self.device)
            self.m[src_c.to(self.device), dst_c.to(self.device)] = p_c.to(self.device, dtype)
        else:
            self.mode = "csr"
            self.mt, self.m = _csr_pair(src_c, dst_c, p_c, s, self.device, dtype)

    @property
    def dense(self) -> bool:
        return self.mode == "dense"

    def fwd(self, a: torch.Tensor) -> torch.Tensor:
        """``a @ M`` for state vectors a [R, S]."""
        if self.mode == "dense":
            return a @ self.m
        if self.mode == "csr":
            return (self.mt @ a.t()).t()
        out = (a @ self.alpha)[:, None] * self.u[None, :] + (self.rt @ a.t()).t()
        return out.clamp_min_(0)  # exact up to rounding: never let it go negative

    def bwd(self, b: torch.Tensor) -> torch.Tensor:
        """``b @ M^T`` for state vectors b [R, S]."""
        if self.mode == "dense":
            return b @ self.m.t()
        if self.mode == "csr":
            return (self.m @ b.t()).t()
        out = (b @ self.u)[:, None] * self.alpha[None, :] + (self.r @ b.t()).t()
        return out.clamp_min_(0)

    def nbytes(self) -> int:
        """Device memory held by the compiled graph."""
        e = torch.finfo(self.dtype).bits // 8
        if self.mode == "dense":
            return self.m.numel() * e + 3 * self.num_states * 8
        if self.mode == "csr":
            return 2 * self.nnz * (e + 8) + 5 * self.num_states * 8
        return 2 * self.r_nnz * (e + 8) + 7 * self.num_states * 8


_CACHE: "weakref.WeakKeyDictionary[Fsa, dict]" = weakref.WeakKeyDictionary()


def compile_graph(fsa: Fsa, device: torch.device | str, dtype: torch.dtype = torch.float64) -> CompiledGraph:
    """The compiled form of ``fsa`` on ``device``, cached per Fsa object (treat Fsa as immutable)."""
    device = torch.device(device)
    per = _CACHE.setdefault(fsa, {})
    key = (str(device), dtype)
    if key not in per:
        per[key] = CompiledGraph(fsa, device, dtype)
    return per[key]


class SharedLayout:
    """All utterances on one graph, probability space: state vectors are [B, S] (the denominator).

    The layouts give the passes one interface over two domains: ``emis_block``/``mul``/``fwd``/``bwd``
    work in the layout's domain, ``normalize`` returns the per-utterance normaliser in that domain,
    ``log_norm`` turns it into a log, ``prob`` turns state values into probabilities.
    """

    log_space = False

    def __init__(self, g: CompiledGraph, batch: int, num_labels: int) -> None:
        self.g, self.batch, self.num_labels = g, batch, num_labels
        self.dtype = g.dtype
        self.arc_shift, self.final_shift = g.arc_shift, g.final_shift
        self.zero = 0.0

    def init(self) -> torch.Tensor:
        return self.g.init.expand(self.batch, -1)

    def final(self) -> torch.Tensor:
        return self.g.final[None]

    def gather(self, frame: torch.Tensor) -> torch.Tensor:
        """Per-state values of a per-label frame [B, V] -> [B, S]."""
        return frame.index_select(1, self.g.label)

    def mul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b

    def fwd(self, a: torch.Tensor) -> torch.Tensor:
        return self.g.fwd(a)

    def bwd(self, b: torch.Tensor) -> torch.Tensor:
        return self.g.bwd(b)

    def normalize(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a / c, c) with c the per-utterance sum; c = 0 (a dead utterance) is detected afterwards."""
        c = a.sum(1)
        return a / c[:, None], c

    def emis_block(self, shifted: torch.Tensor) -> torch.Tensor:
        """Per-state emissions of a block of frames [B, K, V] -> [K, B, S]."""
        e = torch.exp(shifted)
        # gather with an expanded index: index_select along the last dim is ~10x slower on CPU
        return torch.gather(e, 2, self.g.label.expand(e.shape[0], e.shape[1], -1)).transpose(0, 1)

    def is_dead(self, c: torch.Tensor) -> torch.Tensor:
        return c <= 0

    def unnorm(self, v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return v / c[:, None]

    def log_norm(self, c: torch.Tensor) -> torch.Tensor:
        return torch.log(c)

    def final_sum(self, a: torch.Tensor) -> torch.Tensor:
        """log of sum_s alpha[s] * final[s], per utterance."""
        return torch.log((a * self.g.final[None]).sum(1))

    def beta_init(self, log_zf: torch.Tensor) -> torch.Tensor:
        return self.g.final[None] / torch.exp(log_zf)[:, None].to(self.dtype)

    def prob(self, v: torch.Tensor) -> torch.Tensor:
        return v

    def per_state(self, v: torch.Tensor) -> torch.Tensor:
        return v[:, None]

    def viable(self, lens: torch.Tensor, t: int) -> torch.Tensor | None:
        """Mask of states that can still reach a final state in the ``lens - 1 - t`` frames left after
        frame t (None: every state can; then nothing is computed)."""
        return None if self.g.dist is None else self.g.dist[None, :] <= (lens - 1 - t)[:, None]

    def to_labels(self, gam: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(self.batch, self.num_labels, dtype=gam.dtype, device=gam.device)
        return out.index_add_(1, self.g.label, gam)

    def to_labels_block(self, gam: torch.Tensor) -> torch.Tensor:
        """Per-state values of K frames [K, B, S] summed per label -> [K, B, V]."""
        out = torch.zeros(*gam.shape[:2], self.num_labels, dtype=gam.dtype, device=gam.device)
        return out.index_add_(2, self.g.label, gam)

    def final_start(self) -> torch.Tensor:
        return torch.full((self.batch,), self.g.final_start, dtype=torch.float64, device=self.g.device)

    def state_bytes(self) -> int:
        return self.batch * self.g.num_states * torch.finfo(self.dtype).bits // 8


def _seg_lse(values: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Segment logsumexp (``-inf`` for empty segments), float64."""
    mx = torch.full((n,), NEG_INF, dtype=values.dtype, device=values.device)
    mx = mx.scatter_reduce(0, index, values, reduce="amax", include_self=True)
    safe = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    s = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, index, torch.exp(values - safe[index]))
    return torch.log(s) + safe


class FlatLayout:
    """Per-utterance graphs (the numerators) stacked block-diagonally, **log space**, float64: state
    vectors are [S_total].

    Log space because a numerator constrains the future: a prefix that is far behind at frame t can
    still own the posterior later, and its alpha may be more than 700 nats below the best prefix,
    which probability space would flush to zero (measured on peaky 3000-frame inputs). Numerator graphs
    are small, so the segment-logsumexp per frame is cheap.
    """

    log_space = True

    def __init__(self, label: torch.Tensor, utt: torch.Tensor, init_log: torch.Tensor, final_log: torch.Tensor,
                 src: torch.Tensor, dst: torch.Tensor, logp: torch.Tensor, final_start_log: torch.Tensor,
                 dist: torch.Tensor, batch: int, num_labels: int, arc_shift: float, final_shift: float) -> None:
        self.label, self.utt, self.init_log, self.final_log = label, utt, init_log, final_log
        self.src, self.dst, self.logp = src, dst, logp
        self.final_start_log, self.dist = final_start_log, dist
        self.batch, self.num_labels = batch, num_labels
        self.arc_shift, self.final_shift = arc_shift, final_shift
        self.flat = utt * num_labels + label
        self.num_states = int(label.numel())
        self.dtype = torch.float64
        self.zero = NEG_INF

    def init(self) -> torch.Tensor:
        return self.init_log

    def final(self) -> torch.Tensor:
        return self.final_log

    def gather(self, frame: torch.Tensor) -> torch.Tensor:
        return frame.reshape(-1)[self.flat]

    def mul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b

    def fwd(self, a: torch.Tensor) -> torch.Tensor:
        return _seg_lse(a[self.src] + self.logp, self.dst, self.num_states)

    def bwd(self, b: torch.Tensor) -> torch.Tensor:
        return _seg_lse(b[self.dst] + self.logp, self.src, self.num_states)

    def normalize(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a - c, c) with c the per-utterance max log value (-inf: a dead utterance)."""
        c = torch.full((self.batch,), NEG_INF, dtype=a.dtype, device=a.device)
        c = c.scatter_reduce(0, self.utt, a, reduce="amax", include_self=True)
        return a - c[self.utt], c

    def emis_block(self, shifted: torch.Tensor) -> torch.Tensor:
        """[B, K, V] -> [K, S]."""
        k = shifted.shape[1]
        return shifted.transpose(0, 1).reshape(k, -1)[:, self.flat]

    def is_dead(self, c: torch.Tensor) -> torch.Tensor:
        return c == NEG_INF

    def unnorm(self, v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return v - c[self.utt]

    def log_norm(self, c: torch.Tensor) -> torch.Tensor:
        return c

    def final_sum(self, a: torch.Tensor) -> torch.Tensor:
        return _seg_lse(a + self.final_log, self.utt, self.batch)

    def beta_init(self, log_zf: torch.Tensor) -> torch.Tensor:
        return self.final_log - log_zf[self.utt]

    def prob(self, v: torch.Tensor) -> torch.Tensor:
        return torch.exp(v)

    def per_state(self, v: torch.Tensor) -> torch.Tensor:
        return v[self.utt]

    def viable(self, lens: torch.Tensor, t: int) -> torch.Tensor | None:
        return self.dist <= (lens - 1 - t)[self.utt]

    def to_labels(self, gam: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(self.batch * self.num_labels, dtype=gam.dtype, device=gam.device)
        return out.index_add_(0, self.flat, gam).view(self.batch, self.num_labels)

    def to_labels_block(self, gam: torch.Tensor) -> torch.Tensor:
        """[K, S_total] -> [K, B, V]."""
        out = torch.zeros(gam.shape[0], self.batch * self.num_labels, dtype=gam.dtype, device=gam.device)
        return out.index_add_(1, self.flat, gam).view(-1, self.batch, self.num_labels)

    def final_start(self) -> torch.Tensor:
        return self.final_start_log

    def state_bytes(self) -> int:
        return self.num_states * 8


Layout = SharedLayout | FlatLayout


def numerator_layout(g: CompiledGraph, targets: Sequence[Sequence[int]], num_labels: int) -> FlatLayout:
    """The den graph restricted, per utterance, to the paths whose CTC collapse is the target.

    It is the product of the (state-labelled) den graph with the CTC alignment automaton of the target
    (positions 0..2U: even = blank, odd = token), built breadth-first over positions for the whole
    batch at once, so only the den states reachable along the reference are visited. Being a
    restriction of the den graph it keeps P's weights and num <= den holds exactly.
    """
    b_n = len(targets)
    s = g.num_states
    lmax = g.num_labels
    u_max = max((len(t) for t in targets), default=0)
    q_n = 2 * u_max + 1
    lab_tab = torch.full((b_n, q_n + 2), -1, dtype=torch.long)
    for b, t in enumerate(targets):
        lab_tab[b, 0: 2 * len(t) + 1: 2] = 0
        if len(t):
            lab_tab[b, 1: 2 * len(t): 2] = torch.as_tensor(list(t), dtype=torch.long)
    ulen = torch.as_tensor([len(t) for t in targets], dtype=torch.long)
    keys_sorted, order = g.num_keys, g.num_order
    t_dst, t_p = g.dst_cpu, g.p_cpu

    def arcs_from(bs: torch.Tensor, labs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Transitions from states bs = b * S + s into states labelled labs (-1 = none):
        (index into bs, destination b * S + s', probability)."""
        qi = torch.nonzero((labs >= 0) & (labs < lmax)).flatten()
        q = (bs[qi] % s) * lmax + labs[qi]
        lo = torch.searchsorted(keys_sorted, q)
        counts = torch.searchsorted(keys_sorted, q, right=True) - lo
        rep = torch.repeat_interleave(torch.arange(lo.numel()), counts)
        first = torch.cumsum(counts, 0) - counts
        tr = order[lo[rep] + torch.arange(rep.numel()) - first[rep]]
        qi = qi[rep]
        return qi, (bs[qi] // s) * s + t_dst[tr], t_p[tr]

    init_states = torch.nonzero(g.init_cpu > 0).flatten()
    pending: list[list[torch.Tensor]] = [[] for _ in range(q_n + 2)]
    for q in (0, 1):
        if q < q_n:
            bb = torch.arange(b_n).repeat_interleave(init_states.numel())
            ss = init_states.repeat(b_n)
            ok = g.label_cpu[ss] == lab_tab[bb, q]
            pending[q].append(bb[ok] * s + ss[ok])
    layers: list[torch.Tensor] = []
    a_from, a_to, a_p, a_qf, a_qt = [], [], [], [], []
    empty = torch.zeros(0, dtype=torch.long)
    for q in range(q_n):
        states = torch.unique(torch.cat(pending[q])) if pending[q] else empty
        frontier = states
        while frontier.numel():
            # one query for the three CTC moves: stay at q (blank loop, token repeat), q + 1, q + 2
            # (token -> next token: only from a token position and when the two tokens differ)
            bq = frontier // s
            stay, nxt, skip = lab_tab[bq, q], lab_tab[bq, q + 1], lab_tab[bq, q + 2].clone()
            skip[(q % 2 == 0) | (skip == stay)] = -1
            n_f = frontier.numel()
            qi, to, p = arcs_from(frontier.repeat(3), torch.cat([stay, nxt, skip]))
            dq = qi // n_f
            a_from.append(frontier[qi % n_f]), a_to.append(to), a_p.append(p)
            a_qf.append(torch.full_like(to, q)), a_qt.append(q + dq)
            for d in (1, 2):
                pending[q + d].append(to[dq == d])
            new = torch.unique(to[dq == 0])
            new = new[~torch.isin(new, states)]
            states = torch.cat([states, new])
            frontier = new
        layers.append(states)
    # number the product states (b, q, s) in sorted order: utterance blocks are contiguous
    gkey = torch.cat([((st // s) * q_n + q) * s + st % s for q, st in enumerate(layers)]) if layers else empty
    gkey, _ = torch.sort(gkey)
    n_prod = gkey.numel()

    def ids(bs: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
        return torch.searchsorted(gkey, ((bs // s) * q_n + qs) * s + bs % s)

    cat = (lambda xs: torch.cat(xs) if xs else empty)
    src = ids(cat(a_from), cat(a_qf))
    dst = ids(cat(a_to), cat(a_qt))
    p = torch.cat(a_p) if a_p else torch.zeros(0, dtype=torch.float64)
    st_b = gkey // (q_n * s)
    st_q = (gkey // s) % q_n
    st_s = gkey % s
    label = g.label_cpu[st_s]
    init = torch.where(st_q <= 1, g.init_cpu[st_s], torch.zeros(n_prod, dtype=torch.float64))
    last = 2 * ulen[st_b]
    is_final = (st_q == last) | ((st_q == last - 1) & (ulen[st_b] > 0))
    final = torch.where(is_final, g.final_cpu[st_s], torch.zeros(n_prod, dtype=torch.float64))
    fstart = torch.where(ulen == 0, torch.full((b_n,), g.final_start, dtype=torch.float64),
                         torch.full((b_n,), NEG_INF, dtype=torch.float64))
    dist = frames_to_final(n_prod, src, dst, final)
    dev = g.device
    return FlatLayout(label.to(dev), st_b.to(dev), torch.log(init).to(dev), torch.log(final).to(dev),
                      src.to(dev), dst.to(dev), torch.log(p).to(dev), fstart.to(dev), dist.to(dev), b_n,
                      num_labels, g.arc_shift, g.final_shift)


# ---------------------------------------------------------------------------- the passes
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
            xs = self.x[:, self.t0: self.t0 + self.size].to(self.layout.dtype)
            ms = self.m[:, self.t0: self.t0 + self.size, None].to(self.layout.dtype)
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


def _step(layout: Layout, emis: _Emissions, t: int, a_prev: torch.Tensor | None, lens: torch.Tensor,
          lens_cpu: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
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


def _alphas(layout: Layout, emis: _Emissions, lens: torch.Tensor, fw: _Forward, t0: int, t1: int
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


def _beta_step(layout: Layout, emis: _Emissions, fw: _Forward, t: int, beta: torch.Tensor | None,
               like: torch.Tensor, fin: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
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


def occupancy(layout: Layout, x: torch.Tensor, lengths: torch.Tensor, fw: _Forward,
              out: torch.Tensor | None = None, scale: torch.Tensor | None = None) -> torch.Tensor:
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
        out[:, t_lo: t_lo + len(pending)] += occ.transpose(0, 1).to(out.dtype)
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


def hvp(layout: SharedLayout, x: torch.Tensor, lengths: torch.Tensor, fw: _Forward, grad: torch.Tensor
        ) -> torch.Tensor:
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
