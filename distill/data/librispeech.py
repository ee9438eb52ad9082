"""Stage 0 for a LibriSpeech tree (``<part>/<reader>/<chapter>/<reader>-<chapter>.trans.txt`` + ``*.flac``).

The manifests match lhotse's ``prepare_librispeech`` field for field (a test checks this on a clean
tree: same ids, durations, speakers, texts), but are built from a validated scan: lhotse's recipe
stops with a traceback on an empty transcript line, a non-UTF-8 line or an unreadable FLAC, and drops
a missing FLAC with only a log warning. Here each of those is dropped and counted in the report.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from lhotse import RecordingSet, SupervisionSet
from lhotse.recipes import download_librispeech

from distill.data import report as R
from distill.data.audio import AudioCheck, probe_many
from distill.data.prep_common import DataPrepError, Utterance, assemble, read_lines

log = logging.getLogger(__name__)

PARTS = (
    "train-clean-100",
    "train-clean-360",
    "train-other-500",
    "dev-clean",
    "dev-other",
    "test-clean",
    "test-other",
    "dev-clean-2",
    "train-clean-5",
)


def find_part_dir(corpus_dir: Path, part: str) -> Path:
    """``<corpus_dir>/LibriSpeech/<part>`` or ``<corpus_dir>/<part>``."""
    for cand in (corpus_dir / "LibriSpeech" / part, corpus_dir / part):
        if cand.is_dir():
            return cand
    avail = sorted(
        p.name
        for base in (corpus_dir / "LibriSpeech", corpus_dir)
        if base.is_dir()
        for p in base.iterdir()
        if p.is_dir() and p.name != "LibriSpeech"
    )
    raise DataPrepError(
        f"LibriSpeech part '{part}' not found: looked for {corpus_dir / 'LibriSpeech' / part} and "
        f"{corpus_dir / part}. Directories present: {', '.join(avail) or 'none'}. "
        "Fix `splits` in conf/data.yaml or corpus_dir=, or use download=true."
    )


def audio_path(part_dir: Path, utt_id: str) -> Path:
    """``<part>/<reader>/<chapter>/<utt>.flac`` (the layout lhotse's recipe assumes)."""
    return part_dir / Path(utt_id.replace("-", "/")).parent / f"{utt_id}.flac"


def scan_part(part_dir: Path, split: str, report: R.PrepReport) -> list[tuple[Utterance, Path]]:
    """Transcript lines of one part with their FLAC paths; bad lines are dropped and counted."""
    out: list[tuple[Utterance, Path]] = []
    seen: dict[str, str] = {}
    for trans in sorted(part_dir.rglob("*.trans.txt")):
        for lineno, line in read_lines(trans, split, report):
            parts = line.strip().split(maxsplit=1)
            uid = parts[0]
            text = parts[1].strip() if len(parts) > 1 else ""
            where = f"{trans}:{lineno}"
            if uid in seen:
                report.drop(split, R.DUPLICATE_ID, uid, f"{where} repeats {seen[uid]} (kept the first)")
                continue
            seen[uid] = where
            if not text:
                report.drop(split, R.EMPTY_TRANSCRIPT, uid, where)
                continue
            utt = Utterance(id=uid, recording_id=uid, text=text, speaker=re.sub(r"-.*", "", uid), language="English")
            out.append((utt, audio_path(part_dir, uid)))
    listed = {u.id for u, _ in out} | set(seen)
    for flac in sorted(part_dir.rglob("*.flac")):
        if flac.stem not in listed:
            report.drop(split, R.NO_TRANSCRIPT, flac.stem, f"{flac} has no line in any *.trans.txt")
    return out


def prepare(
    corpus_dir: Path,
    parts: Sequence[str],
    report: R.PrepReport,
    nj: int = 1,
    check: AudioCheck = "tail",
    download: bool = False,
) -> dict[str, tuple[RecordingSet, SupervisionSet]]:
    """Recordings and supervisions for each requested LibriSpeech part."""
    if download:
        log.info("downloading LibriSpeech parts %s into %s", list(parts), corpus_dir)
        corpus_dir.mkdir(parents=True, exist_ok=True)
        download_librispeech(target_dir=corpus_dir, dataset_parts=list(parts))
    if not corpus_dir.is_dir():
        raise DataPrepError(f"corpus_dir '{corpus_dir}' does not exist (set corpus_dir= or download=true)")
    out: dict[str, tuple[RecordingSet, SupervisionSet]] = {}
    for part in parts:
        part_dir = find_part_dir(corpus_dir, part)
        items = scan_part(part_dir, part, report)
        log.info("%s: %d transcript lines in %s; probing audio with %d jobs", part, len(items), part_dir, nj)
        probes = probe_many(((u.id, str(p)) for u, p in items), nj=nj, check=check)
        sources = {u.id: str(p) for u, p in items}
        out[part] = assemble(part, sources, [u for u, _ in items], probes, report)
    return out
