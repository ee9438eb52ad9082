"""Output units: sentencepiece BPE/unigram pieces or characters, with icefall's id convention.

Ids 0, 1, 2 are ``<blk>`` (the CTC blank), ``<sos/eos>`` and ``<unk>`` for both kinds (icefall trains
sentencepiece with ``user_defined_symbols=["<blk>", "<sos/eos>"]`` and ``unk_id=2``). The character
tokenizer uses sentencepiece's word-boundary symbol ``▁`` (U+2581) before every word, so that both
kinds spell ``HELLO WORLD`` as ``▁HELLO ▁WORLD``-like piece sequences and a lexicon maps each word to
its pieces. Characters a tokenizer does not cover map to ``<unk>``.

Files in a lang dir: ``tokens.txt`` (``<piece> <id>``, exactly ``vocab_size`` lines, no
disambiguation symbols), ``bpe.model`` (BPE only), ``words.txt`` and ``lexicon.txt``.

A model directory carries the same token files (:data:`TOKEN_FILES`, copied by
:func:`copy_token_files`); :func:`check_same_tokens` compares the token inventories wherever a model
meets a lang dir, so that a lang of the same size but other tokens is refused.
"""

from __future__ import annotations

import logging
import random
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import sentencepiece as spm

log = logging.getLogger(__name__)

BLANK = "<blk>"
SOS_EOS = "<sos/eos>"
UNK = "<unk>"
WORD_BOUNDARY = "\u2581"
SPECIALS = (BLANK, SOS_EOS, UNK)
UNK_WORD = "<UNK>"


class TokenizerError(ValueError):
    """A lang dir is missing or inconsistent, or tokenizer training failed; the message says what to do."""


class TokenMismatchError(TokenizerError):
    """Two sides that must share output units (a model and a lang dir) carry different tokens."""


