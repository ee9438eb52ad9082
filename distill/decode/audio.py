"""Input audio for transcription: file lists and Kaldi ``wav.scp``, 16 kHz mono float32.

``wav.scp`` values are paths or ``cmd |`` pipes; only those pipe commands run through a shell
(that is their format). Other audio is read with soundfile, down-mixed by averaging the channels and
resampled to 16 kHz with :func:`distill.data.audio.resample` (Kaiser-windowed sinc; no scipy/torchaudio needed).
"""
from __future__ import annotations

import io
import subprocess
from pathlib import Path
from typing import Optional

import numpy as np

from distill.data.audio import resample

__all__ = ["AudioError", "resample", "read_audio", "read_wav_scp", "read_wav_list"]

TARGET_SR = 16000


class AudioError(ValueError):
    """An utterance's audio cannot be read or used (the message names it)."""


def _decode_bytes(data: bytes, what: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    try:
        audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as e:
        raise AudioError(f"{what}: cannot decode audio: {e}") from None
    return audio, int(sr)


def read_audio(source: str, allow_pipe: bool = False, timeout: float = 600.0) -> np.ndarray:
    """Samples of a path, or (``allow_pipe``, for wav.scp values) a ``cmd |`` pipe, as 16 kHz mono
    float32 [S]."""
    import soundfile as sf

    s = source.strip() if allow_pipe else source
    if allow_pipe and s.endswith("|"):
        cmd = s[:-1].strip()
        try:
            proc = subprocess.run(cmd, shell=True, capture_output=True, timeout=timeout)  # noqa: S602 (wav.scp pipe)
        except subprocess.TimeoutExpired:
            raise AudioError(f"'{cmd}' did not finish in {timeout:.0f} s") from None
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            raise AudioError(f"'{cmd}' exited with status {proc.returncode}: {err[-1] if err else ''}")
        if not proc.stdout:
            raise AudioError(f"'{cmd}' wrote no audio")
        audio, sr = _decode_bytes(proc.stdout, f"output of '{cmd}'")
    else:
        p = Path(s)
        if not p.is_file():
            raise AudioError(f"audio file '{p}' does not exist")
        try:
            audio, sr = sf.read(str(p), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as e:
            raise AudioError(f"{p}: cannot decode audio: {e}") from None
    if audio.shape[0] == 0:
        raise AudioError(f"{s}: no samples")
    mono = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    if not np.isfinite(mono).all():
        raise AudioError(f"{s}: audio contains NaN or inf")
    return resample(mono, sr, TARGET_SR) if sr != TARGET_SR else np.ascontiguousarray(mono)


def read_wav_scp(path: str | Path) -> list[tuple[str, str]]:
    """``(utt_id, source)`` pairs of a Kaldi ``wav.scp``; a malformed line or repeated id raises
    AudioError naming the line."""
    p = Path(path)
    if not p.is_file():
        raise AudioError(f"wav.scp '{p}' does not exist")
    out: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2:
            raise AudioError(f"{p}:{lineno}: expected '<utt-id> <path or command |>', got {line!r}")
        utt, src = parts
        if utt in seen:
            raise AudioError(f"{p}:{lineno}: utterance id '{utt}' already used on line {seen[utt]}")
        seen[utt] = lineno
        out.append((utt, src))
    return out


def read_wav_list(paths: list[str], list_file: Optional[str | Path] = None) -> list[tuple[str, str]]:
    """``(utt_id, path)`` for audio paths given directly and/or in a list file (one path a line);
    the id is the file name without its extension, whitespace replaced by ``_`` (Kaldi ids have none).
    Two files with the same id raise AudioError."""
    items = list(paths)
    if list_file is not None:
        lp = Path(list_file)
        if not lp.is_file():
            raise AudioError(f"file list '{lp}' does not exist")
        items += [ln.strip() for ln in lp.read_text(encoding="utf-8").splitlines() if ln.strip()]
    out: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for item in items:
        utt = "_".join(Path(item).stem.split()) or "_"
        if utt in seen:
            raise AudioError(f"'{item}' and '{seen[utt]}' give the same utterance id '{utt}'")
        seen[utt] = item
        out.append((utt, item))
    return out
