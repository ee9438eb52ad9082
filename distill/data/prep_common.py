"""Shared pieces of stage 0: checked text reading, recordings from probes, manifest assembly."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
from lhotse.audio import AudioSource

from distill.data import report as R
from distill.data.audio import TARGET_SR, AudioInfo, AudioProblem
from distill.data.textfile import NotUtf8Error, decode_line, iter_raw_lines

log = logging.getLogger(__name__)

# A segment may end this far past the end of its audio (rounding in corpus metadata) before it is
# rejected; the supervision is then clipped to the audio.
SEGMENT_END_TOLERANCE = 0.05


class DataPrepError(RuntimeError):
    """A problem with the corpus as a whole (missing directory or index file); the message says what to do."""


def read_lines(
    path: Path, split: str, report: R.PrepReport, rejected: set[str] | None = None
) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each line of a file; lines that are not UTF-8 are dropped and counted.

    The keys (first fields) of dropped lines are added to ``rejected`` so that callers do not count
    the same utterance again (e.g. as missing from another file). A UTF-8 byte-order mark at the start
    is removed (:func:`distill.data.textfile.iter_raw_lines`).
    """
    for lineno, raw in iter_raw_lines(path):
        try:
            line = decode_line(raw, path, lineno)
        except NotUtf8Error as e:
            report.drop(split, R.NOT_UTF8, e.key, f"{path}:{lineno}: {e.detail}")
            if rejected is not None:
                rejected.add(e.key)
            continue
        if line.strip():
            yield lineno, line


def read_kaldi_map(
    path: Path, split: str, report: R.PrepReport, allow_empty_value: bool = True, rejected: set[str] | None = None
) -> tuple[dict[str, str], dict[str, int]]:
    """A Kaldi ``key value`` file as a dict (first occurrence wins; later duplicates dropped and counted).

    Returns the mapping and each key's line number (for messages). Keys of lines dropped as unusable
    are added to ``rejected``.
    """
    out: dict[str, str] = {}
    where: dict[str, int] = {}
    for lineno, line in read_lines(path, split, report, rejected):
        parts = line.strip().split(maxsplit=1)
        key = parts[0]
        value = parts[1].strip() if len(parts) > 1 else ""
        if not value and not allow_empty_value:
            report.drop(split, R.BAD_LINE, key, f"{path}:{lineno}: no value after the key")
            if rejected is not None:
                rejected.add(key)
            continue
        if key in out:
            report.drop(split, R.DUPLICATE_ID, key, f"{path}:{lineno} repeats line {where[key]} (kept the first)")
            continue
        out[key] = value
        where[key] = lineno
    return out, where


def segment_problem(start: float, end: float | None, duration: float, rec_id: str) -> tuple[str, str] | None:
    """Why the segment ``start``–``end`` s of recording ``rec_id`` (``duration`` s long; ``end`` None or
    negative: to the end) cannot be used, as ``(reason, detail)``; None when it can. A NaN or infinite
    time is :data:`~distill.data.report.BAD_SEGMENT_TIME` (NaN fails every comparison, so it is tested
    first: it must never slip through uncounted)."""
    if not math.isfinite(start) or (end is not None and not math.isfinite(end)):
        return R.BAD_SEGMENT_TIME, f"segment {start}–{end} s of recording '{rec_id}'"
    e = duration if end is None or end < 0 else end
    if start < 0 or e <= start or e > duration + SEGMENT_END_TOLERANCE:
        return R.BAD_SEGMENT, (
            f"segment {start:.2f}–{e:.2f} s of recording '{rec_id}' ({duration:.2f} s long"
            + (", truncated audio?)" if e > duration else ")")
        )
    return None


def make_recording(rec_id: str, source: str, info: AudioInfo, target_sr: int = TARGET_SR) -> Recording:
    """A lhotse Recording from a probe; audio not at ``target_sr`` gets a Resample transform."""
    s = source.strip()
    is_cmd = s.endswith("|")
    rec = Recording(
        id=rec_id,
        sources=[
            AudioSource(
                type="command" if is_cmd else "file",
                channels=list(range(info.channels)),
                source=s[:-1].strip() if is_cmd else s,
            )
        ],
        sampling_rate=info.sampling_rate,
        num_samples=info.num_samples,
        duration=info.duration,
    )
    if info.sampling_rate != target_sr:
        rec = rec.resample(target_sr)
    return rec


def note_audio_changes(split: str, rec_id: str, info: AudioInfo, report: R.PrepReport, target_sr: int) -> None:
    if info.sampling_rate != target_sr:
        report.note(split, R.NOTE_RESAMPLED, rec_id, f"{info.sampling_rate} Hz → {target_sr} Hz when loaded")
    if info.channels > 1:
        report.note(split, R.NOTE_DOWNMIXED, rec_id, f"{info.channels} channels averaged when loaded")


@dataclass
class Utterance:
    """One transcribed stretch of a recording (``end=None``: to the end of the recording)."""

    id: str
    recording_id: str
    text: str
    speaker: str | None = None
    start: float = 0.0
    end: float | None = None
    language: str | None = None
    custom: dict[str, Any] | None = field(default=None)


def assemble(
    split: str,
    sources: dict[str, str],
    utts: list[Utterance],
    probes: dict[str, AudioInfo | AudioProblem],
    report: R.PrepReport,
    target_sr: int = TARGET_SR,
) -> tuple[RecordingSet, SupervisionSet]:
    """Recordings and supervisions for one part; utterances whose audio or segment is bad are dropped and counted.

    ``sources`` maps recording ids to paths/commands, ``probes`` holds each recording's probe result.
    """
    recordings: dict[str, Recording] = {}
    bad: dict[str, AudioProblem] = {}
    for rec_id, probe in probes.items():
        if isinstance(probe, AudioProblem):
            bad[rec_id] = probe
            continue
        recordings[rec_id] = make_recording(rec_id, sources[rec_id], probe, target_sr)
    used: set[str] = set()
    sups: list[SupervisionSegment] = []
    for u in utts:
        if u.recording_id in bad:
            p = bad[u.recording_id]
            report.drop(split, p.reason, u.id, p.detail)
            continue
        rec = recordings[u.recording_id]
        problem = segment_problem(u.start, u.end, rec.duration, u.recording_id)
        if problem is not None:
            report.drop(split, problem[0], u.id, problem[1])
            continue
        end = min(rec.duration if u.end is None or u.end < 0 else u.end, rec.duration)
        info = probes[u.recording_id]
        assert isinstance(info, AudioInfo)
        sups.append(
            SupervisionSegment(
                id=u.id,
                recording_id=u.recording_id,
                start=round(u.start, 6),
                duration=round(end - u.start, 6),
                channel=0 if info.channels == 1 else list(range(info.channels)),
                text=u.text,
                speaker=u.speaker,
                language=u.language,
                custom=u.custom,
            )
        )
        if u.recording_id not in used:
            used.add(u.recording_id)
            note_audio_changes(split, u.recording_id, info, report, target_sr)
        report.keep(split)
    return (
        RecordingSet.from_recordings(r for rid, r in recordings.items() if rid in used),
        SupervisionSet.from_segments(sups),
    )


def cuts_from_manifests(recordings: RecordingSet, supervisions: SupervisionSet) -> CutSet:
    """One cut per supervision, with the cut id equal to the utterance id."""
    cuts = CutSet.from_manifests(recordings=recordings, supervisions=supervisions)
    return cuts.trim_to_supervisions(keep_overlapping=False)
