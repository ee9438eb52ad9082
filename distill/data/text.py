"""Transcript normalisation before tokenisation (stage 1), configurable per corpus.

Order: Unicode NFKC and typographic apostrophes → ``'``; configured tags removed (GigaSpeech
punctuation tags); garbage tags (``<SIL>`` ...) removed, and an utterance made only of them reported as
garbage; case folding; punctuation stripping (Unicode categories P* and S*; hyphens and dashes become
spaces, apostrophes are kept inside and at the edge of words); whitespace collapsed. Other
``<...>`` tokens (e.g. ``<UNK>``) are kept verbatim.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from typing import Literal

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
_DASHES = re.compile(r"[-\u2010-\u2015\u2212_/]")
_TAG = re.compile(r"^<[^<>\s]+>$")
_MEMO_WORDS = 1 << 18  # normalised words remembered (bounded memory; cleared when full)


@dataclasses.dataclass
class TextNormConfig:
    """How transcripts are normalised (stage 1); saved with the lang dir for scoring."""

    case: Literal["upper", "lower", "keep"] = "upper"
    strip_punctuation: bool = True
    # whole-word tags removed from the text (GigaSpeech: <COMMA> <PERIOD> <QUESTIONMARK> <EXCLAMATIONPOINT>)
    remove_tags: list[str] = dataclasses.field(default_factory=list)
    # tags marking non-speech (GigaSpeech: <SIL> <MUSIC> <NOISE> <OTHER>): an utterance of only these is dropped
    garbage_tags: list[str] = dataclasses.field(default_factory=list)


class TextNormalizer:
    """Callable ``text -> normalised text``; :meth:`is_garbage` tells garbage-only utterances apart."""

    def __init__(self, cfg: TextNormConfig | None = None) -> None:
        self.cfg = cfg or TextNormConfig()
        self._remove = set(self.cfg.remove_tags)
        self._garbage = set(self.cfg.garbage_tags)
        self._memo: dict[str, str] = {}  # word -> normalised word: transcripts repeat words (Zipf)

    def is_garbage(self, text: str) -> bool:
        words = [w for w in text.split() if w not in self._remove]
        return bool(words) and all(w in self._garbage for w in words)

    def _strip_word(self, word: str) -> str:
        if _TAG.match(word):
            return word
        word = _DASHES.sub(" ", word)
        chars = [c if c == "'" or c == " " or not unicodedata.category(c).startswith(("P", "S")) else " " for c in word]
        pieces = "".join(chars).split()
        # apostrophes with no letter next to them are punctuation too
        return " ".join(p for p in (q.strip("'") if set(q) == {"'"} else q for q in pieces) if p)

    def _word(self, w: str) -> str:
        """One word with case folding and punctuation stripping applied ("" if nothing is left)."""
        out = self._memo.get(w)
        if out is None:
            out = w
            if self.cfg.case == "upper" and not _TAG.match(out):
                out = out.upper()
            elif self.cfg.case == "lower" and not _TAG.match(out):
                out = out.lower()
            if self.cfg.strip_punctuation:
                out = self._strip_word(out)
            if len(self._memo) >= _MEMO_WORDS:
                self._memo.clear()
            self._memo[w] = out
        return out

    def __call__(self, text: str) -> str:
        text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES)
        out = [self._word(w) for w in text.split() if w not in self._remove and w not in self._garbage]
        return " ".join(" ".join(w for w in out if w).split())
