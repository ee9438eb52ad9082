"""The decoding graphs of a lang dir: a word n-gram LM and HLG.fst, plus the token graph HP.fst.

Word LM: ``lm_arpa`` when given (e.g. LibriSpeech's ``3-gram.pruned.1e-7.arpa``), else an ``lm_order``
n-gram estimated from ``lang_dir/train_text.txt`` with :func:`distill.graph.ngram.estimate_ngram`
(written to ``out_dir/G.arpa``). With ``extend_lexicon`` (default) the LM's words that are not in the
lang dir's lexicon are added, spelled by the tokenizer, so the decoder can output them; words whose
spelling needs ``<unk>`` are left out (counted). Writes ``out_dir/{words.txt, lexicon.txt, HLG.fst,
HLG.fst.json}`` and, when ``lang_dir/P.arpa`` exists, ``out_dir/{HP.fst, HP.fst.json}``. The graphs
themselves are built by :mod:`distill.decode.graph`. CLI: ``python -m distill.bin.build_decode_graph``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from distill.config import path_field
from distill.data.tokenizer import Tokenizer
from distill.decode.graph import (
    GraphError,
    GraphInfo,
    arpa_unigrams,
    build_hlg,
    build_token_graph,
    read_lexicon,
    read_symbol_table,
    save_graph,
    write_symbol_table,
)
from distill.graph.ngram import estimate_ngram

__all__ = ["DecodeGraphConfig", "build_decode_graphs"]

log = logging.getLogger("build_decode_graph")

_SPECIAL_WORDS = {"<eps>", "#0", "<s>", "</s>"}


@dataclasses.dataclass
class DecodeGraphConfig:
    """Word LM + HLG.fst (and the token graph HP.fst) for WFST decoding."""

    lang_dir: str = path_field("data/lang")
    out_dir: str = path_field("data/lang_test", output_dir=True)
    lm_arpa: str | None = path_field(None)  # a given word ARPA LM; None: estimate one from lm_text
    lm_text: str | None = None  # default: <lang_dir>/train_text.txt
    lm_order: int = 3
    lm_smoothing: Literal["kneser_ney", "witten_bell"] = "kneser_ney"
    lm_min_count: int = 1
    max_order: int | None = None  # use only n-grams up to this order of the ARPA file
    extend_lexicon: bool = True
    token_graph: bool = True  # also build HP.fst from <lang_dir>/P.arpa when it exists
    log_file: str | None = None


def _word_table(words: Sequence[str]) -> dict[str, int]:
    """``<eps>`` 0, ``<UNK>`` 1 (when used), the words sorted, then ``#0 <s> </s>``."""
    body = sorted(set(words) - _SPECIAL_WORDS - {"<UNK>"})
    head = ["<eps>"] + (["<UNK>"] if "<UNK>" in words else [])
    return {w: i for i, w in enumerate(head + body + ["#0", "<s>", "</s>"])}


def build_decode_graphs(cfg: DecodeGraphConfig) -> dict:
    """Write the word LM (unless given), HLG.fst, HP.fst and their tables into ``cfg.out_dir``; returns the
    summary also written to ``graph_summary.json``. Raises GraphError, OSError or ValueError."""
    t0 = time.time()
    lang, out = Path(cfg.lang_dir), Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.load(lang)
    lexicon = read_lexicon(lang / "lexicon.txt")
    lang_words = read_symbol_table(lang / "words.txt")
    known = {w for w, _ in lexicon}
    missing = sorted(known - set(lang_words))
    if missing:
        raise GraphError(f"{lang / 'lexicon.txt'}: words not in words.txt, e.g. {missing[:5]}")

    added = unspellable = 0
    if cfg.lm_arpa:
        arpa = Path(cfg.lm_arpa)
        if cfg.extend_lexicon:
            lex_dict = dict(lexicon)
            for w in arpa_unigrams(arpa):
                if w in lex_dict or w in _SPECIAL_WORDS or w.lower() in ("<unk>",):
                    continue
                pieces = tok.word_pieces(w)
                if not pieces or "<unk>" in pieces:
                    unspellable += 1
                    continue
                lex_dict[w] = pieces
                added += 1
            lexicon = list(lex_dict.items())
        lm_desc = str(arpa)
    else:
        text = Path(cfg.lm_text) if cfg.lm_text else lang / "train_text.txt"
        if not text.is_file():
            raise GraphError(f"LM training text '{text}' does not exist (run stage 1, or set lm_arpa=...)")
        vocab = sorted(known - _SPECIAL_WORDS)
        vset = set(vocab)
        unk = "<UNK>" if "<UNK>" in vset else None
        oov = 0
        sents = []
        for line in text.read_text(encoding="utf-8").splitlines():
            ws = line.split()
            if not ws:
                continue
            mapped = []
            for w in ws:
                if w not in vset:
                    oov += 1
                    if unk is None:
                        continue
                    w = unk
                mapped.append(w)
            sents.append(mapped)
        if not sents:
            raise GraphError(f"LM training text '{text}' has no sentences")
        if oov:
            log.warning("%d words of %s are not in the lexicon (mapped to <UNK> or dropped)", oov, text)
        lm = estimate_ngram(
            sents, order=cfg.lm_order, vocab=vocab, smoothing=cfg.lm_smoothing, min_count=cfg.lm_min_count
        )
        arpa = out / "G.arpa"
        lm.write_arpa(arpa)
        lm_desc = f"{cfg.lm_order}-gram {cfg.lm_smoothing} on {len(sents)} sentences of {text}"

    words = _word_table([w for w, _ in lexicon])
    write_symbol_table(words, out / "words.txt")
    (out / "lexicon.txt").write_text("".join(f"{w} {' '.join(p)}\n" for w, p in lexicon), encoding="utf-8")
    hlg = build_hlg(tok.pieces, words, lexicon, arpa, out / "words.txt", cfg.max_order)
    info = save_graph(
        hlg, out / "HLG.fst", GraphInfo(kind="word", num_tokens=tok.vocab_size, words="words.txt", lm=lm_desc)
    )
    summary = {
        "hlg": str(out / "HLG.fst"),
        "hlg_states": info.num_states,
        "hlg_arcs": info.num_arcs,
        "words": len(lexicon),
        "words_added_from_lm": added,
        "lm_words_unspellable": unspellable,
        "lm": lm_desc,
        "num_tokens": tok.vocab_size,
    }
    p_arpa = lang / "P.arpa"
    if cfg.token_graph and p_arpa.is_file():
        hp = build_token_graph(tok.pieces, p_arpa)
        hinfo = save_graph(hp, out / "HP.fst", GraphInfo(kind="token", num_tokens=tok.vocab_size, lm=str(p_arpa)))
        summary.update(hp=str(out / "HP.fst"), hp_states=hinfo.num_states, hp_arcs=hinfo.num_arcs)
    elif cfg.token_graph:
        log.info("no %s: token graph HP.fst not built", p_arpa)
    summary["seconds"] = round(time.time() - t0, 1)
    (out / "graph_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
