"""Reading the text files users hand to the toolkit (``wav.scp``, ``text``, ``segments``, ``utt2spk``,
file lists, transcripts): the one place that numbers their lines and removes a UTF-8 byte-order mark.

Editors on Windows start UTF-8 files with a byte-order mark (``EF BB BF``); left in place it becomes part
of the first key (``\\ufeffutt1``), which then matches nothing. Every text input reader goes through
:func:`iter_raw_lines`, which removes it and logs a warning naming the file. Decoding is left to the
caller (stage 0 drops and counts a line that is not UTF-8, ``transcribe`` stops naming it):
:func:`decode_line` raises :class:`NotUtf8Error` with the file, line number and the line's first field.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

UTF8_BOM = b"\xef\xbb\xbf"


class NotUtf8Error(ValueError):
    """A line of a text input file is not UTF-8; the message names the file, line and byte."""

    def __init__(self, path: str | Path, lineno: int, key: str, err: UnicodeDecodeError) -> None:
        self.key = key
        self.detail = f"{err.reason} at byte {err.start}"
        super().__init__(f"{path}:{lineno}: line of '{key}' is not valid UTF-8 ({self.detail})")


def iter_raw_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """``(line number, bytes)`` for each line of ``path``, without its line end (``\\n`` or ``\\r\\n``).

    A UTF-8 byte-order mark at the very start is removed, with a warning naming the file."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            raw = raw.rstrip(b"\r\n")
            if lineno == 1 and raw.startswith(UTF8_BOM):
                raw = raw[len(UTF8_BOM) :]
                log.warning("%s: removed the UTF-8 byte-order mark at the start of the file", path)
            yield lineno, raw


def decode_line(raw: bytes, path: str | Path, lineno: int) -> str:
    """``raw`` as UTF-8 text; :class:`NotUtf8Error` (naming file, line and first field) when it is not."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        key = raw.split(maxsplit=1)[0].decode("utf-8", "replace") if raw.strip() else "?"
        raise NotUtf8Error(path, lineno, key, e) from None


def iter_text_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` for each non-blank line of a UTF-8 text input file (byte-order mark removed);
    :class:`NotUtf8Error` at the first line that is not UTF-8."""
    for lineno, raw in iter_raw_lines(path):
        line = decode_line(raw, path, lineno)
        if line.strip():
            yield lineno, line
