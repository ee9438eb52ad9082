"""Text normalisation applied to references and hypotheses before scoring."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["GIGASPEECH_NON_SCORING", "gigaspeech_normalize", "get_normalizer", "NORMALIZERS"]

_FILLERS = ("UH", "UHH", "UM", "EH", "MM", "HM", "AH", "HUH", "HA", "ER", "OOF", "HEE", "ACH", "EEE", "EW")
_PUNCTUATION_TAGS = ("<COMMA>", "<PERIOD>", "<QUESTIONMARK>", "<EXCLAMATIONPOINT>")
_GARBAGE_TAGS = ("<SIL>", "<MUSIC>", "<NOISE>", "<OTHER>")

#: Words GigaSpeech's official scoring removes from both sides (compared after upper-casing).
GIGASPEECH_NON_SCORING: frozenset[str] = frozenset(_FILLERS + ("<UNK>",) + _PUNCTUATION_TAGS + _GARBAGE_TAGS)


def gigaspeech_normalize(text: str) -> str:
    """GigaSpeech scoring normalisation (as its ``asr_text_post_processing``), for ref and hyp alike.

    Upper-case; ``-`` becomes a space ("STATE-OF-THE-ART" -> "STATE OF THE ART"); conversational
    fillers, ``<UNK>``, punctuation tags and garbage tags are dropped; words are joined by one space.
    """
    words = text.upper().replace("-", " ").split()
    return " ".join(w for w in words if w not in GIGASPEECH_NON_SCORING)


NORMALIZERS: dict[str, Callable[[str], str]] = {"gigaspeech": gigaspeech_normalize}


def get_normalizer(name: str | None) -> Callable[[str], str] | None:
    """The normaliser called ``name`` (``None``/``"none"`` -> no normalisation); unknown names raise."""
    if name is None or name == "none":
        return None
    try:
        return NORMALIZERS[name]
    except KeyError:
        raise ValueError(f"unknown normalisation {name!r}; known: none, {', '.join(sorted(NORMALIZERS))}") from None
