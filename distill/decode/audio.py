"""Input audio for transcription: file lists and Kaldi ``wav.scp``, 16 kHz mono float32.

``wav.scp`` values are paths or ``cmd |`` pipes; only those pipe commands run through a shell
(that is their format), each killed with its children when it runs past the pipe timeout. Other
audio is read with soundfile, down-mixed by averaging the channels and resampled to 16 kHz with
:func:`distill.data.audio.resample` (Kaiser-windowed sinc; no scipy/torchaudio needed).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from distill.data.audio import path_problem, resample
from distill.data.pipe import DEFAULT_PIPE_TIMEOUT, PipeError, run_pipe
from distill.data.textfile import NotUtf8Error, iter_text_lines

__all__ = ["AudioError", "AudioFile", "resample", "read_audio", "read_wav_scp", "read_wav_list"]

TARGET_SR = 16000


class AudioError(ValueError):
    """An utterance's audio cannot be read or used (the message names it)."""


def _pipe_bytes(cmd: str, timeout: float) -> bytes:
    """The standard output of a wav.scp ``cmd |`` entry (:func:`distill.data.pipe.run_pipe`)."""
    try:
        data = run_pipe(cmd, timeout)
    except PipeError as e:
        raise AudioError(str(e)) from None
    if not data:
        raise AudioError(f"'{cmd}' wrote no audio")
    return data


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered non-blank lines of a user text file (wav.scp, file list); a line that is not UTF-8
    raises AudioError naming the file and line."""
    try:
        yield from iter_text_lines(path)
    except NotUtf8Error as e:
        raise AudioError(str(e)) from None


class AudioFile:
    """One opened audio source: its length at 16 kHz (``num_samples``, from the header) and any range
    of it as 16 kHz mono float32 (:meth:`read`), decoded block by block, so that a long recording is
    never in memory whole. A file is read from disk; a ``cmd |`` pipe's output (encoded bytes) is held
    in memory. Use as a context manager (or :meth:`close`)."""

    def __init__(self, source: str, allow_pipe: bool = False, timeout: float = DEFAULT_PIPE_TIMEOUT) -> None:

        s = source.strip() if allow_pipe else source
        if allow_pipe and s.endswith("|"):
            cmd = s[:-1].strip()
            self.name = f"output of '{cmd}'"
            handle: Any = io.BytesIO(_pipe_bytes(cmd, timeout))
        else:
            p = Path(s)
            problem = path_problem(p)  # stat only: a FIFO or a directory is named, never opened
            if problem is not None:
                raise AudioError(f"audio file {problem.detail}")
            self.name = str(p)
            handle = str(p)
        try:
            self._snd = sf.SoundFile(handle)
        except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as e:
            raise AudioError(f"{self.name}: cannot decode audio: {e}") from None
        self.sample_rate = int(self._snd.samplerate)
        frames = max(0, int(self._snd.frames))
        # resample() gives ceil(n * 16000 / sr) samples
        self.num_samples = frames if self.sample_rate == TARGET_SR else -(-frames * TARGET_SR // self.sample_rate)
        if frames == 0:
            self.close()
            raise AudioError(f"{self.name}: no samples")

    @property
    def seconds(self) -> float:
        return self.num_samples / TARGET_SR

    def close(self) -> None:
        self._snd.close()

    def __enter__(self) -> AudioFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _native(self, start: int, n: int) -> np.ndarray:
        """Mono float32 samples [start, start+n) at the file's own rate (fewer at the end)."""

        try:
            self._snd.seek(start)
            audio = self._snd.read(n, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as e:
            raise AudioError(f"{self.name}: cannot decode audio at {start / self.sample_rate:.2f} s: {e}") from None
        mono = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
        if not np.isfinite(mono).all():
            raise AudioError(f"{self.name}: audio contains NaN or inf (near {start / self.sample_rate:.2f} s)")
        return np.ascontiguousarray(mono, dtype=np.float32)

    def read_all(self) -> np.ndarray:
        """The whole recording, 16 kHz mono float32 [S]."""
        mono = self._native(0, -1)
        if mono.size == 0:
            raise AudioError(f"{self.name}: no samples")
        return resample(mono, self.sample_rate, TARGET_SR) if self.sample_rate != TARGET_SR else mono

    def read(self, start: int, n: int) -> np.ndarray:
        """16 kHz samples [start, start+n) (fewer at the end). Another rate is resampled from the
        native samples of the range plus a margin wider than the resampler's kernel (24 zero crossings:
        under 20 ms at any rate >= 1.3 kHz), starting on a polyphase period, so the samples equal those
        of :meth:`read_all` (to float rounding)."""
        n = max(0, min(n, self.num_samples - start))
        if n == 0:
            return np.zeros(0, np.float32)
        sr = self.sample_rate
        if sr == TARGET_SR:
            return self._native(start, n)
        g = math.gcd(sr, TARGET_SR)
        up, down = TARGET_SR // g, sr // g  # output k*up sits on input sample k*down
        margin = (math.ceil(0.02 * sr / down) + 2) * down
        i0 = max(0, (start // up) * down - margin)
        i1 = -(-(start + n) // up) * down + margin
        y = resample(self._native(i0, i1 - i0), sr, TARGET_SR)
        off = start - i0 * up // down
        return np.ascontiguousarray(y[off : off + n])


def read_audio(source: str, allow_pipe: bool = False, timeout: float = DEFAULT_PIPE_TIMEOUT) -> np.ndarray:
    """Samples of a path, or (``allow_pipe``, for wav.scp values) a ``cmd |`` pipe, as 16 kHz mono
    float32 [S]."""
    with AudioFile(source, allow_pipe, timeout) as f:
        return f.read_all()


def read_wav_scp(path: str | Path) -> list[tuple[str, str]]:
    """``(utt_id, source)`` pairs of a Kaldi ``wav.scp``; a malformed or non-UTF-8 line or a repeated id
    raises AudioError naming the file and line."""
    p = Path(path)
    if not p.is_file():
        raise AudioError(f"wav.scp '{p}' does not exist")
    out: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for lineno, line in _text_lines(p):
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2:
            raise AudioError(f"{p}:{lineno}: expected '<utt-id> <path or command |>', got {line!r}")
        utt, src = parts
        if utt in seen:
            raise AudioError(f"{p}:{lineno}: utterance id '{utt}' already used on line {seen[utt]}")
        seen[utt] = lineno
        out.append((utt, src))
    return out


def read_wav_list(paths: list[str], list_file: str | Path | None = None) -> list[tuple[str, str]]:
    """``(utt_id, path)`` for audio paths given directly and/or in a list file (one path a line);
    the id is the file name without its extension, whitespace replaced by ``_`` (Kaldi ids have none).
    Two files with the same id raise AudioError."""
    items = list(paths)
    if list_file is not None:
        lp = Path(list_file)
        if not lp.is_file():
            raise AudioError(f"file list '{lp}' does not exist")
        items += [ln.strip() for _, ln in _text_lines(lp)]
    out: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for item in items:
        utt = "_".join(Path(item).stem.split()) or "_"
        if utt in seen:
            raise AudioError(f"'{item}' and '{seen[utt]}' give the same utterance id '{utt}'")
        seen[utt] = item
        out.append((utt, item))
    return out
