"""One-best WFST decoding of CTC scores with kaldi-decoder's ``FasterDecoder`` (CPU, one thread each).

:class:`WfstDecoder` decodes one utterance, a batch (``nj`` worker processes, each loading the graph
once), or a stream (:meth:`WfstDecoder.stream`: ``init_decoding`` then ``advance_decoding`` on each
new chunk, wrapped in a ``DecodableCtc`` whose ``offset`` is the number of frames already decoded).

Scores are multiplied by ``acoustic_scale`` before the search, as Kaldi's decodables do; the path cost
the decoder minimises is ``graph_cost - acoustic_scale * sum_t score[t, label_t]``.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import kaldi_decoder
import numpy as np

from .graph import GraphError, GraphInfo, graph_max_ilabel, load_graph, read_symbol_table, resolve_words

log = logging.getLogger(__name__)

__all__ = ["WfstOptions", "WfstResult", "WfstDecoder", "WfstStream"]


@dataclasses.dataclass
class WfstOptions:
    """Search options (kaldi-decoder ``FasterDecoderOptions`` plus the acoustic scale)."""

    beam: float = 16.0
    max_active: int = 7000
    min_active: int = 20
    beam_delta: float = 0.5
    acoustic_scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.beam > 0:
            raise ValueError(f"beam must be > 0, got {self.beam}")
        if self.max_active < 2 or self.min_active < 0 or self.min_active > self.max_active:
            raise ValueError(
                f"need 0 <= min_active <= max_active and max_active >= 2, got "
                f"min_active={self.min_active} max_active={self.max_active}"
            )
        if not self.acoustic_scale > 0:
            raise ValueError(f"acoustic_scale must be > 0, got {self.acoustic_scale}")

    def kaldi(self) -> Any:

        return kaldi_decoder.FasterDecoderOptions(
            beam=self.beam, max_active=self.max_active, min_active=self.min_active, beam_delta=self.beam_delta
        )


@dataclasses.dataclass
class WfstResult:
    """Best path of one utterance.

    ``symbols``: output ids (token ids for a token graph, word ids for a word graph);
    ``symbol_frames``: for each symbol, the frame of the best path at which the graph emits it;
    ``frame_labels``: the token id the best path reads at each frame; ``graph_cost`` and
    ``acoustic_cost`` (``-acoustic_scale * sum of scores``) as the decoder reports them;
    ``reached_final``: the path ends in a final state (else the best partial path is returned);
    ``ok``: False when the decoder found no path at all.
    """

    symbols: list[int]
    symbol_frames: list[int]
    frame_labels: list[int]
    graph_cost: float
    acoustic_cost: float
    reached_final: bool
    ok: bool = True

    @property
    def cost(self) -> float:
        return self.graph_cost + self.acoustic_cost


def _lattice_weight(text: str) -> tuple[float, float]:
    g, a = text.split(",")
    return float(g), float(a)


def _read_path(lattice: Any, olabel_offset: int) -> tuple[list[int], list[int], list[int], float, float]:
    """Walk the linear best-path lattice from its start state (via its text form: kaldifst has no
    public arc iterator for lattices)."""
    symbols: list[int] = []
    frames: list[int] = []
    labels: list[int] = []
    start = lattice.start
    if start < 0:
        return symbols, frames, labels, float("inf"), float("inf")
    arcs: dict[int, tuple[int, int, int, str]] = {}
    finals: dict[int, str] = {}
    for line in lattice.to_str().splitlines():
        f = line.split()
        if len(f) == 5:
            if int(f[0]) in arcs:
                raise RuntimeError("best-path lattice is not linear")
            arcs[int(f[0])] = (int(f[1]), int(f[2]), int(f[3]), f[4])
        elif f:
            finals[int(f[0])] = f[1] if len(f) > 1 else "0,0"
    g = a = 0.0
    s = start
    for _ in range(len(arcs) + 1):
        if s not in arcs:
            fg, fa = _lattice_weight(finals.get(s, "0,0"))
            g, a = g + fg, a + fa
            break
        nxt, ilabel, olabel, w = arcs[s]
        if olabel != 0:
            symbols.append(olabel - olabel_offset)
            frames.append(len(labels))
        if ilabel != 0:
            labels.append(ilabel - 1)
        wg, wa = _lattice_weight(w)
        g, a = g + wg, a + wa
        s = nxt
    # an output symbol on an input-epsilon arc after the last frame belongs to the last frame
    frames = [min(f, max(len(labels) - 1, 0)) for f in frames]
    return symbols, frames, labels, g, a


def _result(dec: Any, olabel_offset: int) -> WfstResult:
    final = bool(dec.reached_final())
    ok, lat = dec.get_best_path(use_final_probs=final)
    if not ok:
        return WfstResult([], [], [], float("inf"), float("inf"), False, ok=False)
    syms, frames, labels, g, a = _read_path(lat, olabel_offset)
    return WfstResult(syms, frames, labels, g, a, final)


def _as_matrix(scores: Any, scale: float) -> np.ndarray:
    m = scores.detach().cpu().numpy() if hasattr(scores, "detach") else np.asarray(scores)
    if m.ndim != 2:
        raise ValueError(f"expected scores [T, V], got shape {m.shape}")
    m = np.ascontiguousarray(m, dtype=np.float32)
    if scale != 1.0:
        m = m * np.float32(scale)
    if np.isnan(m).any() or np.isposinf(m).any():
        raise ValueError("scores contain NaN or +inf")
    return m


class WfstDecoder:
    """FasterDecoder over a token graph (H o P) or a word graph (HLG); see the module docstring.

    ``graph``: a graph file written by :func:`distill.decode.graph.save_graph` (or any OpenFst
    StdVectorFst file with input label = token + 1), or an in-memory kaldifst FST with ``info``.
    """

    def __init__(
        self,
        graph: str | Path | Any,
        opts: WfstOptions | None = None,
        info: GraphInfo | None = None,
        words: str | Path | None = None,
    ) -> None:
        self.opts = opts or WfstOptions()
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        if isinstance(graph, (str, Path)):
            self.path: Path | None = Path(graph)
            self.fst, loaded = load_graph(graph)
            self.info = info or loaded
        else:
            self.path = None
            self.fst = graph
            self.info = info or GraphInfo(kind="token", num_tokens=graph_max_ilabel(graph))
        self.olabel_offset = 1 if self.info.kind == "token" else 0
        self.words: dict[int, str] | None = None
        if self.info.kind == "word":
            wpath = Path(words) if words is not None else (resolve_words(self.path, self.info) if self.path else None)
            if wpath is None:
                raise GraphError("a word graph needs its word table (words=...)")
            self.words = {i: w for w, i in read_symbol_table(wpath).items()}
        self._pool: ProcessPoolExecutor | None = None
        self._pool_nj = 0

    # ------------------------------------------------------------------ checks and text
    def check_vocab(self, num_tokens: int, where: str = "scores") -> None:
        """Raise ValueError when the scores' width does not match the graph's token count."""
        if num_tokens != self.info.num_tokens:
            src = str(self.path) if self.path else "the decoding graph"
            raise ValueError(
                f"{where} have V={num_tokens} columns but {src} was built for "
                f"{self.info.num_tokens} tokens: use the graph of this model's lang dir"
            )

    def symbols_to_words(self, symbols: Sequence[int]) -> list[str]:
        """Word strings of a word graph's output (raises for a token graph)."""
        if self.words is None:
            raise ValueError("symbols_to_words needs a word graph")
        return [self.words.get(i, f"<id{i}>") for i in symbols]

    # ------------------------------------------------------------------ decoding
    def decode(self, scores: Any) -> WfstResult:
        """Best path for one utterance's scores [T, V] (log-posteriors; numpy or torch)."""

        m = _as_matrix(scores, self.opts.acoustic_scale)
        self.check_vocab(m.shape[1])
        if m.shape[0] == 0:
            return WfstResult([], [], [], 0.0, 0.0, False)
        dec = kaldi_decoder.FasterDecoder(self.fst, self.opts.kaldi())
        dec.decode(kaldi_decoder.DecodableCtc(m))
        return _result(dec, self.olabel_offset)

    def decode_batch(self, scores: Any, lengths: Sequence[int] | None = None, nj: int = 1) -> list[WfstResult]:
        """Decode ``scores`` [B, T, V] (the first ``lengths[b]`` frames of each) with ``nj`` processes."""
        arr = scores.detach().cpu().numpy() if hasattr(scores, "detach") else np.asarray(scores)
        if arr.ndim != 3:
            raise ValueError(f"expected scores [B, T, V], got shape {arr.shape}")
        b, t, v = arr.shape
        self.check_vocab(v)
        lens = (
            [t] * b
            if lengths is None
            else [int(x) for x in (lengths.tolist() if hasattr(lengths, "tolist") else lengths)]
        )
        if len(lens) != b or any(not 0 <= n <= t for n in lens):
            raise ValueError(f"lengths must be {b} values in [0, {t}], got {lens}")
        mats = [np.ascontiguousarray(arr[i, : lens[i]], dtype=np.float32) for i in range(b)]
        return self.decode_many(mats, nj)

    def decode_many(self, mats: Sequence[Any], nj: int = 1) -> list[WfstResult]:
        """Decode a list of [T_i, V] score matrices, in order, with ``nj`` worker processes."""
        if nj <= 1 or len(mats) <= 1:
            return [self.decode(m) for m in mats]
        for m in mats:
            self.check_vocab(np.shape(m)[1])
        pool = self._get_pool(nj)
        arrays = [
            np.ascontiguousarray(m.detach().cpu().numpy() if hasattr(m, "detach") else m, dtype=np.float32)
            for m in mats
        ]
        chunksize = max(1, len(arrays) // (4 * nj))
        return list(pool.map(_worker_decode, arrays, chunksize=chunksize))

    def _graph_file(self) -> str:
        if self.path is not None:
            return str(self.path)
        if self._tmpdir is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="distill-graph-")
            path = os.path.join(self._tmpdir.name, "graph.fst")
            self.fst.write(path)
            Path(path + ".json").write_text(self.info.to_json(), encoding="utf-8")  # no label scan in workers
        return os.path.join(self._tmpdir.name, "graph.fst")

    def _get_pool(self, nj: int) -> ProcessPoolExecutor:
        if self._pool is not None and self._pool_nj == nj:
            return self._pool
        self.close()
        ctx = multiprocessing.get_context("spawn")  # the parent may run torch threads: no fork
        self._pool = ProcessPoolExecutor(
            nj,
            mp_context=ctx,
            initializer=_worker_init,
            initargs=(self._graph_file(), dataclasses.asdict(self.opts), self.olabel_offset),
        )
        self._pool_nj = nj
        return self._pool

    def close(self) -> None:
        """Shut the worker processes down (the decoder stays usable)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> WfstDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def stream(self) -> WfstStream:
        """An incremental decoder for one stream over this graph."""
        return WfstStream(self)


class WfstStream:
    """Incremental decoding: :meth:`accept` chunks of scores [n, V] in order, read :meth:`partial`
    at any time, and :meth:`finalize` at the end (final-state weights applied when reachable)."""

    def __init__(self, decoder: WfstDecoder) -> None:

        self._parent = decoder
        self._dec = kaldi_decoder.FasterDecoder(decoder.fst, decoder.opts.kaldi())
        self._dec.init_decoding()
        self.frames = 0

    def accept(self, scores: Any) -> None:

        m = _as_matrix(scores, self._parent.opts.acoustic_scale)
        if m.shape[0] == 0:
            return
        self._parent.check_vocab(m.shape[1])
        # DecodableCtc(m, offset) serves frames offset..offset+n-1 from m's rows
        self._dec.advance_decoding(kaldi_decoder.DecodableCtc(m, offset=self.frames))
        self.frames += m.shape[0]

    def partial(self) -> WfstResult:
        """Best path so far, without final weights."""
        if self.frames == 0:
            return WfstResult([], [], [], 0.0, 0.0, False)
        ok, lat = self._dec.get_best_path(use_final_probs=False)
        if not ok:
            return WfstResult([], [], [], float("inf"), float("inf"), False, ok=False)
        syms, frames, labels, g, a = _read_path(lat, self._parent.olabel_offset)
        return WfstResult(syms, frames, labels, g, a, False)

    def finalize(self) -> WfstResult:
        if self.frames == 0:
            return WfstResult([], [], [], 0.0, 0.0, False)
        return _result(self._dec, self._parent.olabel_offset)


# ---------------------------------------------------------------------------------------------------
# worker processes
# ---------------------------------------------------------------------------------------------------
_W: dict[str, Any] = {}


def _worker_init(graph_path: str, opts: dict, olabel_offset: int) -> None:
    fst, _ = load_graph(graph_path)
    _W["fst"] = fst
    _W["opts"] = WfstOptions(**opts)
    _W["offset"] = olabel_offset


def _worker_decode(m: np.ndarray) -> WfstResult:

    opts: WfstOptions = _W["opts"]
    mat = _as_matrix(m, opts.acoustic_scale)
    if mat.shape[0] == 0:
        return WfstResult([], [], [], 0.0, 0.0, False)
    dec = kaldi_decoder.FasterDecoder(_W["fst"], opts.kaldi())
    dec.decode(kaldi_decoder.DecodableCtc(mat))
    return _result(dec, _W["offset"])
