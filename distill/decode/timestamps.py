"""Word timestamps from CTC frames, and incremental decoding that keeps them.

A CTC best path reads one token per output frame (blank 0 between tokens); a token spans the run of
frames that read it. Words are cut where a token's piece holds the word-boundary symbol ``▁`` (both
BPE and character tokenizers put it before every word, :mod:`distill.data.tokenizer`), so the words of
a token sequence join to exactly the text :meth:`~distill.data.tokenizer.Tokenizer.decode` gives. A
word starts at its first token's first frame and ends after its last token's last frame; frame ``f``
starts at ``f * frame_shift`` samples (20 ms for the standard CNN, ``W2V2Config.frame_shift``), so the
times lie within the audio.

:class:`Decoded` is what every decoder gives (greedy, WFST one-best, whole or piece by piece);
:class:`PieceDecoder` decodes score pieces ``[n, V]`` as one utterance with a partial result at any
time (greedy: :class:`~distill.decode.greedy.GreedyStream`; WFST: :class:`~distill.decode.wfst.WfstStream`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from distill.data.tokenizer import SOS_EOS, UNK, WORD_BOUNDARY

from .greedy import BLANK, GreedyStream

__all__ = ["Word", "Decoded", "PieceDecoder", "token_spans", "word_spans", "word_times"]


@dataclasses.dataclass(frozen=True)
class Word:
    """One recognised word and where it was spoken (seconds from the start of the audio)."""

    word: str
    start_s: float
    end_s: float


@dataclasses.dataclass
class Decoded:
    """One utterance's best path: the decoder's output ``symbols`` (token ids, or word ids of a word
    graph), the token read at each frame (``frame_labels``, blank 0) and the frame at which each symbol
    was output (``symbol_frames``)."""

    symbols: list[int]
    frame_labels: list[int]
    symbol_frames: list[int]

    @classmethod
    def of_wfst(cls, r: Any) -> Decoded:
        return cls(list(r.symbols), list(r.frame_labels), list(r.symbol_frames))


def token_spans(frame_labels: Sequence[int], blank: int = BLANK) -> list[tuple[int, int, int]]:
    """``(token, first_frame, last_frame)`` of each token of a CTC path (repeats merged, blanks dropped)."""
    spans: list[tuple[int, int, int]] = []
    prev: int | None = None
    for f, lab in enumerate(frame_labels):
        if lab == prev and lab != blank and spans:
            spans[-1] = (spans[-1][0], spans[-1][1], f)
        elif lab != blank:
            spans.append((int(lab), f, f))
        prev = lab
    return spans


def word_spans(
    spans: Sequence[tuple[int, int, int]], pieces: Sequence[str], split_unk: bool = False
) -> list[tuple[str, int, int]]:
    """``(word, first_frame, last_frame)``: the tokens' pieces cut at ``▁`` (``<sos/eos>`` skipped), as
    :meth:`Tokenizer.decode` cuts them. ``split_unk`` also makes ``<unk>`` a word of its own (a word
    graph's lexicon spells ``<UNK>`` as ``<unk>`` with no ``▁``)."""
    words: list[tuple[str, int, int]] = []
    cur: list[str] = []
    f0 = f1 = 0

    def close() -> None:
        if cur:
            words.append(("".join(cur), f0, f1))
            cur.clear()

    for tok, a, b in spans:
        piece = pieces[tok] if 0 <= tok < len(pieces) else UNK
        if piece == SOS_EOS:
            continue
        if split_unk and piece == UNK:
            close()
            words.append((piece, a, b))
            continue
        for ch in piece:
            if ch == WORD_BOUNDARY or ch.isspace():
                close()
                continue
            if not cur:
                f0 = a
            cur.append(ch)
            f1 = b
    close()
    return words


def word_times(
    d: Decoded, pieces: Sequence[str], frame_shift_s: float, word_table: Sequence[str] | None = None
) -> list[Word]:
    """The words of ``d`` with their times. ``word_table``: the word strings of a word graph's output
    symbols (then the tokens are only used for timing; when they cannot be matched to the words one
    to one, a word runs from the frame the graph output it to the next word's)."""
    spans = token_spans(d.frame_labels)
    if [t for t, _, _ in spans] != list(d.symbols) and word_table is None:
        # a token graph whose output symbols differ from its input path: time the symbols themselves
        spans = [(s, f, f) for s, f in zip(d.symbols, d.symbol_frames)]
    groups = word_spans(spans, pieces, split_unk=word_table is not None)
    if word_table is not None:
        if len(groups) == len(word_table):
            groups = [(w, a, b) for w, (_, a, b) in zip(word_table, groups)]
        else:
            last = max((f for f, lab in enumerate(d.frame_labels) if lab != BLANK), default=0)
            starts = list(d.symbol_frames)
            ends = [max(s, e - 1) for s, e in zip(starts, starts[1:])] + [max(starts[-1], last)] if starts else []
            groups = list(zip(word_table, starts, ends))
    return [Word(w, round(a * frame_shift_s, 3), round((b + 1) * frame_shift_s, 3)) for w, a, b in groups]


class PieceDecoder:
    """Decodes score pieces ``[n, V]`` of one utterance in order: ``decoder`` ``"greedy"`` or a
    :class:`~distill.decode.wfst.WfstDecoder`. :meth:`partial` gives the output symbols so far,
    :meth:`finish` the final :class:`Decoded`."""

    def __init__(self, decoder: Any = "greedy") -> None:
        self.greedy = isinstance(decoder, str)
        self._gs = GreedyStream() if self.greedy else None
        self._ws = None if self.greedy else decoder.stream()
        self._labels: list[int] = []
        self.frames = 0

    def accept(self, scores: Any) -> None:
        if scores is None or not len(scores):
            return
        self.frames += int(scores.shape[0])
        if self._gs is not None:
            self._gs.accept(scores)
            self._labels += scores.detach().argmax(dim=-1).cpu().tolist()
        else:
            self._ws.accept(scores)  # type: ignore[union-attr]

    def partial(self) -> list[int]:
        if self._gs is not None:
            return list(self._gs.tokens)
        return list(self._ws.partial().symbols)  # type: ignore[union-attr]

    def finish(self) -> Decoded:
        if self._gs is not None:
            return Decoded(list(self._gs.tokens), self._labels, list(self._gs.token_frames))
        return Decoded.of_wfst(self._ws.finalize())  # type: ignore[union-attr]
