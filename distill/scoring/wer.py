"""Corpus-level WER from ``{utt_id: text}`` references and hypotheses.

``mode="sclite"`` (default) gives exactly sclite's counts (see :mod:`distill.scoring.align`);
``mode="levenshtein"`` gives Kaldi ``compute-wer``'s minimum number of errors.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from typing import Literal

from .align import Alignment, count_edits, levenshtein_align, sclite_align
from .normalize import get_normalizer

__all__ = ["UttScore", "wer", "score_utterances", "summarize", "validate_refs", "format_wer", "Mode"]

log = logging.getLogger(__name__)

Mode = Literal["sclite", "levenshtein"]
Text = str | bytes


@dataclasses.dataclass
class UttScore:
    """One utterance's scored words (after normalisation), alignment and counts."""

    utt_id: str
    ref: list[str]
    hyp: list[str]
    alignment: Alignment
    corr: int
    sub: int
    ins: int
    dele: int
    hyp_missing: bool = False

    @property
    def errs(self) -> int:
        return self.sub + self.ins + self.dele


def _as_text(value: object, utt_id: str, side: str) -> str:
    """``value`` as a str, or a ValueError/TypeError naming the utterance when it is not valid UTF-8 text."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{side} of utterance '{utt_id}' is not valid UTF-8: {e}") from None
    if not isinstance(value, str):
        raise TypeError(f"{side} of utterance '{utt_id}' must be str or bytes, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates, e.g. text decoded with errors="surrogateescape"
        raise ValueError(f"{side} of utterance '{utt_id}' is not valid UTF-8 text: {e}") from None
    return value


def _name_some(ids: list[str], k: int = 5) -> str:
    shown = ", ".join(f"'{u}'" for u in ids[:k])
    return shown + (f" and {len(ids) - k} more" if len(ids) > k else "")


def validate_refs(refs: Mapping[str, Text], normalize: str | None = None) -> None:
    """Raise ValueError naming the utterances whose reference is not UTF-8 text or is empty.

    Emptiness is judged after ``normalize`` (a reference of only fillers is empty under
    ``"gigaspeech"``). The decode stage calls this so a bad test set fails before decoding.
    """
    norm = get_normalizer(normalize)
    empty: list[str] = []
    for uid, value in refs.items():
        text = _as_text(value, uid, "reference")
        if norm is not None:
            text = norm(text)
        if not text.split():
            empty.append(uid)
    if empty:
        how = f" after '{normalize}' normalisation" if norm is not None else ""
        raise ValueError(f"{len(empty)} empty reference(s){how}: utterance {_name_some(empty)}")


def score_utterances(
    refs: Mapping[str, Text],
    hyps: Mapping[str, Text],
    mode: Mode = "sclite",
    normalize: str | None = None,
    case_sensitive: bool | None = None,
) -> list[UttScore]:
    """Align every reference with its hypothesis; the result is sorted by utterance id.

    A reference without a hypothesis is scored against an empty hypothesis (all deletions) and flagged
    ``hyp_missing``. A hypothesis without a reference is an error. ``case_sensitive=None`` follows the
    mode's tool: sclite folds ASCII case, compute-wer does not.
    """
    if mode == "sclite":
        align = sclite_align
    elif mode == "levenshtein":
        align = levenshtein_align
    else:
        raise ValueError(f"unknown scoring mode {mode!r}; use 'sclite' or 'levenshtein'")
    if case_sensitive is None:
        case_sensitive = mode != "sclite"
    norm = get_normalizer(normalize)
    extra = sorted(set(hyps) - set(refs))
    if extra:
        raise ValueError(f"{len(extra)} hypothesis id(s) have no reference: {_name_some(extra)}")

    out: list[UttScore] = []
    for uid in sorted(refs):
        ref_text = _as_text(refs[uid], uid, "reference")
        missing = uid not in hyps
        hyp_text = "" if missing else _as_text(hyps[uid], uid, "hypothesis")
        if norm is not None:
            ref_text, hyp_text = norm(ref_text), norm(hyp_text)
        ref, hyp = ref_text.split(), hyp_text.split()
        ali = align(ref, hyp, case_sensitive=case_sensitive)
        corr, sub, ins, dele = count_edits(ali, case_sensitive=case_sensitive)
        out.append(UttScore(uid, ref, hyp, ali, corr, sub, ins, dele, hyp_missing=missing))
    return out


def _rate(num: int, den: int) -> float:
    if den == 0:
        return 0.0 if num == 0 else math.inf
    return 100.0 * num / den


def summarize(utts: list[UttScore]) -> dict:
    """Corpus totals of scored utterances (the keys of :func:`wer` except the settings)."""
    corr = sum(u.corr for u in utts)
    sub = sum(u.sub for u in utts)
    ins = sum(u.ins for u in utts)
    dele = sum(u.dele for u in utts)
    ref_words = corr + sub + dele
    errs = sub + ins + dele
    sent_errs = sum(1 for u in utts if u.errs)
    return {
        "wer": _rate(errs, ref_words),
        "num_errs": errs,
        "ref_words": ref_words,
        "hyp_words": corr + sub + ins,
        "corr": corr,
        "sub": sub,
        "ins": ins,
        "del": dele,
        "num_utts": len(utts),
        "num_sent_errs": sent_errs,
        "ser": _rate(sent_errs, len(utts)),
        "missing_hyps": [u.utt_id for u in utts if u.hyp_missing],
    }


def wer(
    refs: Mapping[str, Text],
    hyps: Mapping[str, Text],
    mode: Mode = "sclite",
    normalize: str | None = None,
    case_sensitive: bool | None = None,
    strict: bool = False,
) -> dict:
    """Word error rate of ``hyps`` against ``refs`` (both ``{utt_id: text}``; text is str or UTF-8 bytes).

    Returns a dict: ``wer`` (percent; 0 when there are no reference words and no errors, inf when there
    are errors but no reference words), ``num_errs``, ``ref_words``, ``hyp_words``, ``corr``, ``sub``,
    ``ins``, ``del``, ``num_utts``, ``num_sent_errs``, ``ser`` (percent of utterances with an error),
    ``missing_hyps`` (ids scored as all deletions), the settings ``mode``, ``normalize``,
    ``case_sensitive``, and ``utts`` (``{utt_id: UttScore}`` with per-utterance alignments; drop it
    before serialising to JSON).

    ``normalize="gigaspeech"`` applies :func:`~distill.scoring.normalize.gigaspeech_normalize` to both
    sides. ``strict=True`` first runs :func:`validate_refs` (empty references raise).
    """
    if strict:
        validate_refs(refs, normalize)
    utts = score_utterances(refs, hyps, mode=mode, normalize=normalize, case_sensitive=case_sensitive)
    res = summarize(utts)
    if res["missing_hyps"]:
        log.warning(
            "%d utterance(s) have no hypothesis and are scored as all deletions: %s",
            len(res["missing_hyps"]),
            _name_some(res["missing_hyps"]),
        )
    res.update(
        mode=mode,
        normalize=normalize,
        case_sensitive=(mode != "sclite") if case_sensitive is None else case_sensitive,
        utts={u.utt_id: u for u in utts},
    )
    return res


def format_wer(res: Mapping) -> str:
    """Kaldi ``compute-wer`` style line: ``%WER 4.35 [ 2293 / 52576, 287 ins, 227 del, 1779 sub ]``."""
    return (
        f"%WER {res['wer']:.2f} [ {res['num_errs']} / {res['ref_words']}, "
        f"{res['ins']} ins, {res['del']} del, {res['sub']} sub ]"
    )
