"""`Fsa`: an epsilon-free weighted acceptor stored as plain tensors, plus the log-semiring graph
operations the LF-MMI graphs need (epsilon removal, trimming, merging parallel arcs) and conversion
to and from kaldifst.

Conventions (the DESIGN.md contract):

* arcs ``src``, ``dst``, ``label`` (LongTensor [A]) and ``score`` (FloatTensor [A], a log weight);
  ``start`` (int); ``final`` (FloatTensor [N], log weight, ``-inf`` = not final);
* every arc consumes exactly one frame; ``label`` is a token id, the CTC blank is 0;
* path weights combine in the log semiring: a path's score is the sum of its arc scores plus the final
  weight of its last state, and several paths are combined with logsumexp.

kaldifst (OpenFst) uses costs (``-log`` weights) and reserves ilabel 0 for epsilon, so on conversion
**FST label = token id + 1** (blank 0 -> 1), as icefall's ``add_one`` and kaldi-decoder's
``DecodableCtc`` (which reads column ``ilabel - 1``) do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kaldifst
import torch

from distill import safe_load
from distill.safe_load import CheckpointError

__all__ = ["Fsa", "remove_epsilon", "connect", "merge_parallel_arcs", "segment_logsumexp"]

_FORMAT = "distill.graph.Fsa/1"
NEG_INF = float("-inf")


def segment_logsumexp(values: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """``out[i] = logsumexp(values[index == i])`` for i < n (``-inf`` for empty segments)."""
    out = torch.full((n,), NEG_INF, dtype=values.dtype, device=values.device)
    if values.numel() == 0:
        return out
    mx = out.scatter_reduce(0, index, values, reduce="amax", include_self=True)
    safe = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    s = torch.zeros_like(out).index_add_(0, index, torch.exp(values - safe[index]))
    return torch.log(s) + safe


class Fsa:
    """Epsilon-free weighted acceptor over frame labels (see the module docstring).

    Treat an instance as immutable: the loss functions cache a compiled form per ``Fsa`` object.
    """

    def __init__(
        self,
        src: torch.Tensor,
        dst: torch.Tensor,
        label: torch.Tensor,
        score: torch.Tensor,
        start: int,
        final: torch.Tensor,
    ) -> None:
        self.src = torch.as_tensor(src, dtype=torch.long)
        self.dst = torch.as_tensor(dst, dtype=torch.long, device=self.src.device)
        self.label = torch.as_tensor(label, dtype=torch.long, device=self.src.device)
        self.score = torch.as_tensor(score, device=self.src.device)
        if not self.score.is_floating_point():
            self.score = self.score.float()
        self.final = torch.as_tensor(final, device=self.src.device)
        if not self.final.is_floating_point():
            self.final = self.final.float()
        self.start = int(start)
        self.validate()

    # ------------------------------------------------------------------ basics
    @property
    def num_states(self) -> int:
        return int(self.final.numel())

    @property
    def num_arcs(self) -> int:
        return int(self.src.numel())

    @property
    def device(self) -> torch.device:
        return self.src.device

    def max_label(self) -> int:
        """Largest arc label, or -1 for a graph without arcs."""
        return int(self.label.max()) if self.num_arcs else -1

    def validate(self) -> None:
        """Raise ValueError when the tensors do not describe a well-formed graph."""
        a = self.src.numel()
        for name in ("src", "dst", "label", "score"):
            t = getattr(self, name)
            if t.dim() != 1 or t.numel() != a:
                raise ValueError(f"Fsa: '{name}' must be 1-D with {a} entries, got shape {tuple(t.shape)}")
        if self.final.dim() != 1:
            raise ValueError(f"Fsa: 'final' must be 1-D, got shape {tuple(self.final.shape)}")
        n = self.num_states
        if n == 0:
            raise ValueError("Fsa: a graph needs at least one state (the start state)")
        if not 0 <= self.start < n:
            raise ValueError(f"Fsa: start state {self.start} is not in [0, {n})")
        if a:
            if (
                int(self.src.min()) < 0
                or int(self.src.max()) >= n
                or int(self.dst.min()) < 0
                or int(self.dst.max()) >= n
            ):
                raise ValueError(f"Fsa: arc 'src'/'dst' must lie in [0, {n})")
            if int(self.label.min()) < 0:
                raise ValueError("Fsa: labels must be >= 0 (no epsilon arcs; blank is 0)")
            if torch.isnan(self.score).any() or (self.score == float("inf")).any():
                raise ValueError("Fsa: arc scores must not be NaN or +inf")
        if torch.isnan(self.final).any() or (self.final == float("inf")).any():
            raise ValueError("Fsa: final weights must not be NaN or +inf (-inf means not final)")

    def to(self, device: torch.device | str) -> Fsa:
        """A copy on ``device`` (the same object when it is already there)."""
        device = torch.device(device)
        if self.src.device == device:
            return self
        return Fsa(
            self.src.to(device),
            self.dst.to(device),
            self.label.to(device),
            self.score.to(device),
            self.start,
            self.final.to(device),
        )

    def __repr__(self) -> str:
        return f"Fsa(num_states={self.num_states}, num_arcs={self.num_arcs}, start={self.start})"

    # ------------------------------------------------------------------ I/O
    def to_dict(self) -> dict[str, Any]:
        """Plain tensors and ints only, so that ``torch.load(weights_only=True)`` reads it back."""
        return {
            "format": _FORMAT,
            "src": self.src.cpu(),
            "dst": self.dst.cpu(),
            "label": self.label.cpu(),
            "score": self.score.cpu(),
            "start": self.start,
            "final": self.final.cpu(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "<dict>") -> Fsa:
        missing = [k for k in ("src", "dst", "label", "score", "start", "final") if k not in d]
        if missing or d.get("format") != _FORMAT:
            raise ValueError(f"{where}: not a saved distill Fsa (format {d.get('format')!r}, missing {missing})")
        return cls(d["src"], d["dst"], d["label"], d["score"], int(d["start"]), d["final"])

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.to_dict(), str(path))

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> Fsa:
        """Read a graph written by :meth:`save` (:func:`distill.safe_load.load`: no code is unpickled); an
        unreadable file raises :class:`~distill.safe_load.CheckpointError` naming it."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"graph file '{p}' does not exist")
        try:
            d = safe_load.load(p, map_location, what="graph file")
        except CheckpointError as e:  # (a ValueError, as this method's other errors)
            raise CheckpointError.for_file(f"{p}: cannot read the graph: {e.detail}", p, e.detail) from None
        if not isinstance(d, dict):
            raise ValueError(f"{p}: not a saved distill Fsa")
        return cls.from_dict(d, where=str(p))

    def to_str(self, symbols: dict[int, str] | None = None) -> str:
        """Text dump in OpenFst-like acceptor format: ``src dst label score`` lines (sorted by src),
        then ``state final_score`` lines; the first line is ``start <state>``. Scores are log weights."""
        lines = [f"start {self.start}"]
        order = torch.argsort(self.src * (self.num_states + 1) + self.dst, stable=True).tolist()
        src, dst, lab, sc = (t.tolist() for t in (self.src, self.dst, self.label, self.score))
        for i in order:
            name = symbols.get(lab[i], str(lab[i])) if symbols else str(lab[i])
            lines.append(f"{src[i]} {dst[i]} {name} {sc[i]:.6g}")
        for s, f in enumerate(self.final.tolist()):
            if f != NEG_INF:
                lines.append(f"{s} {f:.6g}")
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ kaldifst
    def to_kaldifst(self) -> Any:
        """A ``kaldifst.StdVectorFst`` acceptor with labels ``token + 1`` and costs ``-score``."""
        fst = kaldifst.StdVectorFst()
        for _ in range(self.num_states):
            fst.add_state()
        fst.start = self.start
        for s, d, lab, sc in zip(self.src.tolist(), self.dst.tolist(), self.label.tolist(), self.score.tolist()):
            if sc == NEG_INF:
                continue
            fst.add_arc(state=s, arc=kaldifst.StdArc(lab + 1, lab + 1, -sc, d))
        for s, f in enumerate(self.final.tolist()):
            if f != NEG_INF:
                fst.set_final(state=s, weight=-f)
        return fst

    @classmethod
    def from_kaldifst(cls, fst: Any, remove_eps: bool = False) -> Fsa:
        """Build from a kaldifst FST using its input labels (``label = ilabel - 1``).

        Input-epsilon arcs (ilabel 0) do not consume a frame: they raise ValueError unless
        ``remove_eps``, which removes them exactly in the log semiring (:func:`remove_epsilon`).
        """
        n, src, dst, lab, score, start, final = fst_arrays(fst)
        if (lab < 0).any() and not remove_eps:
            raise ValueError(f"FST has {int((lab < 0).sum())} input-epsilon arcs; pass remove_eps=True")
        return remove_epsilon(n, src, dst, lab, score, start, final)


