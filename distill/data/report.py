"""Bookkeeping of what data preparation dropped or changed, and why.

Every stage that filters data records each dropped item (with its reason) and each item it changed
(a *note*: resampled, down-mixed, characters mapped to ``<unk>``...) in a :class:`PrepReport`. The
report prints a one-line summary per split (``kept N, dropped M: reason → count, ...``), logs the
first few offending ids per reason with the file they came from, and is written as JSON next to the
stage's outputs, so that no utterance disappears silently.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Reasons used across the stages (kept as constants so that tests and summaries agree).
MISSING_AUDIO = "missing audio file"
NOT_REGULAR_FILE = "audio path is not a regular file (directory, FIFO, device, symlink loop)"
EMPTY_FILE = "empty audio file (0 bytes)"
UNREADABLE_AUDIO = "unreadable audio (not a recognised audio format or corrupt)"
TRUNCATED_AUDIO = "truncated audio"
NO_SAMPLES = "audio has no samples"
AUDIO_CMD_FAILED = "wav.scp command failed"
EMPTY_TRANSCRIPT = "empty transcript"
NOT_UTF8 = "text not UTF-8"
DUPLICATE_ID = "duplicate id"
NO_AUDIO_ENTRY = "id in text but not in wav.scp"
NO_TRANSCRIPT = "id in wav.scp but not in text"
BAD_LINE = "malformed line"
BAD_SEGMENT = "segment outside its recording"
BAD_SEGMENT_TIME = "segment start or end not a finite number"
GARBAGE_ONLY = "only garbage tags"
EMPTY_AFTER_NORM = "empty after text normalisation (e.g. only punctuation)"
TOO_SHORT = "shorter than min_duration"
TOO_LONG = "longer than max_duration"
CTC_NO_FIT = "more tokens than output frames (a CTC path cannot fit)"
# notes (the item is kept)
NOTE_RESAMPLED = "resampled to 16 kHz"
NOTE_DOWNMIXED = "down-mixed to mono"
NOTE_UNK = "characters mapped to <unk>"
NOTE_TAGS_REMOVED = "garbage tags removed inside an utterance"
NOTE_NO_SPEAKER = "id missing from utt2spk (speaker = utterance id)"

_MAX_EXAMPLES = 20
_MAX_LOGGED = 5


class PrepReport:
    """Counts of kept/dropped items per split, with reasons, examples and notes."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.kept: Counter[str] = Counter()
        self.dropped: dict[str, Counter[str]] = defaultdict(Counter)
        self.notes: dict[str, Counter[str]] = defaultdict(Counter)
        self.examples: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        self.extra: dict[str, dict[str, Any]] = defaultdict(dict)
        self._split_order: list[str] = []

    def _touch(self, split: str) -> None:
        if split not in self._split_order:
            self._split_order.append(split)

    def _example(self, split: str, reason: str, item: str, detail: str, level: int) -> None:
        ex = self.examples[split][reason]
        text = f"{item}: {detail}" if detail else item
        if len(ex) < _MAX_EXAMPLES:
            ex.append(text)
        n = self.dropped[split][reason] + self.notes[split][reason]
        if n <= _MAX_LOGGED:
            log.log(level, "[%s] %s — %s", split, reason, text)
        elif n == _MAX_LOGGED + 1:
            log.log(level, "[%s] %s — more cases follow; all are counted in the summary", split, reason)

    def drop(self, split: str, reason: str, item: str, detail: str = "") -> None:
        """Record that ``item`` (an utterance/recording id) was dropped from ``split`` for ``reason``."""
        self._touch(split)
        self.dropped[split][reason] += 1
        self._example(split, reason, item, detail, logging.WARNING)

    def note(self, split: str, reason: str, item: str, detail: str = "") -> None:
        """Record a change made to a kept item (resampled, down-mixed, ...)."""
        self._touch(split)
        self.notes[split][reason] += 1
        self._example(split, reason, item, detail, logging.INFO)

    def keep(self, split: str, n: int = 1) -> None:
        self._touch(split)
        self.kept[split] += n

    def num_dropped(self, split: str | None = None) -> int:
        if split is not None:
            return sum(self.dropped[split].values())
        return sum(sum(c.values()) for c in self.dropped.values())

    def summary_line(self, split: str) -> str:
        """``split: kept N, dropped M: reason → count, ...; notes: reason → count``."""
        d = self.dropped[split]
        line = f"{split}: kept {self.kept[split]}, dropped {sum(d.values())}"
        if d:
            line += ": " + ", ".join(f"{r} → {c}" for r, c in d.most_common())
        n = self.notes[split]
        if n:
            line += "; notes: " + ", ".join(f"{r} → {c}" for r, c in n.most_common())
        return line

    def log_summary(self) -> None:
        for split in self._split_order:
            log.info("%s summary — %s", self.stage, self.summary_line(split))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"stage": self.stage, "splits": {}}
        for split in self._split_order:
            out["splits"][split] = {
                "kept": self.kept[split],
                "dropped": sum(self.dropped[split].values()),
                "dropped_by_reason": dict(self.dropped[split]),
                "notes": dict(self.notes[split]),
                "examples": {k: list(v) for k, v in self.examples[split].items()},
                **self.extra[split],
            }
        return out

    def write_json(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
