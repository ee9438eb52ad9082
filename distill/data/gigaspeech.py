"""Stage 0 for a GigaSpeech release directory (``GigaSpeech.json`` + ``audio/**.opus``).

lhotse's ``prepare_gigaspeech`` needs the optional ``speechcolab`` package (not installed here) only to
read the JSON, so we read it directly. Recordings are measured from the Opus headers (libsndfile reads
Opus, so neither ffmpeg nor speechcolab is needed), supervisions come from each audio's ``segments``
(``sid``, ``begin_time``, ``end_time``, ``text_tn``, ``subsets`` such as ``"{XL}"``).

GigaSpeech text conventions: the punctuation tags ``<COMMA> <PERIOD> <QUESTIONMARK>
<EXCLAMATIONPOINT>`` are removed from ``text_tn`` (the original is kept in ``custom["orig_text"]``);
utterances made only of the garbage tags ``<SIL> <MUSIC> <NOISE> <OTHER>`` are dropped and counted.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

from lhotse import RecordingSet, SupervisionSet

from distill.data import report as R
from distill.data.audio import AudioCheck, probe_many
from distill.data.prep_common import DataPrepError, Utterance, assemble

log = logging.getLogger(__name__)

SUBSETS = ("XS", "S", "M", "L", "XL", "DEV", "TEST")
PUNCTUATION_TAGS = ("<COMMA>", "<PERIOD>", "<QUESTIONMARK>", "<EXCLAMATIONPOINT>")
GARBAGE_TAGS = ("<SIL>", "<MUSIC>", "<NOISE>", "<OTHER>")


def clean_text(text: str) -> str:
    """``text_tn`` without punctuation tags, whitespace collapsed."""
    return " ".join(w for w in text.split() if w not in PUNCTUATION_TAGS)


def is_garbage(text: str) -> bool:
    words = text.split()
    return bool(words) and all(w in GARBAGE_TAGS for w in words)


def load_index(corpus_dir: Path) -> dict:
    path = corpus_dir / "GigaSpeech.json"
    if not path.is_file():
        raise DataPrepError(
            f"{path} not found: corpus_dir must be a GigaSpeech release directory "
            "(GigaSpeech.json and audio/); download it with the SpeechColab tools first"
        )
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataPrepError(f"{path} is not UTF-8 ({e}); re-download the metadata") from None
    except json.JSONDecodeError as e:
        raise DataPrepError(f"{path} is not valid JSON ({e}); re-download the metadata") from None
    if not isinstance(data, dict) or not isinstance(data.get("audios"), list):
        raise DataPrepError(f"{path} has no 'audios' list; is it a GigaSpeech metadata file?")
    return data


def prepare(
    corpus_dir: Path,
    subsets: Sequence[str],
    report: R.PrepReport,
    nj: int = 1,
    check: AudioCheck = "tail",
) -> dict[str, tuple[RecordingSet, SupervisionSet]]:
    """Recordings and supervisions for each requested subset (XS/S/M/L/XL/DEV/TEST)."""
    for s in subsets:
        if s not in SUBSETS:
            raise DataPrepError(f"unknown GigaSpeech subset '{s}' (known: {', '.join(SUBSETS)}); fix `splits` in conf/data.yaml")
    if not corpus_dir.is_dir():
        raise DataPrepError(f"corpus_dir '{corpus_dir}' does not exist")
    index = load_index(corpus_dir)
    per_part: dict[str, list[Utterance]] = {s: [] for s in subsets}
    sources: dict[str, str] = {}
    seen_sid: dict[str, str] = {}
    seen_aid: set[str] = set()
    for n, audio in enumerate(index["audios"]):
        aid = audio.get("aid")
        rel = audio.get("path")
        if not aid or not rel or not isinstance(audio.get("segments"), list):
            for s in subsets:
                report.drop(s, R.BAD_LINE, str(aid or f"audios[{n}]"), "GigaSpeech.json entry lacks aid/path/segments")
            continue
        if aid in seen_aid:
            for s in subsets:
                report.drop(s, R.DUPLICATE_ID, aid, "audio id repeated in GigaSpeech.json (kept the first)")
            continue
        seen_aid.add(aid)
        for seg in audio["segments"]:
            tags = {str(t).strip("{}") for t in seg.get("subsets", [])}
            wanted = [s for s in subsets if s in tags]
            if not wanted:
                continue
            sid = seg.get("sid")
            try:
                start, end = float(seg["begin_time"]), float(seg["end_time"])
                orig = str(seg["text_tn"])
            except (KeyError, TypeError, ValueError):
                for s in wanted:
                    report.drop(s, R.BAD_LINE, str(sid), f"segment of {aid} lacks begin_time/end_time/text_tn")
                continue
            if sid in seen_sid:
                for s in wanted:
                    report.drop(s, R.DUPLICATE_ID, str(sid), f"segment id repeated (first in {seen_sid[sid]})")
                continue
            seen_sid[sid] = aid
            text = clean_text(orig)
            for s in wanted:
                if not text:
                    report.drop(s, R.EMPTY_TRANSCRIPT, sid, f"text_tn={orig!r}")
                elif is_garbage(text):
                    report.drop(s, R.GARBAGE_ONLY, sid, text)
                else:
                    per_part[s].append(
                        Utterance(
                            id=sid, recording_id=aid, text=text, speaker=seg.get("speaker"),
                            start=start, end=end, language="English", custom={"orig_text": orig},
                        )
                    )
                    sources[aid] = str(corpus_dir / rel)
    log.info("GigaSpeech: probing %d audio files with %d jobs", len(sources), nj)
    probes = probe_many(sources.items(), nj=nj, check=check)
    out: dict[str, tuple[RecordingSet, SupervisionSet]] = {}
    for s in subsets:
        rec_ids = {u.recording_id for u in per_part[s]}
        out[s] = assemble(s, sources, per_part[s], {r: probes[r] for r in rec_ids}, report)
    return out
