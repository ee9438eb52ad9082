"""Stage 6's decoders: scores to text with each configured method (greedy CTC, kaldi-decoder one-best over
HLG / HP), for batches and for long utterances decoded from score pieces."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from distill.data.tokenizer import check_same_tokens
from distill.decode.config import GRAPH_FILES
from distill.decode.greedy import ctc_greedy
from distill.decode.long_audio import decode_pieces
from distill.decode.wfst import WfstDecoder

__all__ = ["Decoders"]


class Decoders:
    """Turns scores into text with each method: greedy CTC, and kaldi-decoder over HLG / HP."""

    def __init__(
        self, methods: Sequence[str], graph_dir: Path, tokenizer: Any, opts: Any, nj: int, lang_dir: Path | None = None
    ) -> None:
        self.methods = list(methods)
        self.tok = tokenizer
        self.lang_dir = lang_dir  # the tokenizer's lang dir: its token inventory is compared with each model's
        self.nj = nj
        self.wfst: dict[str, Any] = {}
        for m in self.methods:
            if m == "greedy":
                continue
            g = graph_dir / GRAPH_FILES[m]
            if not g.is_file():
                raise FileNotFoundError(
                    f"decoding method '{m}' needs {g}: build it with python -m distill.bin.build_decode_graph "
                    f"--config conf/decode_graph.yaml lang_dir=<lang_dir> out_dir={graph_dir}"
                )
            dec = WfstDecoder(g, opts)
            dec.check_vocab(tokenizer.vocab_size, where=f"the tokens of the lang dir ({tokenizer.vocab_size})")
            self.wfst[m] = dec

    def check(self, vocab: int, path: str | Path) -> None:
        """Refuse a model whose outputs are not the lang dir's tokens (the inventories when both carry one,
        else the sizes); :class:`~distill.data.tokenizer.TokenMismatchError` names both."""
        check_same_tokens(path, "model", self.lang_dir, "lang dir", a_size=vocab, b_size=self.tok.vocab_size)

    def decode(self, scores: Any, lengths: Any) -> tuple[dict[str, list[str]], list[list[int]]]:
        """Texts per method for a batch, and the greedy token ids."""
        greedy = ctc_greedy(scores, lengths)
        out: dict[str, list[str]] = {}
        for m in self.methods:
            if m == "greedy":
                out[m] = [self.text(m, ids) for ids in greedy]
                continue
            res = self.wfst[m].decode_batch(scores, lengths, nj=self.nj)
            out[m] = [self.text(m, r.symbols) for r in res]
        return out, greedy

    def decode_pieces(self, pieces: Iterator[Any]) -> tuple[dict[str, str], list[int]]:
        """One long utterance's text per method from its score pieces [n, V], each method decoding the
        stitched scores incrementally as one utterance; and the greedy token ids."""
        decs: dict[str, Any] = {m: self.wfst.get(m, "greedy") for m in self.methods}
        decs[""] = "greedy"
        syms = decode_pieces(pieces, decs)
        return {m: self.text(m, syms[m]) for m in self.methods}, syms[""]

    def text(self, method: str, symbols: Sequence[int]) -> str:
        """Text of a method's output symbols: words of a word graph, else tokens."""
        dec = self.wfst.get(method)
        if dec is not None and dec.info.kind == "word":
            return " ".join(dec.symbols_to_words(symbols))
        return self.tok.decode(symbols)

    def close(self) -> None:
        for d in self.wfst.values():
            d.__exit__(None, None, None)
