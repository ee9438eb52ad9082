"""The LF-MMI denominator graph: standard CTC topology composed with a back-off token n-gram P.

Pipeline (``build_den_graph``): training token sequences -> :func:`estimate_ngram` -> ``P.arpa``
(written by our ARPA writer) -> ``kaldilm.arpa2fst`` (back-off arcs carry ``#0``, which we turn into
epsilon) -> ``kaldifst.compose(ctc_topo_fst, P)`` -> exact log-semiring epsilon removal, trimming and
merging of parallel arcs -> :class:`Fsa` with label = token id (blank 0).

``method="direct"`` gives the same graph without kaldifst's composition (P's epsilons are removed
first, then the CTC topology is composed with vectorised tensor code); it exists because the kaldifst
route builds the V^2-arc CTC topology arc by arc, which takes minutes for V in the thousands. The two
routes are checked against each other in the tests.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import kaldifst
import torch

from distill.graph.fsa import Fsa, _csr, _expand, connect, fst_arrays, merge_parallel_arcs, remove_epsilon
from distill.graph.ngram import BOS, EOS, NgramLM, Smoothing, arpa_to_fst, estimate_ngram
from distill.graph.topo import check_num_tokens, ctc_topo_fst

__all__ = [
    "read_tokens",
    "read_token_ids",
    "iter_token_ids",
    "TokenIdsStats",
    "train_token_lm",
    "load_token_lm_arrays",
    "ctc_topo",
    "compose_ctc_topo",
    "den_graph_from_arpa",
    "build_den_graph",
]

_RESERVED = (BOS, EOS, "#0", "<eps>")


def read_tokens(path: str | Path) -> list[str]:
    """Read ``tokens.txt`` (lines ``<token> <id>``); returns the symbols indexed by id.

    Ids must be 0..V-1 without gaps or duplicates; id 0 is the CTC blank.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"token list '{p}' does not exist")
    by_id: dict[int, str] = {}
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{p}:{lineno}: expected '<token> <id>', got {line!r}")
        sym, sid = parts
        try:
            i = int(sid)
        except ValueError:
            raise ValueError(f"{p}:{lineno}: token id {sid!r} is not an integer") from None
        if i in by_id:
            raise ValueError(f"{p}:{lineno}: token id {i} appears twice ({by_id[i]!r} and {sym!r})")
        if sym in _RESERVED:
            raise ValueError(f"{p}:{lineno}: token {sym!r} is reserved by the n-gram/FST tools")
        by_id[i] = sym
    if not by_id:
        raise ValueError(f"{p}: no tokens")
    v = len(by_id)
    if sorted(by_id) != list(range(v)):
        missing = sorted(set(range(v)) - set(by_id))
        raise ValueError(f"{p}: ids must be 0..{v - 1} without gaps (missing {missing[:5]})")
    syms = [by_id[i] for i in range(v)]
    if len(set(syms)) != v:
        raise ValueError(f"{p}: a token symbol appears twice")
    if v < 2:
        raise ValueError(f"{p}: needs the blank (id 0) and at least one token")
    return syms


class TokenIdsStats:
    """What :func:`iter_token_ids` has read so far: utterances, tokens and empty lines skipped."""

    def __init__(self) -> None:
        self.utterances = self.tokens = self.empty = 0


