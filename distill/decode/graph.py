"""Decoding graphs for kaldi-decoder, built with kaldifst and kaldilm.

Two kinds, both with input label = token id + 1 (0 is epsilon; kaldi-decoder's ``DecodableCtc`` reads
score column ``ilabel - 1``, so blank = token 0 = label 1):

* **token graph** ``H o P``: the standard CTC topology composed with the token n-gram P of the LF-MMI
  denominator (``data/lang/P.arpa``), in the tropical semiring with P's back-off arcs kept as input
  epsilons. Output label = token id + 1. Its Viterbi path is the one-best of the denominator graph
  (up to the log- vs tropical-semiring treatment of back-off).
* **word graph** ``HLG``: H (with disambiguation self-loops), the lexicon L (each word spelled by its
  pieces, Kaldi-style disambiguation symbols ``#1..#K`` on homophones and prefixes, a ``#0:#0`` loop for
  G's back-off arcs) and the word n-gram G (``kaldilm`` arpa2fst with ``#0``). Steps: L o G,
  determinize_star, minimize_encoded, arcsort; H o LG, determinize_star, minimize_encoded; the
  disambiguation input labels are then replaced by epsilon. Output label = word id of ``words.txt``.

Every graph file ``X.fst`` gets a sidecar ``X.fst.json`` (:class:`GraphInfo`) recording the kind, the
number of tokens it was built for and the word table, so that a decoder can refuse scores of the wrong
width with a clear message.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import kaldifst

from distill.graph.ngram import arpa_to_fst as ngram_arpa_to_fst
from distill.graph.topo import ctc_topo_fst

log = logging.getLogger(__name__)

__all__ = [
    "GraphInfo",
    "GraphError",
    "read_symbol_table",
    "write_symbol_table",
    "read_lexicon",
    "add_disambig",
    "ctc_topo_with_disambig",
    "lexicon_fst",
    "arpa_to_fst",
    "build_token_graph",
    "build_hlg",
    "arpa_unigrams",
    "save_graph",
    "load_graph",
    "graph_max_ilabel",
]

WORD_SPECIALS = ("<eps>", "#0", "<s>", "</s>")


class GraphError(ValueError):
    """A graph or one of its inputs (lexicon, symbol table, ARPA file) is missing or inconsistent."""


@dataclasses.dataclass
class GraphInfo:
    """What a decoder must know about a graph file (stored as ``<graph>.json``)."""

    kind: Literal["token", "word"]
    num_tokens: int
    words: str | None = None  # words.txt for word graphs (absolute, or relative to the graph file)
    num_states: int = 0
    num_arcs: int = 0
    lm: str | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"


# ---------------------------------------------------------------------------------------------------
# text inputs
# ---------------------------------------------------------------------------------------------------
def read_symbol_table(path: str | Path) -> dict[str, int]:
    """Read an OpenFst/Kaldi symbol table (``symbol id`` lines, e.g. ``words.txt``)."""
    p = Path(path)
    if not p.is_file():
        raise GraphError(f"symbol table '{p}' does not exist")
    table: dict[str, int] = {}
    seen: dict[int, str] = {}
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise GraphError(f"{p}:{lineno}: expected '<symbol> <id>', got {line!r}")
        sym, i = parts[0], int(parts[1])
        if sym in table or i in seen:
            raise GraphError(f"{p}:{lineno}: symbol {sym!r} or id {i} appears twice")
        table[sym] = i
        seen[i] = sym
    if not table:
        raise GraphError(f"{p}: empty symbol table")
    return table


def write_symbol_table(table: dict[str, int], path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{s} {i}\n" for s, i in sorted(table.items(), key=lambda kv: kv[1])]
    Path(path).write_text("".join(lines), encoding="utf-8")


def read_lexicon(path: str | Path) -> list[tuple[str, list[str]]]:
    """Read ``lexicon.txt`` (``word piece1 piece2 ...``); a word without pieces is an error."""
    p = Path(path)
    if not p.is_file():
        raise GraphError(f"lexicon '{p}' does not exist")
    out: list[tuple[str, list[str]]] = []
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise GraphError(f"{p}:{lineno}: word {parts[0]!r} has no pronunciation")
        out.append((parts[0], parts[1:]))
    if not out:
        raise GraphError(f"{p}: empty lexicon")
    return out


def add_disambig(lexicon: Sequence[tuple[str, Sequence[str]]]) -> tuple[list[tuple[str, list[str]]], int]:
    """Append ``#k`` to pronunciations that are repeated or a proper prefix of another one.

    This keeps L o G determinizable (as Kaldi's add_lex_disambig.pl). Returns the new lexicon and the
    largest k used (0 when none was needed).
    """
    prons = [tuple(p) for _, p in lexicon]
    counts = Counter(prons)
    prefixes = {p[:i] for p in set(prons) for i in range(1, len(p))}
    used: dict[tuple[str, ...], int] = defaultdict(int)
    out: list[tuple[str, list[str]]] = []
    max_k = 0
    for (word, _), pron in zip(lexicon, prons):
        if counts[pron] > 1 or pron in prefixes:
            used[pron] += 1
            max_k = max(max_k, used[pron])
            out.append((word, [*pron, f"#{used[pron]}"]))
        else:
            out.append((word, list(pron)))
    return out, max_k


def arpa_unigrams(path: str | Path) -> list[str]:
    """The words of an ARPA file's unigram section (streamed; the file may be large)."""
    p = Path(path)
    if not p.is_file():
        raise GraphError(f"ARPA file '{p}' does not exist")
    words: list[str] = []
    in_uni = False
    with open(p, encoding="utf-8", errors="strict") as f:
        for line in f:
            s = line.strip()
            if s == "\\1-grams:":
                in_uni = True
                continue
            if in_uni:
                if s.startswith("\\"):
                    break
                if s:
                    parts = s.split()
                    if len(parts) < 2:
                        raise GraphError(f"{p}: bad unigram line {s!r}")
                    words.append(parts[1])
    if not in_uni:
        raise GraphError(f"{p}: no \\1-grams: section (not an ARPA file?)")
    return words


# ---------------------------------------------------------------------------------------------------
# FST pieces
# ---------------------------------------------------------------------------------------------------
def ctc_topo_with_disambig(num_tokens: int, disambig_ids: Sequence[int] = ()) -> Any:
    """H: :func:`distill.graph.topo.ctc_topo_fst` plus an ``#k:#k`` self-loop on every state for each
    disambiguation label in ``disambig_ids`` (FST labels), so they pass through H o LG."""
    h = ctc_topo_fst(num_tokens)
    for s in range(h.num_states):
        for d in disambig_ids:
            h.add_arc(state=s, arc=kaldifst.StdArc(d, d, 0.0, s))
    kaldifst.arcsort(h, sort_type="olabel")
    return h


def lexicon_fst(
    lexicon: Sequence[tuple[str, Sequence[str]]], token_ids: dict[str, int], word_ids: dict[str, int]
) -> Any:
    """L: a single loop state; each word is a chain of its (FST) token labels, the word on the first
    arc. ``token_ids``/``word_ids`` map symbols to FST labels (``#0`` must be in both: it gets the
    ``#0:#0`` self-loop that lets G's back-off arcs through)."""
    fst = kaldifst.StdVectorFst()
    loop = fst.add_state()
    fst.start = loop
    fst.set_final(state=loop, weight=0.0)
    for word, pron in lexicon:
        if word not in word_ids:
            raise GraphError(f"lexicon word {word!r} is not in the word table")
        src = loop
        for i, piece in enumerate(pron):
            if piece not in token_ids:
                raise GraphError(f"lexicon entry {word!r}: piece {piece!r} is not in the token table")
            dst = loop if i == len(pron) - 1 else fst.add_state()
            fst.add_arc(state=src, arc=kaldifst.StdArc(token_ids[piece], word_ids[word] if i == 0 else 0, 0.0, dst))
            src = dst
    fst.add_arc(state=loop, arc=kaldifst.StdArc(token_ids["#0"], word_ids["#0"], 0.0, loop))
    kaldifst.arcsort(fst, sort_type="olabel")
    return fst


def arpa_to_fst(arpa: str | Path, symbol_table: str | Path, max_order: int | None = None) -> Any:
    """G from an ARPA file (:func:`distill.graph.ngram.arpa_to_fst`, kaldilm in a child process)."""
    try:
        return ngram_arpa_to_fst(arpa, symbol_table, max_order)
    except ValueError as e:
        raise GraphError(str(e)) from None


def _remove_ilabels(fst: Any, lo: int, hi: int) -> int:
    """Replace input labels in [lo, hi] by epsilon; returns how many arcs changed."""
    n = 0
    for s in kaldifst.StateIterator(fst):
        for arc in kaldifst.ArcIterator(fst, s):
            if lo <= arc.ilabel <= hi:
                arc.ilabel = 0
                n += 1
    return n


def build_token_graph(tokens: Sequence[str], p_arpa: str | Path, max_order: int | None = None) -> Any:
    """H o P over ``tokens`` (index = token id, 0 = blank), P read from ``p_arpa`` by kaldilm (token k
    has label k + 1, the back-off label ``#0`` becomes epsilon)."""
    v = len(tokens)
    reserved = {"<eps>", "#0", "<s>", "</s>"} & set(tokens)
    if reserved:
        raise GraphError(f"token list uses reserved symbols {sorted(reserved)}")
    with tempfile.TemporaryDirectory() as td:
        syms = Path(td) / "tokens.txt"
        table = {"<eps>": 0, **{t: i + 1 for i, t in enumerate(tokens)}, "#0": v + 1, "<s>": v + 2, "</s>": v + 3}
        write_symbol_table(table, syms)
        p = arpa_to_fst(p_arpa, syms, max_order)
    _remove_ilabels(p, v + 1, v + 1)
    if graph_max_ilabel(p) > v:
        raise GraphError(f"token LM '{p_arpa}' has symbols outside the {v} tokens")
    kaldifst.arcsort(p, sort_type="ilabel")
    hp = kaldifst.compose(ctc_topo_fst(v), p, connect=True)
    if hp.num_states == 0:
        raise GraphError(f"H o P is empty: the token LM '{p_arpa}' accepts no token sequence")
    kaldifst.arcsort(hp, sort_type="ilabel")
    return hp


def build_hlg(
    tokens: Sequence[str],
    words: dict[str, int],
    lexicon: Sequence[tuple[str, Sequence[str]]],
    g_arpa: str | Path,
    words_file: str | Path,
    max_order: int | None = None,
) -> Any:
    """HLG (see the module docstring). ``words`` is the word table written to ``words_file`` (needed
    by kaldilm); every lexicon word must be in it, and it must contain ``#0``."""
    for s in ("<eps>", "#0"):
        if s not in words:
            raise GraphError(f"the word table {words_file} has no {s!r}")
    if words["<eps>"] != 0:
        raise GraphError(f"the word table {words_file} must give <eps> the id 0")
    v = len(tokens)
    lex, max_k = add_disambig(lexicon)
    token_ids = {t: i + 1 for i, t in enumerate(tokens)}
    disambig = [f"#{k}" for k in range(max_k + 1)]
    for k, d in enumerate(disambig):
        if d in token_ids:
            raise GraphError(f"token {d!r} clashes with a disambiguation symbol")
        token_ids[d] = v + 1 + k
    lo, hi = v + 1, v + 1 + max_k
    L = lexicon_fst(lex, token_ids, words)
    G = arpa_to_fst(g_arpa, words_file, max_order)
    kaldifst.arcsort(G, sort_type="ilabel")
    LG = kaldifst.compose(L, G, connect=True)
    if LG.num_states == 0:
        raise GraphError(f"L o G is empty: no word of the lexicon is in the LM '{g_arpa}'")
    if kaldifst.determinize_star(LG):  # True means it stopped early
        raise GraphError("determinize_star(L o G) stopped early")
    kaldifst.minimize_encoded(LG)
    kaldifst.arcsort(LG, sort_type="ilabel")
    H = ctc_topo_with_disambig(v, list(range(lo, hi + 1)))
    HLG = kaldifst.compose(H, LG, connect=True)
    if kaldifst.determinize_star(HLG):
        raise GraphError("determinize_star(H o LG) stopped early")
    kaldifst.minimize_encoded(HLG)
    _remove_ilabels(HLG, lo, hi)
    kaldifst.connect(HLG)
    kaldifst.arcsort(HLG, sort_type="ilabel")
    return HLG


# ---------------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------------
def graph_max_ilabel(fst: Any) -> int:
    """Largest input label of ``fst`` (a full scan of the arcs)."""
    m = 0
    for s in kaldifst.StateIterator(fst):
        for arc in kaldifst.ArcIterator(fst, s):
            if arc.ilabel > m:
                m = arc.ilabel
    return m


def _num_arcs(fst: Any) -> int:
    return sum(fst.num_arcs(s) for s in range(fst.num_states))


def save_graph(fst: Any, path: str | Path, info: GraphInfo) -> GraphInfo:
    """Write ``fst`` (OpenFst binary) and its ``.json`` sidecar; fills in the size fields."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fst.write(str(p))
    info = dataclasses.replace(info, num_states=fst.num_states, num_arcs=_num_arcs(fst))
    Path(str(p) + ".json").write_text(info.to_json(), encoding="utf-8")
    return info


def load_graph(path: str | Path) -> tuple[Any, GraphInfo]:
    """Read a graph file and its sidecar. Without a sidecar the graph is scanned: kind ``token`` is
    assumed and the token count is its largest input label."""
    p = Path(path)
    if not p.is_file():
        raise GraphError(f"decoding graph '{p}' does not exist")
    try:
        fst = kaldifst.StdVectorFst.read(str(p))
    except Exception as e:  # pybind/OpenFst raise RuntimeError on a bad file
        raise GraphError(f"cannot read the decoding graph '{p}': {e}") from None
    if fst is None or fst.num_states == 0 or fst.start < 0:
        raise GraphError(f"decoding graph '{p}' is empty or unreadable")
    side = Path(str(p) + ".json")
    if side.is_file():
        try:
            info = GraphInfo(**json.loads(side.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, TypeError) as e:
            raise GraphError(f"{side}: invalid graph description: {e}") from None
    else:
        info = GraphInfo(kind="token", num_tokens=graph_max_ilabel(fst), num_states=fst.num_states)
        log.warning("%s has no %s sidecar: assuming a token graph over %d tokens", p, side.name, info.num_tokens)
    return fst, info


def resolve_words(graph_path: str | Path, info: GraphInfo) -> Path | None:
    """The word table of a word graph: the sidecar's path (relative to the graph) or ``words.txt``
    next to the graph."""
    if info.kind != "word":
        return None
    base = Path(graph_path).parent
    cands: Iterable[Path] = ([Path(info.words), base / info.words] if info.words else []) + [base / "words.txt"]
    for c in cands:
        if c.is_file():
            return c
    raise GraphError(f"word table for '{graph_path}' not found (looked for {', '.join(map(str, cands))})")