# The files that define a lang dir's output units; a model directory carries them too.
TOKEN_FILES = ("bpe.model", "tokens.txt")


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
    def load(cls, lang_dir: str | Path) -> Tokenizer:
        """The tokenizer stage 1 wrote to ``lang_dir`` (``bpe.model`` if present, else ``tokens.txt``)."""
        lang_dir = Path(lang_dir)
        model = lang_dir / "bpe.model"
        if model.is_file():
            sp = spm.SentencePieceProcessor()
            try:
                sp.load(str(model))
            except (RuntimeError, OSError) as e:  # sentencepiece's message names neither the cause nor always the file
                raise TokenizerError(
                    f"{model}: not a valid sentencepiece model (corrupt or truncated?): {e}; "
                    "rebuild the lang dir with stage 1 (distill.bin.prepare_lang)"
                ) from None
            pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
            return cls("bpe", pieces, sp)
        tokens = lang_dir / "tokens.txt"
        if not tokens.is_file():
            raise TokenizerError(f"neither {model} nor {tokens} exists: run stage 1 (distill.bin.prepare_lang)")
        return cls("char", _read_tokens_txt(tokens))

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
        return {c for c in set(text).difference(self._chars) if not c.isspace()}

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
    max_sentences: int = 0,
    seed: int = 0,
) -> Tokenizer:
    """Train sentencepiece on one transcript per line; writes ``out_dir/bpe.model`` (and ``bpe.vocab``).

    ``max_sentences`` > 0 trains on a random sample of that many lines when the file has more (a
    reservoir sample drawn here with ``random.Random(seed)``), which bounds the trainer's memory and time
    on a large corpus; 0 reads every line. The sample is drawn here rather than by sentencepiece
    (``input_sentence_size``) because sentencepiece's generator is created once per thread: after a first
    training in a process, its seed no longer applies and the sample depends on what ran before.
    """
    if 0 < max_sentences <= 100:
        raise TokenizerError(
            f"max_sentences must be 0 (every line) or more than 100 (sentencepiece), got {max_sentences}"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / "bpe"
    sample = _sample_lines(text_file, out_dir / "bpe_train_sample.txt", max_sentences, seed)
    try:
        spm.SentencePieceTrainer.train(
            input=str(sample or text_file),
            model_prefix=str(prefix),
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            user_defined_symbols=[BLANK, SOS_EOS],
            unk_id=2,
            bos_id=-1,
            eos_id=-1,
            normalization_rule_name="identity",
            num_threads=max(1, num_threads),
            minloglevel=2,
        )
    except RuntimeError as e:
        raise TokenizerError(
            f"sentencepiece could not train a {vocab_size}-piece {model_type} model on {text_file}: {e}. "
            "Lower tokenizer.vocab_size in conf/lang.yaml (small corpora support only a few hundred pieces)."
        ) from None
    finally:
        if sample is not None:
            sample.unlink(missing_ok=True)
    return Tokenizer.load(out_dir)


def _sample_lines(text_file: Path, out: Path, max_lines: int, seed: int) -> Path | None:
    """Write a seeded uniform sample of ``max_lines`` lines of ``text_file`` (in file order) to ``out``;
    None (use the whole file) when ``max_lines`` is 0 or the file has no more lines than that."""
    if max_lines <= 0:
        return None
    rng = random.Random(seed)
    kept: list[tuple[int, str]] = []
    n = 0
    with open(text_file, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):  # reservoir sampling (Algorithm R): memory of max_lines lines
            if len(kept) < max_lines:
                kept.append((n, line))
            elif (j := rng.randrange(n)) < max_lines:
                kept[j] = (n, line)
    if n <= max_lines:
        return None
    out.write_text("".join(line for _, line in sorted(kept)), encoding="utf-8")
    return out


def build_char_tokenizer(texts: Iterable[str]) -> Tokenizer:
    """Characters of the training text, sorted by code point, after the specials and ``▁``."""
    chars = sorted({c for t in texts for c in t if not c.isspace()} - {WORD_BOUNDARY})
    return Tokenizer("char", [*SPECIALS, WORD_BOUNDARY, *chars])


def write_lang_files(lang_dir: Path, tok: Tokenizer, words: Counter[str] | Iterable[str]) -> None:
    """``tokens.txt``, ``words.txt`` (``<eps>`` 0, ``<UNK>``, words, ``#0 <s> </s>``) and ``lexicon.txt``."""
    lang_dir.mkdir(parents=True, exist_ok=True)
    (lang_dir / "tokens.txt").write_text("".join(f"{p} {i}\n" for i, p in enumerate(tok.pieces)), encoding="utf-8")
    vocab = sorted(set(words) - {UNK_WORD, "<eps>", "#0", "<s>", "</s>"})
    table = ["<eps>", UNK_WORD, *vocab, "#0", "<s>", "</s>"]
    (lang_dir / "words.txt").write_text("".join(f"{w} {i}\n" for i, w in enumerate(table)), encoding="utf-8")
    lines = [f"{UNK_WORD} {UNK}"] + [f"{w} {' '.join(tok.word_pieces(w))}" for w in vocab]
    (lang_dir / "lexicon.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _read_tokens_txt(path: Path) -> list[str]:
    """The symbols of a ``tokens.txt`` in id order (lines ``<token> <id>``, ids 0, 1, 2, ...)."""
    pieces: list[str] = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    for n, line in enumerate(text.splitlines(), 1):
        f = line.split()
        if len(f) != 2 or f[1] != str(len(pieces)):
            raise TokenizerError(f"{path}:{n}: expected '<token> {len(pieces)}', got {line!r}")
        pieces.append(f[0])
    return pieces


def read_token_inventory(directory: str | Path | None) -> list[str] | None:
    """The output units a lang dir or model dir carries: its ``tokens.txt`` symbols in id order (else its
    ``bpe.model`` pieces). None when it carries no tokens (a plain HF checkpoint, an older model dir, a
    fairseq ``.pt`` file, or no directory at all)."""
    if directory is None or not Path(directory).is_dir():
        return None
    d = Path(directory)
    if (d / "tokens.txt").is_file():
        return _read_tokens_txt(d / "tokens.txt")
    if (d / "bpe.model").is_file():
        return Tokenizer.load(d).pieces
    return None


def copy_token_files(lang_dir: str | Path, model_dir: str | Path) -> list[str]:
    """Copy the lang dir's token files (:data:`TOKEN_FILES` it has) into ``model_dir`` so that the model
    directory is self-contained; a token file the lang dir lacks is removed from ``model_dir`` (no stale
    ``bpe.model`` of an earlier run). Returns the names copied."""
    src, dst = Path(lang_dir), Path(model_dir)
    names = [f for f in TOKEN_FILES if (src / f).is_file()]
    if not names:
        raise TokenizerError(f"lang dir '{src}' has neither {' nor '.join(TOKEN_FILES)}")
    for f in TOKEN_FILES:
        if f in names:
            shutil.copy2(src / f, dst / f)
        elif (dst / f).is_file():
            (dst / f).unlink()
    return names


def check_same_tokens(
    a_dir: str | Path | None,
    a_label: str,
    b_dir: str | Path | None,
    b_label: str,
    *,
    a_size: int | None = None,
    b_size: int | None = None,
) -> None:
    """Refuse to pair ``a`` and ``b`` (e.g. a model and a lang dir) unless they have the same output units.

    When both directories carry tokens (:func:`read_token_inventory`) the inventories must be equal; when
    one carries none (an imported checkpoint, an older model dir) only the sizes are compared.
    ``a_size``/``b_size`` are the sides' output sizes where known (a model's ``vocab_size``); each must
    match its own side's inventory. Raises :class:`TokenMismatchError` naming both sides (label and path),
    both sizes and the first id whose symbols differ."""
    sides = []
    for d, label, size in ((a_dir, a_label, a_size), (b_dir, b_label, b_size)):
        inv = read_token_inventory(d)
        if inv is not None and size is not None and len(inv) != size:
            raise TokenMismatchError(f"{label} '{d}' has {size} outputs but its token files list {len(inv)} tokens")
        sides.append((inv, len(inv) if inv is not None else size))
    (ta, na), (tb, nb) = sides
    if ta is not None and tb is not None:
        if ta == tb:
            return
        i = next((k for k, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))

        def sym(t: list[str]) -> str:
            return repr(t[i]) if i < len(t) else "absent"

        raise TokenMismatchError(
            f"{a_label} '{a_dir}' ({na} tokens) and {b_label} '{b_dir}' ({nb} tokens) have different tokens: "
            f"id {i} is {sym(ta)} in the {a_label} but {sym(tb)} in the {b_label}"
        )
    if na is not None and nb is not None and na != nb:
        unit_a = "tokens" if ta is not None else "outputs"
        unit_b = "tokens" if tb is not None else "outputs"
        raise TokenMismatchError(f"{a_label} '{a_dir}' has {na} {unit_a} but {b_label} '{b_dir}' has {nb} {unit_b}")