def iter_token_ids(path: str | Path, num_tokens: int, stats: TokenIdsStats | None = None) -> Iterator[list[int]]:
    """Stream ``train_token_ids.txt`` (one utterance per line, space-separated token ids, no blanks).

    One line in memory at a time (GigaSpeech XL: 8 M lines); empty lines are skipped and counted in
    ``stats``. An id outside 1..V-1 raises ValueError naming the line, as does a file without utterances
    (at its end).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"training token file '{p}' does not exist")
    st = stats if stats is not None else TokenIdsStats()
    with open(p, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                st.empty += 1
                continue
            try:
                ids = [int(x) for x in parts]
            except ValueError:
                raise ValueError(f"{p}:{lineno}: not a list of integer token ids: {line.strip()[:80]!r}") from None
            if min(ids) < 1 or max(ids) >= num_tokens:
                bad = next(i for i in ids if not 1 <= i < num_tokens)
                raise ValueError(
                    f"{p}:{lineno}: token id {bad} is outside 1..{num_tokens - 1} "
                    "(0 is the blank, which must not appear in transcripts)"
                )
            st.utterances += 1
            st.tokens += len(ids)
            yield ids
    if st.utterances == 0:
        raise ValueError(f"{p}: no training utterances")


def read_token_ids(path: str | Path, num_tokens: int) -> tuple[list[list[int]], int]:
    """All of ``train_token_ids.txt`` in memory: (sequences, number of empty lines skipped); see
    :func:`iter_token_ids`, which stage 2 uses instead."""
    st = TokenIdsStats()
    return list(iter_token_ids(path, num_tokens, st)), st.empty


def train_token_lm(
    sequences: Iterable[Sequence[int]],
    tokens: Sequence[str],
    order: int = 2,
    smoothing: Smoothing = "kneser_ney",
    min_count: int = 1,
) -> NgramLM:
    """Token n-gram P over all non-blank tokens of ``tokens`` (unseen ones keep a smoothed probability).

    ``sequences`` is read once (it may be :func:`iter_token_ids` over millions of lines)."""
    vocab = list(tokens[1:])
    return estimate_ngram(
        ([tokens[i] for i in s] for s in sequences), order=order, vocab=vocab, smoothing=smoothing, min_count=min_count
    )


def load_token_lm_arrays(
    arpa_path: str | Path, tokens: Sequence[str], order: int | None = None
) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, torch.Tensor]:
    """Load an ARPA token LM with kaldilm; arrays as :func:`fst_arrays` (label = token id, -1 = back-off
    epsilon). ``<s>`` is the start state and ``</s>`` becomes final weights."""
    v = len(tokens)
    with tempfile.TemporaryDirectory() as td:
        syms = Path(td) / "syms.txt"
        lines = ["<eps> 0"] + [f"{t} {i + 1}" for i, t in enumerate(tokens)] + [f"#0 {v + 1}"]
        syms.write_text("\n".join(lines) + "\n", encoding="utf-8")
        fst = arpa_to_fst(arpa_path, syms, order)
    n, src, dst, lab, score, start, final = fst_arrays(fst)
    lab = torch.where(lab == v, torch.full_like(lab, -1), lab)  # '#0' (FST label v + 1) -> epsilon
    if ((lab == 0) | (lab > v)).any():
        raise ValueError(f"{arpa_path}: the LM has arcs on the blank or on unknown symbols")
    return n, src, dst, lab, score, start, final


def _arrays_to_fst(
    n: int,
    src: torch.Tensor,
    dst: torch.Tensor,
    lab: torch.Tensor,
    score: torch.Tensor,
    start: int,
    final: torch.Tensor,
) -> object:
    fst = kaldifst.StdVectorFst()
    for _ in range(n):
        fst.add_state()
    fst.start = start
    for s, d, la, w in zip(src.tolist(), dst.tolist(), lab.tolist(), score.tolist()):
        fst.add_arc(state=s, arc=kaldifst.StdArc(la + 1, la + 1, -w, d))
    for s, f in enumerate(final.tolist()):
        if f != float("-inf"):
            fst.set_final(state=s, weight=-f)
    kaldifst.arcsort(fst, sort_type="ilabel")
    return fst


def ctc_topo(num_tokens: int) -> Fsa:
    """Standard CTC topology over ``num_tokens`` labels as an acceptor of frame-label sequences.

    State k means "the last frame's label was k" (state 0: blank, also the start); every state is final
    and an arc i -> k with label k exists for every i, k, all with weight 0. As an acceptor it accepts
    every frame sequence once, so it is the denominator graph of a flat (uniform) P: with it the
    numerator equals plain CTC.
    """
    check_num_tokens(num_tokens)
    v = num_tokens
    src = torch.arange(v).repeat_interleave(v)
    dst = torch.arange(v).repeat(v)
    return Fsa(src, dst, dst.clone(), torch.zeros(v * v), 0, torch.zeros(v))


def compose_ctc_topo(p: Fsa, num_tokens: int) -> Fsa:
    """Compose the standard CTC topology with an epsilon-free token acceptor ``p`` (vectorised).

    States: one blank state B_h per state h of p, and one token state T_(k,h') per distinct
    (label, destination) of p's arcs (the last frame emitted token k and p is in h'). Arcs:
    B_h -0-> B_h, T_(k,h) -0-> B_h, T_(k,h) -k-> T_(k,h) (repeat, weight 0), and for every arc
    h -k/w-> h' of p: B_h -k/w-> T_(k,h') and T_(j,h) -k/w-> T_(k,h') for j != k. The start is B_start
    and final weights are p's.
    """
    if p.num_arcs and (int(p.label.min()) < 1 or int(p.label.max()) >= num_tokens):
        raise ValueError(f"compose_ctc_topo: token labels must lie in 1..{num_tokens - 1}")
    n = p.num_states
    key = p.label * n + p.dst
    uniq, inv = torch.unique(key, return_inverse=True)
    t_lab, t_hist = uniq // n, uniq % n
    nt = uniq.numel()
    b_ids = torch.arange(n)
    t_ids = n + torch.arange(nt)
    zeros_b = torch.zeros(n, dtype=torch.float64)
    zeros_t = torch.zeros(nt, dtype=torch.float64)
    order, ptr = _csr(p.src, n)
    rep, pos = _expand(ptr, t_hist)
    arc = order[pos]
    keep = p.label[arc] != t_lab[rep]
    rep, arc = rep[keep], arc[keep]
    src = torch.cat([b_ids, t_ids, t_ids, p.src, t_ids[rep]])
    dst = torch.cat([b_ids, t_hist, t_ids, n + inv, n + inv[arc]])
    lab = torch.cat([torch.zeros(n, dtype=torch.long), torch.zeros(nt, dtype=torch.long), t_lab, p.label, p.label[arc]])
    w = p.score.double()
    score = torch.cat([zeros_b, zeros_t, zeros_t, w, w[arc]])
    final = torch.cat([p.final.double(), p.final.double()[t_hist]])
    return connect(merge_parallel_arcs(Fsa(src, dst, lab, score, p.start, final)))


def den_graph_from_arpa(
    arpa_path: str | Path,
    tokens: Sequence[str],
    order: int | None = None,
    method: Literal["kaldifst", "direct"] = "kaldifst",
) -> Fsa:
    """CTC topology composed with the ARPA token LM, back-off epsilons removed in the log semiring."""
    v = len(tokens)
    n, src, dst, lab, score, start, final = load_token_lm_arrays(arpa_path, tokens, order)
    if method == "kaldifst":
        p_fst = _arrays_to_fst(n, src, dst, lab, score, start, final)
        composed = kaldifst.compose(ctc_topo_fst(v), p_fst, connect=True)
        return Fsa.from_kaldifst(composed, remove_eps=True)
    if method == "direct":
        p = remove_epsilon(n, src, dst, lab, score, start, final)
        return compose_ctc_topo(p, v)
    raise ValueError(f"unknown method {method!r} (use 'kaldifst' or 'direct')")


def build_den_graph(
    tokens: Sequence[str],
    sequences: Iterable[Sequence[int]],
    arpa_path: str | Path,
    order: int = 2,
    smoothing: Smoothing = "kneser_ney",
    min_count: int = 1,
    method: Literal["kaldifst", "direct"] = "kaldifst",
) -> Fsa:
    """Estimate P on ``sequences``, write it to ``arpa_path`` and return the denominator graph."""
    lm = train_token_lm(sequences, tokens, order, smoothing, min_count)
    lm.write_arpa(arpa_path)
    return den_graph_from_arpa(arpa_path, tokens, order, method)