def fst_arrays(fst: Any) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, torch.Tensor]:
    """(num_states, src, dst, label = ilabel - 1 (-1 = epsilon), log weight, start, final log weight)
    of a kaldifst FST, read arc by arc (the text form would round weights to 6 digits)."""
    n = fst.num_states
    if n == 0 or fst.start < 0:
        raise ValueError("FST is empty (no start state)")
    src, dst, lab, cost = [], [], [], []
    final = torch.full((n,), NEG_INF, dtype=torch.float64)
    for s in range(n):
        it = kaldifst.ArcIterator(fst, s)
        for arc in it:
            src.append(s)
            dst.append(arc.nextstate)
            lab.append(arc.ilabel - 1)
            cost.append(arc.weight.value)
        fw = fst.final(s).value
        if fw != float("inf"):
            final[s] = -fw
    return (
        n,
        torch.tensor(src, dtype=torch.long),
        torch.tensor(dst, dtype=torch.long),
        torch.tensor(lab, dtype=torch.long),
        -torch.tensor(cost, dtype=torch.float64),
        int(fst.start),
        final,
    )


def _csr(index: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Order that sorts ``index`` and the CSR row pointer [n+1] of the sorted index."""
    order = torch.argsort(index, stable=True)
    counts = torch.bincount(index, minlength=n)
    ptr = torch.zeros(n + 1, dtype=torch.long, device=index.device)
    ptr[1:] = torch.cumsum(counts, 0)
    return order, ptr


def _expand(ptr: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each entry i of ``rows`` and each position p in CSR row ``rows[i]``: (i, p)."""
    counts = ptr[rows + 1] - ptr[rows]
    rep = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), counts)
    first = torch.cumsum(counts, 0) - counts
    pos = ptr[rows][rep] + torch.arange(rep.numel(), device=rows.device) - first[rep]
    return rep, pos


