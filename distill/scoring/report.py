"""Result files in icefall's formats, and Kaldi ``text`` file reading.

Per test set and decoding setting (``suffix``, e.g. ``epoch-30-avg-10-chunk-24``):

* ``recogs-<test>-<suffix>.txt``: two lines per utterance, sorted by id:
  ``<id>:\\tref=['W1', 'W2']`` and ``<id>:\\thyp=[...]`` (the scored, normalised words);
* ``errs-<test>-<suffix>.txt``: ``%WER = x.xx``, an ``Errors:`` line, then the sections
  ``PER-UTT DETAILS``, ``SUBSTITUTIONS``, ``DELETIONS``, ``INSERTIONS`` (counts, most frequent first)
  and ``PER-WORD STATS``; a final ``MISSING HYPOTHESES`` section lists ids that had no hypothesis;
* ``wer-summary-<test>-<suffix>.txt``: ``settings\\tWER`` then ``<key>\\t<wer>`` lines, best first.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TextIO

from distill.data.textfile import iter_raw_lines

from .align import ascii_lower
from .wer import Mode, Text, UttScore, format_wer, wer

__all__ = [
    "read_kaldi_text",
    "write_recogs",
    "write_errs",
    "write_wer_summary",
    "write_scoring_files",
    "per_utt_details",
]

log = logging.getLogger(__name__)
PathLike = str | Path


def read_kaldi_text(path: PathLike) -> dict[str, str]:
    """Read a Kaldi ``text`` file (``<utt-id> word word ...`` per line; an id alone is an empty text).

    Blank lines are skipped and a UTF-8 byte-order mark at the start is removed. A line that is not UTF-8,
    or a repeated id, raises ValueError naming the file, the line number and (where it can be read) the utterance id.
    """
    path = Path(path)
    out: dict[str, str] = {}
    for lineno, raw in iter_raw_lines(path):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            uid = raw.split(maxsplit=1)[0].decode("utf-8", "replace") if raw.split() else "?"
            raise ValueError(f"{path}:{lineno}: utterance '{uid}': not valid UTF-8 ({e})") from None
        parts = line.strip().split(maxsplit=1)
        if not parts:
            continue
        uid = parts[0]
        if uid in out:
            raise ValueError(f"{path}:{lineno}: utterance '{uid}' appears twice")
        out[uid] = parts[1] if len(parts) > 1 else ""
    return out


def write_recogs(f: TextIO, utts: Iterable[UttScore]) -> None:
    """icefall ``store_transcripts`` format: ``<id>:\\tref=[...]`` and ``<id>:\\thyp=[...]`` lines."""
    for u in sorted(utts, key=lambda u: u.utt_id):
        print(f"{u.utt_id}:\tref={u.ref!r}", file=f)
        print(f"{u.utt_id}:\thyp={u.hyp!r}", file=f)


def _fold(word: str, case_sensitive: bool) -> str:
    return word if case_sensitive else ascii_lower(word)


def per_utt_details(u: UttScore, case_sensitive: bool = True) -> str:
    """One ``PER-UTT DETAILS`` line body: correct words as is, each run of errors as ``(ref->hyp)``.

    Consecutive errors are merged into one group; an empty side is written ``*``.
    """
    out: list[str] = []
    run_ref: list[str] = []
    run_hyp: list[str] = []

    def flush() -> None:
        if run_ref or run_hyp:
            out.append(f"({' '.join(run_ref) or '*'}->{' '.join(run_hyp) or '*'})")
            run_ref.clear()
            run_hyp.clear()

    for r, h in u.alignment:
        if r is not None and h is not None and _fold(r, case_sensitive) == _fold(h, case_sensitive):
            flush()
            out.append(r)
        else:
            if r is not None:
                run_ref.append(r)
            if h is not None:
                run_hyp.append(h)
    flush()
    return " ".join(out)


def write_errs(f: TextIO, res: Mapping) -> None:
    """icefall ``write_error_stats`` format for a :func:`~distill.scoring.wer` result ``res``."""
    utts: list[UttScore] = list(res["utts"].values())
    cs = bool(res.get("case_sensitive", True))
    subs: dict[tuple[str, str], int] = defaultdict(int)
    ins: dict[str, int] = defaultdict(int)
    dels: dict[str, int] = defaultdict(int)
    # word -> [corr, as ref in sub, as hyp in sub, inserted, deleted]
    words: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for u in utts:
        for r, h in u.alignment:
            if r is None:
                ins[h] += 1
                words[h][3] += 1
            elif h is None:
                dels[r] += 1
                words[r][4] += 1
            elif _fold(r, cs) == _fold(h, cs):
                words[r][0] += 1
            else:
                subs[(r, h)] += 1
                words[r][1] += 1
                words[h][2] += 1

    print(f"%WER = {res['wer']:.2f}", file=f)
    print(
        f"Errors: {res['ins']} insertions, {res['del']} deletions, {res['sub']} substitutions, "
        f"over {res['ref_words']} reference words ({res['corr']} correct)",
        file=f,
    )
    print(
        "Search below for sections starting with PER-UTT DETAILS:, SUBSTITUTIONS:, DELETIONS:, "
        "INSERTIONS:, PER-WORD STATS:",
        file=f,
    )
    print("", file=f)
    print("PER-UTT DETAILS: corr or (ref->hyp)  ", file=f)
    for u in utts:
        print(f"{u.utt_id}:\t{per_utt_details(u, cs)}", file=f)

    print("", file=f)
    print("SUBSTITUTIONS: count ref -> hyp", file=f)
    for (r, h), c in sorted(subs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True):
        print(f"{c}   {r} -> {h}", file=f)
    print("", file=f)
    print("DELETIONS: count ref", file=f)
    for w, c in sorted(dels.items(), key=lambda kv: (kv[1], kv[0]), reverse=True):
        print(f"{c}   {w}", file=f)
    print("", file=f)
    print("INSERTIONS: count hyp", file=f)
    for w, c in sorted(ins.items(), key=lambda kv: (kv[1], kv[0]), reverse=True):
        print(f"{c}   {w}", file=f)
    print("", file=f)
    print("PER-WORD STATS: word  corr tot_errs count_in_ref count_in_hyp", file=f)
    for w, (corr, rsub, hsub, wins, wdel) in sorted(
        words.items(), key=lambda kv: (sum(kv[1][1:]), kv[0]), reverse=True
    ):
        print(f"{w}   {corr} {rsub + hsub + wins + wdel} {corr + rsub + wdel} {corr + hsub + wins}", file=f)
    missing = res.get("missing_hyps") or []
    if missing:
        print("", file=f)
        print(f"MISSING HYPOTHESES (scored as all deletions): {len(missing)}", file=f)
        for uid in missing:
            print(uid, file=f)


def write_wer_summary(out_dir: PathLike, test_set: str, suffix: str, wers: Mapping[str, float]) -> Path:
    """Write ``wer-summary-<test_set>-<suffix>.txt``: ``settings\\tWER``, then ``key\\twer`` best first."""
    path = Path(out_dir) / f"wer-summary-{test_set}-{suffix}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        print("settings\tWER", file=f)
        for key, value in sorted(wers.items(), key=lambda kv: (kv[1], kv[0])):
            print(f"{key}\t{value:.2f}", file=f)
    return path


def write_scoring_files(
    out_dir: PathLike,
    test_set: str,
    suffix: str,
    refs: Mapping[str, Text],
    hyps: Mapping[str, Text],
    mode: Mode = "sclite",
    normalize: str | None = None,
    case_sensitive: bool | None = None,
    key: str | None = None,
) -> dict:
    """Score and write ``recogs-``, ``errs-`` and ``wer-summary-<test_set>-<suffix>.txt`` in ``out_dir``.

    ``key`` names the setting in the summary (default: ``suffix``). Returns the :func:`wer` result with
    ``files`` (the three paths) added, and logs ``[<test_set>-<key>] %WER ...``.
    """
    res = wer(refs, hyps, mode=mode, normalize=normalize, case_sensitive=case_sensitive)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    recogs = out / f"recogs-{test_set}-{suffix}.txt"
    errs = out / f"errs-{test_set}-{suffix}.txt"
    with recogs.open("w", encoding="utf-8") as f:
        write_recogs(f, res["utts"].values())
    with errs.open("w", encoding="utf-8") as f:
        write_errs(f, res)
    key = key or suffix
    summary = write_wer_summary(out, test_set, suffix, {key: res["wer"]})
    log.info("[%s-%s] %s", test_set, key, format_wer(res))
    res["files"] = {"recogs": recogs, "errs": errs, "wer_summary": summary}
    return res
