"""Stage 6's test sets: cuts and validated references, audio loading that records failures instead of
stopping, batches sorted by duration, the speed subset, and long cuts read in pieces."""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lhotse import CutSet

from distill.data.audio import load_cut_audio, resample
from distill.data.manifests import read_cuts_index
from distill.decode.config import SAMPLE_RATE
from distill.scoring import validate_refs

log = logging.getLogger("distill.decode.evaluate")  # stage 6's log name (it was one module)

__all__ = [
    "TestSet",
    "read_test_sets",
    "load_audio",
    "CutAudio",
    "CutReadError",
    "record_failure",
    "note_short",
    "plan_batches",
    "load_batches",
    "speed_subset",
]


@dataclasses.dataclass
class TestSet:
    """A test part's cuts (file order), references and the utterances whose audio failed to load."""

    name: str
    path: Path
    cuts: list
    refs: dict[str, str]
    failed: dict[str, str] = dataclasses.field(default_factory=dict)  # utt id -> reason
    short: set[str] = dataclasses.field(default_factory=set)  # shorter than one frame: empty hypotheses

    @property
    def seconds(self) -> float:
        return float(sum(c.duration for c in self.cuts))

    def long_cuts(self, max_seconds: float) -> list:
        """The cuts longer than ``max_seconds`` (decoded in pieces), in file order."""
        return [c for c in self.cuts if c.duration > max_seconds]


def _read_cut_dicts(path: Path) -> list[dict]:
    """The cut dicts of a ``.jsonl[.gz]`` file. Invalid UTF-8 survives as surrogate escapes, so that
    :func:`distill.scoring.validate_refs` can name the utterance instead of the reader failing."""
    opener = gzip.open if path.suffix == ".gz" else open
    out = []
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.decode("utf-8", errors="surrogateescape").strip()
            if not line:
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not a JSON cut: {e}") from None
            if not isinstance(d, dict) or "id" not in d:
                raise ValueError(f"{path}:{lineno}: not a cut (no 'id')")
            out.append(d)
    return out


def read_test_sets(
    lang_dir: str | Path, names: Sequence[str] | None = None, max_utts: int | None = None, normalize: str | None = None
) -> dict[str, TestSet]:
    """Stage 1's test parts (``<lang_dir>/cuts.yaml``), references validated: a reference that is not
    UTF-8 text or is empty (after ``normalize``) raises ValueError naming the test set and utterance."""
    idx = read_cuts_index(lang_dir).get("test")
    if not idx or not isinstance(idx, dict):
        raise ValueError(f"{Path(lang_dir) / 'cuts.yaml'} lists no test sets: run stage 1 with test parts")
    chosen = list(idx) if names is None else list(names)
    unknown = [n for n in chosen if n not in idx]
    if unknown:
        raise ValueError(f"test set(s) {unknown} not in {Path(lang_dir) / 'cuts.yaml'} (has: {', '.join(idx)})")
    out: dict[str, TestSet] = {}
    for name in chosen:
        path = Path(idx[name])
        dicts = _read_cut_dicts(path)
        if max_utts is not None:
            dicts = dicts[:max_utts]
        if not dicts:
            raise ValueError(f"test set '{name}' ({path}) has no utterances")
        refs: dict[str, str] = {}
        for d in dicts:
            if d["id"] in refs:
                raise ValueError(f"test set '{name}' ({path}): utterance '{d['id']}' appears twice")
            sups = d.get("supervisions") or []
            refs[d["id"]] = " ".join(str(s.get("text") or "") for s in sups)
        try:
            validate_refs(refs, normalize)
        except (ValueError, TypeError) as e:
            raise ValueError(f"test set '{name}' ({path}): {e}") from None
        out[name] = TestSet(name, path, list(CutSet.from_dicts(dicts)), refs)
    return out


def load_audio(cut: Any) -> np.ndarray:
    """16 kHz mono float32 samples of a cut; raises on any problem (no samples, NaN, unreadable)."""
    wav = load_cut_audio(cut)
    if cut.sampling_rate != SAMPLE_RATE:
        wav = resample(wav, int(cut.sampling_rate), SAMPLE_RATE)
    wav = np.ascontiguousarray(wav, dtype=np.float32)
    if wav.size == 0:
        raise ValueError("no samples")
    if not np.isfinite(wav).all():
        raise ValueError("audio contains NaN or inf")
    return wav


def _load(ts: TestSet, cut: Any) -> np.ndarray | None:
    try:
        return load_audio(cut)
    except Exception as e:  # noqa: BLE001 - any loader error: count the utterance as all-deletion, go on
        record_failure(ts, cut.id, e)
        return None


