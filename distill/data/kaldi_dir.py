"""Stage 0 for Kaldi data directories (``wav.scp``, ``text``, ``utt2spk``, optional ``segments``).

The files are first checked line by line (UTF-8, duplicates, ids present in one file and not the
other, empty transcripts) and every recording is probed (paths by header, ``cmd |`` pipes by running
them once). The consistent remainder is written as a clean Kaldi directory, with a ``reco2dur`` so
that nothing is decoded again, and read through ``lhotse.kaldi.load_kaldi_data_dir``. lhotse assumes one
sampling rate for the whole directory, so each recording is then corrected from its probe (true
rate and channels, plus a Resample transform when it is not 16 kHz).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

from lhotse import RecordingSet, SupervisionSegment, SupervisionSet
from lhotse.kaldi import load_kaldi_data_dir

from distill.data import report as R
from distill.data.audio import TARGET_SR, AudioCheck, AudioInfo, AudioProblem, probe_many
from distill.data.pipe import DEFAULT_PIPE_TIMEOUT
from distill.data.prep_common import (
    DataPrepError,
    make_recording,
    note_audio_changes,
    read_kaldi_map,
    segment_problem,
)

log = logging.getLogger(__name__)


def _resolve_source(value: str, data_dir: Path) -> str:
    """Relative paths are taken from the working directory (Kaldi's rule), else from the data dir."""
    v = value.strip()
    if v.endswith("|"):
        return v
    p = Path(v)
    if not p.is_absolute() and not p.exists() and (data_dir / p).exists():
        return str((data_dir / p).resolve())
    return str(p.resolve()) if not p.is_absolute() and p.exists() else v


def _read_segments(
    path: Path, split: str, report: R.PrepReport, rejected: set[str]
) -> dict[str, tuple[str, float, float]]:
    raw, where = read_kaldi_map(path, split, report, allow_empty_value=False, rejected=rejected)
    out: dict[str, tuple[str, float, float]] = {}
    for utt, value in raw.items():
        f = value.split()
        try:
            if len(f) != 3:
                raise ValueError
            start, end = float(f[1]), float(f[2])
        except ValueError:
            report.drop(split, R.BAD_LINE, utt, f"{path}:{where[utt]}: expected '<utt> <rec> <start> <end>'")
            rejected.add(utt)
            continue
        if not (math.isfinite(start) and math.isfinite(end)):
            report.drop(split, R.BAD_SEGMENT_TIME, utt, f"{path}:{where[utt]}: start '{f[1]}', end '{f[2]}'")
            rejected.add(utt)
            continue
        out[utt] = (f[0], start, end)
    return out


def scan_dir(
    data_dir: Path,
    split: str,
    report: R.PrepReport,
    nj: int,
    check: AudioCheck,
    pipe_timeout: float = DEFAULT_PIPE_TIMEOUT,
) -> tuple[dict[str, str], dict[str, AudioInfo], dict[str, tuple[str, float, float]], dict[str, str], dict[str, str]]:
    """Validated content of one data dir: sources, probes, segments (utt → rec,start,end), texts, speakers."""
    for name in ("wav.scp", "text"):
        if not (data_dir / name).is_file():
            raise DataPrepError(f"{data_dir / name} not found: a Kaldi data dir needs wav.scp and text")
    # ids whose line was already dropped (not UTF-8, malformed): not reported again as unmatched
    rejected: set[str] = set()
    wav, _ = read_kaldi_map(data_dir / "wav.scp", split, report, allow_empty_value=False, rejected=rejected)
    texts, _ = read_kaldi_map(data_dir / "text", split, report, rejected=rejected)
    spk_path = data_dir / "utt2spk"
    spk, _ = read_kaldi_map(spk_path, split, report, allow_empty_value=False) if spk_path.is_file() else ({}, {})
    seg_path = data_dir / "segments"
    if seg_path.is_file():
        segments = _read_segments(seg_path, split, report, rejected)
        for utt in sorted(texts.keys() - segments.keys() - rejected):
            report.drop(split, R.NO_AUDIO_ENTRY, utt, f"{data_dir / 'text'}: no line in {seg_path}")
        for utt in sorted(segments.keys() - texts.keys() - rejected):
            report.drop(split, R.NO_TRANSCRIPT, utt, f"{seg_path}: no line in {data_dir / 'text'}")
        for utt in sorted(segments.keys() & texts.keys()):
            if segments[utt][0] not in wav:
                report.drop(
                    split, R.NO_AUDIO_ENTRY, utt, f"recording '{segments[utt][0]}' of {seg_path} is not in wav.scp"
                )
        segments = {u: s for u, s in segments.items() if u in texts and s[0] in wav}
    else:
        for utt in sorted(texts.keys() - wav.keys() - rejected):
            report.drop(split, R.NO_AUDIO_ENTRY, utt, f"{data_dir / 'text'} has it, {data_dir / 'wav.scp'} does not")
        for utt in sorted(wav.keys() - texts.keys() - rejected):
            report.drop(split, R.NO_TRANSCRIPT, utt, f"{data_dir / 'wav.scp'} has it, {data_dir / 'text'} does not")
        segments = {u: (u, 0.0, -1.0) for u in texts if u in wav}
    for utt in sorted(segments):
        if not texts[utt].strip():
            report.drop(split, R.EMPTY_TRANSCRIPT, utt, f"{data_dir / 'text'}")
    segments = {u: s for u, s in segments.items() if texts[u].strip()}
    for u in sorted(segments):
        if u not in spk:
            report.note(split, R.NOTE_NO_SPEAKER, u, str(spk_path) if spk_path.is_file() else f"no {spk_path}")
    speakers = {u: spk.get(u, u) for u in segments}

    rec_ids = sorted({s[0] for s in segments.values()})
    sources = {r: _resolve_source(wav[r], data_dir) for r in rec_ids}
    log.info("%s: %d utterances, probing %d recordings with %d jobs", split, len(segments), len(rec_ids), nj)
    probes = probe_many(sources.items(), nj=nj, check=check, pipe_timeout=pipe_timeout)
    good: dict[str, AudioInfo] = {}
    for r, p in probes.items():
        if isinstance(p, AudioProblem):
            continue
        good[r] = p
    kept: dict[str, tuple[str, float, float]] = {}
    for utt in sorted(segments):
        rec, start, end = segments[utt]
        p = probes[rec]
        if isinstance(p, AudioProblem):
            report.drop(split, p.reason, utt, p.detail)
            continue
        problem = segment_problem(start, end, p.duration, rec)
        if problem is not None:
            report.drop(split, problem[0], utt, problem[1])
            continue
        kept[utt] = segments[utt]
    return sources, good, kept, texts, speakers


def _write_clean_dir(
    clean: Path,
    sources: dict[str, str],
    probes: dict[str, AudioInfo],
    segments: dict[str, tuple[str, float, float]],
    texts: dict[str, str],
    speakers: dict[str, str],
) -> None:
    clean.mkdir(parents=True, exist_ok=True)
    recs = sorted({s[0] for s in segments.values()})
    utts = sorted(segments)

    def write(name: str, lines: list[str]) -> None:
        (clean / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")

    write("wav.scp", [f"{r} {sources[r]}" for r in recs])
    write("reco2dur", [f"{r} {probes[r].duration:.6f}" for r in recs])
    write("text", [f"{u} {texts[u]}" for u in utts])
    write("utt2spk", [f"{u} {speakers[u]}" for u in utts])
    write(
        "segments",
        [
            f"{u} {segments[u][0]} {segments[u][1]:.6f} "
            f"{_segment_end(segments[u], probes[segments[u][0]].duration):.6f}"
            for u in utts
        ],
    )


def _segment_end(seg: tuple, duration: float) -> float:
    """A segment's end time: its own (``-1``: the recording's end), never past the recording."""
    return min(seg[2] if seg[2] >= 0 else duration, duration)


def prepare(
    corpus_dir: Path,
    parts: Sequence[str],
    report: R.PrepReport,
    work_dir: Path,
    nj: int = 1,
    check: AudioCheck = "tail",
    pipe_timeout: float = DEFAULT_PIPE_TIMEOUT,
) -> dict[str, tuple[RecordingSet, SupervisionSet]]:
    """Recordings and supervisions for each Kaldi data dir ``<corpus_dir>/<part>`` (``cmd |`` entries are
    killed with their children after ``pipe_timeout`` seconds)."""
    out: dict[str, tuple[RecordingSet, SupervisionSet]] = {}
    for part in parts:
        data_dir = corpus_dir / part
        if not data_dir.is_dir():
            present = sorted(p.name for p in corpus_dir.iterdir() if p.is_dir()) if corpus_dir.is_dir() else []
            raise DataPrepError(
                f"Kaldi data dir '{data_dir}' not found (present: {', '.join(present) or 'none'}); "
                "fix `splits` in conf/data.yaml or corpus_dir="
            )
        sources, probes, segments, texts, speakers = scan_dir(data_dir, part, report, nj, check, pipe_timeout)
        clean = work_dir / part
        _write_clean_dir(clean, sources, probes, segments, texts, speakers)
        if not segments:
            out[part] = (RecordingSet.from_recordings([]), SupervisionSet.from_segments([]))
            continue
        recs, sups, _ = load_kaldi_data_dir(clean, sampling_rate=TARGET_SR, use_reco2dur=True)
        assert sups is not None
        fixed = {}
        for rec in recs:
            info = probes[rec.id]
            fixed[rec.id] = make_recording(rec.id, sources[rec.id], info)
            note_audio_changes(part, rec.id, info, report, TARGET_SR)
        new_sups = []
        for s in sups:
            info = probes[s.recording_id]
            d = s.to_dict()
            d["channel"] = 0 if info.channels == 1 else list(range(info.channels))
            d["duration"] = round(min(s.duration, fixed[s.recording_id].duration - s.start), 6)
            new_sups.append(SupervisionSegment.from_dict(d))
            report.keep(part)
        out[part] = (RecordingSet.from_recordings(fixed.values()), SupervisionSet.from_segments(new_sups))
    return out
