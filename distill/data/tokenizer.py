"""Output units: sentencepiece BPE/unigram pieces or characters, with icefall's id convention.

Ids 0, 1, 2 are ``<blk>`` (the CTC blank), ``<sos/eos>`` and ``<unk>`` for both kinds (icefall trains
sentencepiece with ``user_defined_symbols=["<blk>", "<sos/eos>"]`` and ``unk_id=2``). The character
tokenizer uses sentencepiece's word-boundary symbol ``▁`` (U+2581) before every word, so that both
kinds spell ``HELLO WORLD`` as ``▁HELLO ▁WORLD``-like piece sequences and a lexicon maps each word to
its pieces. Characters a tokenizer does not cover map to ``<unk>``.

Files in a lang dir: ``tokens.txt`` (``<piece> <id>``, exactly ``vocab_size`` lines, no
disambiguation symbols), ``bpe.model`` (BPE only), ``words.txt`` and ``lexicon.txt``.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Iterable, Literal, Sequence

log = logging.getLogger(__name__)

BLANK = "<blk>"
SOS_EOS = "<sos/eos>"
UNK = "<unk>"
WORD_BOUNDARY = "\u2581"
SPECIALS = (BLANK, SOS_EOS, UNK)
UNK_WORD = "<UNK>"


class TokenizerError(ValueError):
    """A lang dir is missing or inconsistent, or tokenizer training failed; the message says what to do."""


class Tokenizer:
    """Text ↔ token ids. Build with :meth:`load`, :func:`train_bpe` or :func:`build_char_tokenizer`."""

    blank_id = 0
    sos_eos_id = 1
    unk_id = 2

    def __init__(self, kind: Literal["bpe", "char"], pieces: Sequence[str], sp=None) -> None:
        if tuple(pieces[:3]) != SPECIALS:
            raise TokenizerError(f"the first tokens must be {SPECIALS}, got {tuple(pieces[:3])}")
        self.kind = kind
        self.pieces = list(pieces)
        self._piece_to_id = {p: i for i, p in enumerate(self.pieces)}
        self._sp = sp
        self._chars = {c for p in self.pieces[3:] for c in p if c != WORD_BOUNDARY}

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    @classmethod
    def load(cls, lang_dir: str | Path) -> "Tokenizer":
        """The tokenizer stage 1 wrote to ``lang_dir`` (``bpe.model`` if present, else ``tokens.txt``)."""
        lang_dir = Path(lang_dir)
        model = lang_dir / "bpe.model"
        if model.is_file():
            import sentencepiece as spm

            sp = spm.SentencePieceProcessor()
            sp.load(str(model))
            pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
            return cls("bpe", pieces, sp)
        tokens = lang_dir / "tokens.txt"
        if not tokens.is_file():
            raise TokenizerError(f"neither {model} nor {tokens} exists: run stage 1 (distill.bin.prepare_lang)")
        pieces = []
        for n, line in enumerate(tokens.read_text(encoding="utf-8").splitlines(), 1):
            f = line.split()
            if len(f) != 2 or int(f[1]) != len(pieces):
                raise TokenizerError(f"{tokens}:{n}: expected '<token> {len(pieces)}', got {line!r}")
            pieces.append(f[0])
        return cls("char", pieces)

    def piece_to_id(self, piece: str) -> int:
        return self._piece_to_id.get(piece, self.unk_id)

    def id_to_piece(self, i: int) -> str:
        return self.pieces[i]

    def encode_pieces(self, text: str) -> list[str]:
        return [self.pieces[i] for i in self.encode(text)]

    def encode(self, text: str) -> list[int]:
        """Token ids of a (normalised) transcript; never contains the blank."""
        if self._sp is not None:
            return list(self._sp.encode(text, out_type=int))
        ids: list[int] = []
        for word in text.split():
            ids.append(self._piece_to_id[WORD_BOUNDARY])
            ids.extend(self._piece_to_id.get(c, self.unk_id) for c in word)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids; blanks and ``<sos/eos>`` are skipped, ``<unk>`` is spelled ``<unk>``."""
        s = "".join(self.pieces[i] for i in ids if i not in (self.blank_id, self.sos_eos_id))
        return " ".join(s.replace(WORD_BOUNDARY, " ").split())

    def uncovered_chars(self, text: str) -> set[str]:
        """Characters of ``text`` that will become ``<unk>``."""
        return {c for c in text if not c.isspace() and c not in self._chars}

    def word_pieces(self, word: str) -> list[str]:
        """A word's pronunciation in the lexicon."""
        return self.encode_pieces(word)


def train_bpe(
    text_file: Path,
    out_dir: Path,
    vocab_size: int,
    model_type: Literal["bpe", "unigram"] = "bpe",
    character_coverage: float = 1.0,
    num_threads: int = 1,
) -> Tokenizer:
    """Train sentencepiece on one transcript per line; writes ``out_dir/bpe.model`` (and ``bpe.vocab``)."""
    import sentencepiece as spm

    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / "bpe"
    try:
        spm.SentencePieceTrainer.train(
            input=str(text_file),
            model_prefix=str(prefix),
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            user_defined_symbols=[BLANK, SOS_EOS],
            unk_id=2,
            bos_id=-1,
            eos_id=-1,
            normalization_rule_name="identity",
            input_sentence_size=100_000_000,
            num_threads=max(1, num_threads),
            minloglevel=2,
        )
    except RuntimeError as e:
        raise TokenizerError(
            f"sentencepiece could not train a {vocab_size}-piece {model_type} model on {text_file}: {e}. "
            "Lower tokenizer.vocab_size in conf/lang.yaml (small corpora support only a few hundred pieces)."
        ) from None
    return Tokenizer.load(out_dir)


def build_char_tokenizer(texts: Iterable[str]) -> Tokenizer:
    """Characters of the training text, sorted by code point, after the specials and ``▁``."""
    chars = sorted({c for t in texts for c in t if not c.isspace()} - {WORD_BOUNDARY})
    return Tokenizer("char", [*SPECIALS, WORD_BOUNDARY, *chars])


def write_lang_files(lang_dir: Path, tok: Tokenizer, words: Counter[str] | Iterable[str]) -> None:
    """``tokens.txt``, ``words.txt`` (``<eps>`` 0, ``<UNK>``, words, ``#0 <s> </s>``) and ``lexicon.txt``."""
    lang_dir.mkdir(parents=True, exist_ok=True)
    (lang_dir / "tokens.txt").write_text(
        "".join(f"{p} {i}\n" for i, p in enumerate(tok.pieces)), encoding="utf-8"
    )
    vocab = sorted(set(words) - {UNK_WORD, "<eps>", "#0", "<s>", "</s>"})
    table = ["<eps>", UNK_WORD, *vocab, "#0", "<s>", "</s>"]
    (lang_dir / "words.txt").write_text("".join(f"{w} {i}\n" for i, w in enumerate(table)), encoding="utf-8")
    lines = [f"{UNK_WORD} {UNK}"] + [f"{w} {' '.join(tok.word_pieces(w))}" for w in vocab]
    (lang_dir / "lexicon.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