def record_failure(ts: TestSet, uid: str, e: BaseException) -> None:
    """Record (once, with a warning) that an utterance's audio cannot be loaded: scored as all deletions."""
    if uid not in ts.failed:
        # lhotse appends call context ("[extra info] ...") and a hint; keep the causes, on one line
        lines = [ln for ln in str(e).splitlines() if not ln.startswith(("[extra info]", "Set LHOTSE_"))]
        msg = " ".join(" ".join(lines).split())
        ts.failed[uid] = f"{type(e).__name__}: {msg[:400]}{'...' if len(msg) > 400 else ''}"
        log.warning(
            "test set %s: audio of utterance '%s' cannot be loaded (%s); it is scored as all deletions",
            ts.name,
            uid,
            ts.failed[uid],
        )


def note_short(ts: TestSet, uids: Sequence[str], lengths: Any) -> None:
    """Record (once, with a warning) the utterances with no output frame: their hypotheses are empty."""
    for uid, n in zip(uids, lengths.tolist()):
        if n == 0 and uid not in ts.short:
            ts.short.add(uid)
            log.warning("test set %s: utterance '%s' is shorter than one frame: its hypothesis is empty", ts.name, uid)


class CutReadError(Exception):
    """A piece of a long cut's audio cannot be read (the cause is chained)."""


class CutAudio:
    """A test cut read in pieces (a :class:`~distill.decode.long_audio.SampleSource`): each piece is the
    cut truncated to the range plus 20 ms each side (so that a resampled recording has no edge effects at
    piece boundaries), loaded by :func:`load_audio`; never the whole cut at once."""

    MARGIN = 320

    def __init__(self, cut: Any) -> None:
        self.cut = cut
        self.num_samples = int(round(cut.duration * SAMPLE_RATE))

    def read(self, start: int, n: int) -> np.ndarray:
        n = max(0, min(n, self.num_samples - start))
        if n == 0:
            return np.zeros(0, np.float32)
        a, b = max(0, start - self.MARGIN), min(self.num_samples, start + n + self.MARGIN)
        try:
            piece = self.cut.truncate(offset=a / SAMPLE_RATE, duration=(b - a) / SAMPLE_RATE, preserve_id=True)
            w = load_audio(piece)
        except Exception as e:  # noqa: BLE001 - any loader error: the utterance counts as unreadable
            raise CutReadError(f"{type(e).__name__}: {e}") from e
        return np.ascontiguousarray(w[start - a : start - a + n])


def plan_batches(ts: TestSet, batch_seconds: float, max_batch: int, max_seconds: float = math.inf) -> list[list]:
    """Groups of cuts, longest first, each at most ``batch_seconds`` of padded audio and ``max_batch``
    cuts (a longer cut is a batch of its own); cuts over ``max_seconds`` are left out (long recordings,
    decoded in pieces)."""
    groups: list[list] = []
    for cut in sorted((c for c in ts.cuts if c.duration <= max_seconds), key=lambda c: c.duration, reverse=True):
        g = groups[-1] if groups else None
        # sorted longest first: a group's first cut is its longest
        if g is None or len(g) + 1 > max_batch or g[0].duration * (len(g) + 1) > batch_seconds:
            groups.append([cut])
        else:
            g.append(cut)
    return groups


def load_batches(ts: TestSet, groups: list[list]) -> Iterator[list[tuple[str, np.ndarray]]]:
    """Loaded (id, samples) batches of ``groups``; utterances whose audio fails are left out (recorded)."""
    for group in groups:
        batch = [(c.id, w) for c in group if (w := _load(ts, c)) is not None]
        if batch:
            yield batch


def speed_subset(
    ts: TestSet, max_utts: int, max_seconds: float, min_samples: int = 0, max_utt_seconds: float = math.inf
) -> list[tuple[str, np.ndarray]]:
    """The first utterances of ``ts`` (file order, loadable ones) up to ``max_utts`` / ``max_seconds``
    of audio (at least one). Utterances shorter than ``min_samples`` (no output frame) or longer than
    ``max_utt_seconds`` (decoded in pieces) are not timed."""
    out: list[tuple[str, np.ndarray]] = []
    total = 0.0
    for cut in ts.cuts:
        if cut.duration > max_utt_seconds:
            continue
        if len(out) >= max_utts or (out and total + cut.duration > max_seconds):
            break
        w = _load(ts, cut)
        if w is None or len(w) < min_samples:
            continue
        out.append((cut.id, w))
        total += len(w) / SAMPLE_RATE
    return out