def remove_epsilon(
    num_states: int,
    src: torch.Tensor,
    dst: torch.Tensor,
    label: torch.Tensor,
    score: torch.Tensor,
    start: int,
    final: torch.Tensor,
) -> Fsa:
    """Exact epsilon removal in the log semiring (arcs with ``label < 0`` are epsilon).

    Every path through epsilon arcs is kept and path weights are summed, so the weight the result gives
    a label sequence (the logsumexp over all its paths) equals the input's. This is k2's
    ``remove_epsilon`` semantics; for an ARPA back-off graph it means that a listed n-gram is reached
    both directly and through the back-off arc (see docs/lfmmi.md). Epsilon cycles raise ValueError.
    The result is trimmed (:func:`connect`) and parallel arcs are merged.
    """
    score = score.double()
    final = final.double()
    eps = label < 0
    e_src, e_dst, e_w = src[eps], dst[eps], score[eps]
    n_src, n_dst, n_lab, n_w = src[~eps], dst[~eps], label[~eps], score[~eps]
    # epsilon closure: (origin, reached, log weight), paths of equal length merged per depth
    c_o = torch.arange(num_states)
    c_r = c_o.clone()
    c_w = torch.zeros(num_states, dtype=torch.float64)
    parts = [(c_o, c_r, c_w)]
    if e_src.numel():
        e_order, e_ptr = _csr(e_src, num_states)
        e_dst, e_w = e_dst[e_order], e_w[e_order]
        f_o, f_r, f_w = c_o, c_r, c_w
        for depth in range(num_states + 1):
            rep, pos = _expand(e_ptr, f_r)
            if rep.numel() == 0:
                break
            if depth == num_states:
                raise ValueError("remove_epsilon: the graph has an epsilon cycle")
            o, r, w = f_o[rep], e_dst[pos], f_w[rep] + e_w[pos]
            key = o * num_states + r
            uniq, inv = torch.unique(key, return_inverse=True)
            f_w = segment_logsumexp(w, inv, uniq.numel())
            f_o, f_r = uniq // num_states, uniq % num_states
            parts.append((f_o, f_r, f_w))
        c_o = torch.cat([p[0] for p in parts])
        c_r = torch.cat([p[1] for p in parts])
        c_w = torch.cat([p[2] for p in parts])
    # new arcs: origin --(arc out of reached)--> arc dst
    a_order, a_ptr = _csr(n_src, num_states)
    n_dst, n_lab, n_w = n_dst[a_order], n_lab[a_order], n_w[a_order]
    rep, pos = _expand(a_ptr, c_r)
    out_src, out_dst, out_lab, out_w = c_o[rep], n_dst[pos], n_lab[pos], c_w[rep] + n_w[pos]
    new_final = segment_logsumexp(c_w + final[c_r], c_o, num_states)
    fsa = Fsa(out_src, out_dst, out_lab, out_w, start, new_final)
    return connect(merge_parallel_arcs(fsa))


