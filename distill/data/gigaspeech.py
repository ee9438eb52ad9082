"""Stage 0 for a GigaSpeech release directory (``GigaSpeech.json`` + ``audio/**.opus``).

lhotse's ``prepare_gigaspeech`` needs the optional ``speechcolab`` package (not installed here) only to
read the JSON, so we read it directly, streamed (ijson) and written out recording by recording: memory
does not grow with the metadata (XL: 10,000 h, gigabytes of JSON; docs/data.md, "Scale"). Recordings
are measured from the Opus headers (libsndfile reads Opus, so neither ffmpeg nor speechcolab is
needed), each audio file once; supervisions come from each audio's ``segments`` (``sid``,
``begin_time``, ``end_time``, ``text_tn``, ``subsets`` such as ``"{XL}"``).

GigaSpeech text conventions: the punctuation tags ``<COMMA> <PERIOD> <QUESTIONMARK>
<EXCLAMATIONPOINT>`` are removed from ``text_tn`` (the original is kept in ``custom["orig_text"]``);
utterances made only of the garbage tags ``<SIL> <MUSIC> <NOISE> <OTHER>`` are dropped and counted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import ijson
import numpy as np
from tqdm import tqdm

from distill.data import report as R
from distill.data.audio import AudioCheck, AudioInfo, AudioProblem, probe_many
from distill.data.manifests import PartWriter
from distill.data.prep_common import DataPrepError, Utterance, assemble

log = logging.getLogger(__name__)

TRAIN_SUBSETS = ("XS", "S", "M", "L", "XL")  # nested training subsets: XS is in S, ..., L in XL
SUBSETS = (*TRAIN_SUBSETS, "DEV", "TEST")
PUNCTUATION_TAGS = ("<COMMA>", "<PERIOD>", "<QUESTIONMARK>", "<EXCLAMATIONPOINT>")
GARBAGE_TAGS = ("<SIL>", "<MUSIC>", "<NOISE>", "<OTHER>")


def clean_text(text: str) -> str:
    """``text_tn`` without punctuation tags, whitespace collapsed."""
    return " ".join(w for w in text.split() if w not in PUNCTUATION_TAGS)


def is_garbage(text: str) -> bool:
    words = text.split()
    return bool(words) and all(w in GARBAGE_TAGS for w in words)


def metadata_path(corpus_dir: Path) -> Path:
    path = corpus_dir / "GigaSpeech.json"
    if not path.is_file():
        raise DataPrepError(
            f"{path} not found: corpus_dir must be a GigaSpeech release directory "
            "(GigaSpeech.json and audio/); download it with the SpeechColab tools first"
        )
    return path


def _json_error(path: Path, e: Exception) -> DataPrepError:
    """A one-line error for a parse failure (the parser's message without its multi-line excerpt)."""
    msg = e.args[0] if e.args else str(e)
    msg = (msg.decode("utf-8", "replace") if isinstance(msg, bytes) else str(msg)).strip().splitlines()[0]
    if "UTF8" in msg or isinstance(e, UnicodeDecodeError):
        return DataPrepError(f"{path} is not UTF-8 ({msg}); re-download the metadata")
    return DataPrepError(f"{path} is not valid JSON ({msg}); re-download the metadata")


def iter_audios(path: Path, progress: Callable[[int], None] | None = None) -> Iterator[Any]:
    """The ``audios`` entries of ``GigaSpeech.json``, one at a time.

    The file is parsed incrementally (ijson), so memory does not grow with it: the XL metadata is
    gigabytes of JSON, and ``json.loads`` of it needs many times that. A file that is not JSON, not
    UTF-8, or has no top-level ``audios`` list raises :class:`DataPrepError`. ``progress`` is called
    with the bytes read so far.
    """
    n = 0
    try:
        with open(path, "rb") as f:
            for audio in ijson.items(f, "audios.item", use_float=True):
                n += 1
                if progress is not None and n % 64 == 0:
                    progress(f.tell())
                yield audio
        if n == 0:  # an empty list, or no list at all?
            with open(path, "rb") as f:
                found = any(p == "audios" and e == "start_array" for p, e, _ in ijson.parse(f))
            if not found:
                raise DataPrepError(f"{path} has no 'audios' list; is it a GigaSpeech metadata file?")
    except (ijson.JSONError, UnicodeDecodeError) as e:
        raise _json_error(path, e) from None


class _SeenSegmentIds:
    """Which segment ids came before (first kept, later ones dropped), in 8 bytes per segment (66 MB for
    XL's 8.3 M) instead of ~100 for a set of the ids.

    GigaSpeech ids are ``<aid>_S<n>`` ("regular": they start with their own recording's id, which has
    no ``_``), so two regular ids of different recordings always differ: a regular id is checked
    against the ids of its own recording only. Other ids are kept exactly (with their recording, for
    the message); regular ids are also kept as 64-bit hashes, only consulted for an irregular id,
    which a malformed file may give a regular id of another recording.
    """

    def __init__(self) -> None:
        self._aid: str | None = None
        self._local: set[str] = set()
        self._irregular: dict[str, str] = {}
        self._hashes = np.zeros(0, dtype=np.int64)
        self._new_hashes: set[int] = set()

    def _merge(self) -> None:
        """Move the recent hashes into the sorted array (a linear-time insert, not a re-sort)."""
        new = np.unique(np.fromiter(self._new_hashes, np.int64, len(self._new_hashes)))
        self._hashes = np.insert(self._hashes, np.searchsorted(self._hashes, new), new)
        self._new_hashes = set()

    def _hashed(self, h: int) -> bool:
        if h in self._new_hashes:
            return True
        i = int(np.searchsorted(self._hashes, h))
        return i < len(self._hashes) and int(self._hashes[i]) == h

    def first_seen_in(self, sid: str, aid: str) -> str | None:
        """None when ``sid`` is new (it is recorded), else the recording where it came first."""
        if aid != self._aid:
            self._aid, self._local = aid, set()
        regular = "_" not in aid and sid.startswith(aid + "_")
        if regular:
            if sid in self._local:
                return aid
            if sid in self._irregular:
                return self._irregular[sid]
            self._local.add(sid)
            self._new_hashes.add(hash(sid))
            if len(self._new_hashes) >= 1 << 16:
                self._merge()
            return None
        if sid in self._irregular:
            return self._irregular[sid]
        if self._hashed(hash(sid)):
            return sid.split("_", 1)[0]
        self._irregular[sid] = aid
        return None


def _segments_of(
    n: int,
    audio: Any,
    corpus_dir: Path,
    subsets: Sequence[str],
    report: R.PrepReport,
    seen_aid: set[str],
    seen_sid: _SeenSegmentIds,
) -> tuple[str, str, dict[str, list[Utterance]]] | None:
    """One ``audios`` entry: (aid, audio path, part → its utterances), bad segments dropped and counted."""
    aid = audio.get("aid") if isinstance(audio, dict) else None
    rel = audio.get("path") if isinstance(audio, dict) else None
    if not aid or not rel or not isinstance(audio.get("segments"), list):
        for s in subsets:
            report.drop(s, R.BAD_LINE, str(aid or f"audios[{n}]"), "GigaSpeech.json entry lacks aid/path/segments")
        return None
    if aid in seen_aid:
        for s in subsets:
            report.drop(s, R.DUPLICATE_ID, aid, "audio id repeated in GigaSpeech.json (kept the first)")
        return None
    seen_aid.add(aid)
    per_part: dict[str, list[Utterance]] = {}
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
        first = seen_sid.first_seen_in(str(sid), aid)
        if first is not None:
            for s in wanted:
                report.drop(s, R.DUPLICATE_ID, str(sid), f"segment id repeated (first in {first})")
            continue
        text = clean_text(orig)
        for s in wanted:
            if not text:
                report.drop(s, R.EMPTY_TRANSCRIPT, sid, f"text_tn={orig!r}")
            elif is_garbage(text):
                report.drop(s, R.GARBAGE_ONLY, sid, text)
            else:
                per_part.setdefault(s, []).append(
                    Utterance(
                        id=sid,
                        recording_id=aid,
                        text=text,
                        speaker=seg.get("speaker"),
                        start=start,
                        end=end,
                        language="English",
                        custom={"orig_text": orig},
                    )
                )
    return (aid, str(corpus_dir / rel), per_part) if per_part else None


# recordings whose audio is probed together (with nj threads) before their manifests are written
_BATCH_RECORDINGS = 64


def write_manifests(
    corpus_dir: Path,
    subsets: Sequence[str],
    report: R.PrepReport,
    out_dir: Path,
    nj: int = 1,
    check: AudioCheck = "tail",
) -> dict[str, dict[str, Any]]:
    """Stage 0 for GigaSpeech: each requested subset's manifests under ``out_dir``; their index entries.

    Streams ``GigaSpeech.json`` (:func:`iter_audios`) and writes each recording's manifests as it goes
    (:class:`PartWriter`), so memory stays flat from XS to XL. Each audio file is probed once, however
    many recordings point at it.
    """
    for s in subsets:
        if s not in SUBSETS:
            raise DataPrepError(
                f"unknown GigaSpeech subset '{s}' (known: {', '.join(SUBSETS)}); fix `splits` in conf/data.yaml"
            )
    if not corpus_dir.is_dir():
        raise DataPrepError(f"corpus_dir '{corpus_dir}' does not exist")
    path = metadata_path(corpus_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writers = {s: PartWriter(out_dir, "gigaspeech", s) for s in subsets}
    probes: dict[str, AudioInfo | AudioProblem] = {}  # by audio file
    seen_aid: set[str] = set()
    seen_sid = _SeenSegmentIds()
    batch: list[tuple[str, str, dict[str, list[Utterance]]]] = []

    def flush() -> None:
        new = sorted({src for _, src, _ in batch if src not in probes})
        probes.update(probe_many(((p, p) for p in new), nj=nj, check=check))
        for aid, src, per_part in batch:
            for s, utts in per_part.items():
                writers[s].add(*assemble(s, {aid: src}, utts, {aid: probes[src]}, report))
        batch.clear()

    size = path.stat().st_size
    log.info("GigaSpeech: streaming %s (%.1f MB), probing audio with %d jobs", path, size / 1e6, nj)
    with tqdm(
        total=size, unit="B", unit_scale=True, desc="GigaSpeech.json", mininterval=10, disable=size < 1 << 28
    ) as bar:
        for n, audio in enumerate(iter_audios(path, lambda pos: bar.update(pos - bar.n))):
            item = _segments_of(n, audio, corpus_dir, subsets, report, seen_aid, seen_sid)
            if item is not None:
                batch.append(item)
            if len(batch) >= _BATCH_RECORDINGS:
                flush()
        flush()
        bar.update(size - bar.n)
    log.info("GigaSpeech: %d recordings in the metadata, %d audio files probed", len(seen_aid), len(probes))
    return {s: w.close() for s, w in writers.items()}
