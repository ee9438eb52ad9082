"""The state-labelled, probability-space form of an `Fsa` that the forward-backward passes run on.

Every state of the compiled graph has one emission label (a new state is a distinct (destination,
label) pair of the `Fsa`'s arcs; for CTC-topology graphs this is the identity), so one frame of the
forward pass is ``alpha_t = (alpha_{t-1} @ M) * e_t[label]`` with a fixed transition matrix M, held
dense, CSR sparse or as *rank one + sparse* (large back-off den graphs). Graph weights are
``exp(w - max w)``. :mod:`distill.losses.fb` describes the whole algorithm.
"""

from __future__ import annotations

import math
import warnings
import weakref

import torch

from distill.graph.fsa import Fsa, _csr, _expand

__all__ = ["NEG_INF", "CompiledGraph", "compile_graph", "frames_to_final", "rank_one_plus_sparse"]

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


def rank_one_plus_sparse(
    s: int, src: torch.Tensor, dst: torch.Tensor, p: torch.Tensor, max_fraction: float = 0.25
) -> tuple[torch.Tensor, ...] | None:
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


def _csr_pair(
    src: torch.Tensor, dst: torch.Tensor, val: torch.Tensor, s: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
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

    def __init__(
        self, fsa: Fsa, device: torch.device, dtype: torch.dtype = torch.float64, mode: str | None = None
    ) -> None:
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
            0, inv[from_start], torch.exp(w[from_start] - self.arc_shift)
        )
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


_CACHE: weakref.WeakKeyDictionary[Fsa, dict] = weakref.WeakKeyDictionary()


def compile_graph(fsa: Fsa, device: torch.device | str, dtype: torch.dtype = torch.float64) -> CompiledGraph:
    """The compiled form of ``fsa`` on ``device``, cached per Fsa object (treat Fsa as immutable)."""
    device = torch.device(device)
    per = _CACHE.setdefault(fsa, {})
    key = (str(device), dtype)
    if key not in per:
        per[key] = CompiledGraph(fsa, device, dtype)
    return per[key]