def merge_parallel_arcs(fsa: Fsa) -> Fsa:
    """Combine arcs with the same (src, dst, label) into one whose score is their logsumexp (exact)."""
    if fsa.num_arcs == 0:
        return fsa
    n, lmax = fsa.num_states, fsa.max_label() + 1
    key = (fsa.src * n + fsa.dst) * lmax + fsa.label
    uniq, inv = torch.unique(key, return_inverse=True)
    w = segment_logsumexp(fsa.score.double(), inv, uniq.numel()).to(fsa.score.dtype)
    lab = uniq % lmax
    sd = uniq // lmax
    return Fsa(sd // n, sd % n, lab, w, fsa.start, fsa.final)


def _reach(n: int, frm: torch.Tensor, to: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """Boolean mask of states reachable from ``seeds`` along arcs frm -> to (frontier BFS)."""
    seen = torch.zeros(n, dtype=torch.bool, device=frm.device)
    seen[seeds] = True
    order, ptr = _csr(frm, n)
    to = to[order]
    frontier = seeds.unique()
    while frontier.numel():
        _, pos = _expand(ptr, frontier)
        nxt = to[pos].unique()
        nxt = nxt[~seen[nxt]]
        seen[nxt] = True
        frontier = nxt
    return seen


def connect(fsa: Fsa) -> Fsa:
    """Keep only states on some successful path (accessible and co-accessible), renumbered in order.

    Arcs with score ``-inf`` are dropped. A graph that accepts nothing becomes a single non-final
    start state.
    """
    keep_arc = fsa.score > NEG_INF
    src, dst = fsa.src[keep_arc], fsa.dst[keep_arc]
    n = fsa.num_states
    acc = _reach(n, src, dst, torch.tensor([fsa.start], device=fsa.device))
    finals = torch.nonzero(fsa.final > NEG_INF).flatten()
    coacc = _reach(n, dst, src, finals)
    keep = acc & coacc
    if not bool(keep[fsa.start]):
        return Fsa(
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0, dtype=fsa.score.dtype),
            0,
            torch.full((1,), NEG_INF, dtype=fsa.final.dtype),
        )
    new_id = torch.cumsum(keep.long(), 0) - 1
    arc_ok = keep_arc & keep[fsa.src] & keep[fsa.dst]
    return Fsa(
        new_id[fsa.src[arc_ok]],
        new_id[fsa.dst[arc_ok]],
        fsa.label[arc_ok],
        fsa.score[arc_ok],
        int(new_id[fsa.start]),
        fsa.final[keep],
    )
