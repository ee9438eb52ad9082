"""The numerator layout: the den graph restricted, per utterance, to the paths of the reference."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from distill.losses.compiled_graph import NEG_INF, CompiledGraph, frames_to_final
from distill.losses.layouts import FlatLayout

__all__ = ["numerator_layout"]


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
        lab_tab[b, 0 : 2 * len(t) + 1 : 2] = 0
        if len(t):
            lab_tab[b, 1 : 2 * len(t) : 2] = torch.as_tensor(list(t), dtype=torch.long)
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

    def cat(xs: list) -> torch.Tensor:
        return torch.cat(xs) if xs else empty

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
    fstart = torch.where(
        ulen == 0,
        torch.full((b_n,), g.final_start, dtype=torch.float64),
        torch.full((b_n,), NEG_INF, dtype=torch.float64),
    )
    dist = frames_to_final(n_prod, src, dst, final)
    dev = g.device
    return FlatLayout(
        label.to(dev),
        st_b.to(dev),
        torch.log(init).to(dev),
        torch.log(final).to(dev),
        src.to(dev),
        dst.to(dev),
        torch.log(p).to(dev),
        fstart.to(dev),
        dist.to(dev),
        b_n,
        num_labels,
        g.arc_shift,
        g.final_shift,
    )
