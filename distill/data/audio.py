"""Audio probing for data preparation, and 16 kHz mono loading for training.

Stage 0 must know each recording's sampling rate, channel count and length without decoding the whole
corpus: :func:`probe_file` reads the header (``soundfile.info``) and, with ``check="tail"``, decodes a
tenth of a second at each end, which catches truncated FLAC/Opus streams and non-audio files cheaply.
Truncated WAV files (whose header declares more data than the file holds) are caught by reading the
RIFF chunk sizes. ``check="full"`` decodes everything (slower, strictest). Kaldi ``cmd |`` entries are
run once and the produced bytes decoded once (:func:`probe_command`); :func:`distill.data.pipe.run_pipe` is the
one place that runs them. A path that is not a regular file (directory, FIFO, symlink loop) is refused from its
``stat`` alone (:func:`path_problem`), so a FIFO never blocks stage 0.

Problems raise :class:`AudioProblem` carrying a reason from :mod:`distill.data.report`, so the caller
can drop and count the item instead of crashing.
"""

from __future__ import annotations

import errno
import importlib.util
import io
import logging
import math
import os
import stat
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import soundfile as sf
import torch
from lhotse.audio.backend import LibsndfileBackend, audio_backend
from lhotse.audio.resampling_backend import set_current_resampling_backend
from lhotse.augmentation.torchaudio import Resample
from lhotse.tools.libsox import libsox_available
from lhotse.utils import compute_num_samples, fastcopy

from distill.data import report as R
from distill.data.pipe import DEFAULT_PIPE_TIMEOUT, PipeError, run_pipe

log = logging.getLogger(__name__)

TARGET_SR = 16000
AudioCheck = Literal["header", "tail", "full"]
_EDGE_SECONDS = 0.1


@dataclass(frozen=True)
class AudioInfo:
    """What stage 0 needs to know about one recording."""

    sampling_rate: int
    num_samples: int
    channels: int

    @property
    def duration(self) -> float:
        return self.num_samples / self.sampling_rate


class AudioProblem(Exception):
    """A recording cannot be used; ``reason`` is one of the report's reasons, ``detail`` says more."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _wav_declared_shortfall(path: Path) -> int | None:
    """Bytes missing from a RIFF/WAVE file's ``data`` chunk (``None`` when not a WAV or not knowable)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        hdr = f.read(12)
        if len(hdr) < 12 or hdr[:4] != b"RIFF" or hdr[8:12] != b"WAVE":
            return None
        while True:
            ch = f.read(8)
            if len(ch) < 8:
                return None
            cid, csize = ch[:4], int.from_bytes(ch[4:], "little")
            if cid == b"data":
                # streaming writers (sox/flac to a pipe) leave a placeholder size
                if csize in (0, 0xFFFFFFFF, 0x7FFFFFFF, 0x7FFFF000):
                    return None
                return max(0, csize - (size - f.tell()))
            f.seek(csize + (csize & 1), os.SEEK_CUR)


def _check_edges(snd: sf.SoundFile, what: str) -> None:
    n = snd.frames
    k = max(1, int(_EDGE_SECONDS * snd.samplerate))
    got = len(snd.read(min(k, n), dtype="float32", always_2d=True))
    if got < min(k, n):
        raise AudioProblem(R.TRUNCATED_AUDIO, f"{what}: could only read {got} of the first {min(k, n)} samples")
    try:
        snd.seek(max(0, n - k))
        want = n - max(0, n - k)
        got = len(snd.read(want, dtype="float32", always_2d=True))
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioProblem(
            R.TRUNCATED_AUDIO, f"{what}: header says {n} samples but the end cannot be decoded ({e})"
        ) from None
    if got < want:
        raise AudioProblem(R.TRUNCATED_AUDIO, f"{what}: header says {n} samples but the end cannot be read")


def _count_decoded(snd: sf.SoundFile) -> int:
    total = 0
    for block in snd.blocks(blocksize=1 << 16, dtype="float32", always_2d=True):
        total += len(block)
    return total


def path_problem(path: str | Path) -> AudioProblem | None:
    """Why ``path`` cannot be opened as an audio file, or None for a regular file (or a link to one).

    Looks only at ``stat``, never opens the path, so a FIFO cannot block the caller. The detail says
    what the path is: missing, a dangling symlink, a symlink loop, a directory, a FIFO, a device...
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return AudioProblem(R.NOT_REGULAR_FILE, f"'{p}' is a symlink loop")
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            if os.path.islink(p):
                return AudioProblem(R.MISSING_AUDIO, f"'{p}' is a dangling symlink (to '{os.readlink(p)}')")
            return AudioProblem(R.MISSING_AUDIO, f"'{p}' does not exist")
        return AudioProblem(R.UNREADABLE_AUDIO, f"'{p}': {e.strerror}")
    kinds = (
        (stat.S_ISDIR, "is a directory"),
        (stat.S_ISFIFO, "is a FIFO (named pipe)"),
        (stat.S_ISSOCK, "is a socket"),
        (stat.S_ISCHR, "is a character device"),
        (stat.S_ISBLK, "is a block device"),
    )
    for test, what in kinds:
        if test(st.st_mode):
            return AudioProblem(R.NOT_REGULAR_FILE, f"'{p}' {what}, not a regular file")
    if not stat.S_ISREG(st.st_mode):
        return AudioProblem(R.NOT_REGULAR_FILE, f"'{p}' is not a regular file")
    return None


def probe_file(path: str | Path, check: AudioCheck = "tail") -> AudioInfo:
    """Sampling rate, length and channels of an audio file; raises :class:`AudioProblem` when unusable."""
    p = Path(path)
    problem = path_problem(p)
    if problem is not None:
        raise problem
    if p.stat().st_size == 0:
        raise AudioProblem(R.EMPTY_FILE, str(p))
    try:
        with sf.SoundFile(str(p)) as snd:
            sr, n, ch = snd.samplerate, snd.frames, snd.channels
            if n <= 0:
                raise AudioProblem(R.NO_SAMPLES, str(p))
            if check == "tail":
                _check_edges(snd, str(p))
            elif check == "full":
                got = _count_decoded(snd)
                if got < n:
                    raise AudioProblem(R.TRUNCATED_AUDIO, f"{p}: header says {n} samples, decoded {got}")
    except AudioProblem:
        raise
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
        reason = R.UNREADABLE_AUDIO if "ecognised" in str(e) or "nknown format" in str(e) else R.TRUNCATED_AUDIO
        raise AudioProblem(reason, f"{p}: {e}") from None
    if check != "header":
        short = _wav_declared_shortfall(p)
        if short:
            raise AudioProblem(
                R.TRUNCATED_AUDIO, f"{p}: the WAV header declares {short} more bytes than the file holds"
            )
    return AudioInfo(int(sr), int(n), int(ch))


def probe_command(cmd: str, timeout: float = DEFAULT_PIPE_TIMEOUT) -> AudioInfo:
    """Run a Kaldi ``wav.scp`` pipe command (without the trailing ``|``) and measure what it writes."""
    try:
        stdout = run_pipe(cmd, timeout)
    except PipeError as e:
        raise AudioProblem(R.AUDIO_CMD_FAILED, str(e)) from None
    if not stdout:
        raise AudioProblem(R.NO_SAMPLES, f"'{cmd}' wrote nothing")
    try:
        data, sr = sf.read(io.BytesIO(stdout), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise AudioProblem(R.UNREADABLE_AUDIO, f"output of '{cmd}': {e}") from None
    if len(data) == 0:
        raise AudioProblem(R.NO_SAMPLES, f"'{cmd}' produced no samples")
    return AudioInfo(int(sr), int(data.shape[0]), int(data.shape[1]))


def probe_source(source: str, check: AudioCheck = "tail", pipe_timeout: float = DEFAULT_PIPE_TIMEOUT) -> AudioInfo:
    """A path, or a Kaldi pipe ``cmd |`` (killed after ``pipe_timeout`` seconds)."""
    s = source.strip()
    if s.endswith("|"):
        return probe_command(s[:-1].strip(), pipe_timeout)
    return probe_file(s, check)


K = TypeVar("K")


def probe_many(
    items: Iterable[tuple[K, str]],
    nj: int = 1,
    check: AudioCheck = "tail",
    progress: Callable[[Iterable], Iterable] | None = None,
    pipe_timeout: float = DEFAULT_PIPE_TIMEOUT,
) -> dict[K, AudioInfo | AudioProblem]:
    """Probe ``(key, source)`` pairs with ``nj`` threads (soundfile and subprocesses release the GIL)."""
    items = list(items)

    def one(src: str) -> AudioInfo | AudioProblem:
        try:
            return probe_source(src, check, pipe_timeout)
        except AudioProblem as e:
            return e

    with ThreadPoolExecutor(max(1, nj)) as ex:
        results = ex.map(one, [s for _, s in items])
        if progress is not None:
            results = progress(results)
        return {k: r for (k, _), r in zip(items, results)}


_resampling_ready = False


def ensure_resampling_backend() -> None:
    """Make lhotse's ``Resample`` transform usable without torchaudio.

    lhotse resamples with torchaudio, else scipy, else (when selected) libsox. When neither of the
    first two is installed we select libsox (the Debian ``sox`` package provides it).
    """
    global _resampling_ready
    if _resampling_ready:
        return
    if importlib.util.find_spec("torchaudio") is None and importlib.util.find_spec("scipy") is None:
        if not libsox_available():
            raise RuntimeError(
                "audio that is not at 16 kHz needs resampling, which needs one of: scipy "
                "(pip install scipy), torchaudio, or libsox (apt-get install sox)"
            )
        set_current_resampling_backend("sox")
    _resampling_ready = True


def _downmix(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=0) if audio.shape[0] > 1 else audio[0]
    return np.ascontiguousarray(audio)


def resample(
    x: np.ndarray, sr_in: int, sr_out: int, zeros: int = 24, rolloff: float = 0.94, beta: float = 8.6
) -> np.ndarray:
    """Band-limited resampling of a 1-D signal (Kaiser-windowed sinc, ``zeros`` zero crossings each side).

    Needs neither torchaudio nor scipy. Output sample n sits at input time ``n * sr_in / sr_out``; the
    low-pass cut-off is ``rolloff`` times the lower Nyquist frequency. Polyphase: one conv1d with stride
    ``sr_in/g`` and ``sr_out/g`` phases. The output has ``ceil(len(x) * sr_out / sr_in)`` samples.
    """
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"sampling rates must be positive, got {sr_in} -> {sr_out}")
    x = np.asarray(x, dtype=np.float32)
    if sr_in == sr_out or x.size == 0:
        return x.copy()
    g = math.gcd(sr_in, sr_out)
    up, down = sr_out // g, sr_in // g
    cut = rolloff * min(1.0, up / down)  # in units of the input Nyquist frequency
    half = int(math.ceil(zeros / cut))
    tau = np.arange(up) * down / up
    base = np.floor(tau).astype(np.int64)
    width = int(base.max()) + 2 * half + 2
    d = np.arange(width)[None, :] - half - base[:, None]  # tap offset relative to each phase's base
    t = tau[:, None] - base[:, None] - d
    u = np.clip(t / (half + 1), -1.0, 1.0)
    w = np.i0(beta * np.sqrt(1.0 - u * u)) / np.i0(beta)
    kernel = (cut * np.sinc(cut * t) * w).astype(np.float32)
    n_out = int(math.ceil(len(x) * up / down))
    n_steps = int(math.ceil(n_out / up))
    need = (n_steps - 1) * down + width
    padded = np.zeros(need + half, dtype=np.float32)
    padded[half : half + len(x)] = x
    with torch.no_grad():
        y = torch.nn.functional.conv1d(
            torch.from_numpy(padded)[None, None], torch.from_numpy(kernel)[:, None, :], stride=down
        )
    return y[0].T.reshape(-1)[:n_out].numpy().copy()


_SOUNDFILE_BACKEND = None


def _soundfile_backend():
    """lhotse's libsndfile audio backend (one instance).

    Audio files are read with it and nothing else: lhotse's default backend hands ``*.sph`` paths (and,
    with ``LHOTSE_LEGACY_OPUS_LOADING=1``, ``*.opus`` paths) to a shell command line, where a file name
    with shell metacharacters would run as code. Stage 0 accepts only files soundfile can read, so this
    loses nothing. Kaldi ``cmd |`` sources still run their command (that is their format).
    """
    global _SOUNDFILE_BACKEND
    if _SOUNDFILE_BACKEND is None:
        _SOUNDFILE_BACKEND = LibsndfileBackend()
    return _SOUNDFILE_BACKEND


def load_cut_audio(cut) -> np.ndarray:
    """A cut's samples as float32 mono at the cut's sampling rate (channels are averaged).

    Recordings stage 0 marked for resampling are read at their own rate, down-mixed, then resampled
    with :func:`resample`: lhotse's own Resample transform needs torchaudio or scipy, and
    its libsox fallback garbles multi-channel audio (it hands libsox strided channel views).
    Files are decoded by soundfile only (see :func:`_soundfile_backend`).
    """
    with audio_backend(_soundfile_backend()):
        try:
            return _load_cut_audio(cut)
        except Exception as e:  # noqa: BLE001 - any decoder error becomes one readable message
            raise AudioLoadError(f"cut '{cut.id}': {_root_reason(e)}") from e


class AudioLoadError(ValueError):
    """A cut's audio cannot be read; the message names the cut and the decoder's reason."""


def _root_reason(e: BaseException) -> str:
    """The innermost readable cause of a loader error, on one line.

    lhotse re-raises decoder errors as ``type(e)(message)`` with call context appended, and nested
    wrappers can make soundfile's error unprintable (its ``str`` then raises ``TypeError``); the
    original error at the bottom of the chain says what is wrong with the file.
    """
    chain: list[BaseException] = []
    x: BaseException | None = e
    while x is not None and x not in chain:
        chain.append(x)
        x = x.__cause__ or x.__context__
    for x in reversed(chain):
        try:
            text = str(x)
        except Exception:  # noqa: BLE001 - an unprintable wrapper: try the next one out
            continue
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(("[extra info]", "Set LHOTSE_"))]
        if lines:
            return f"{type(x).__name__}: {' '.join(' '.join(lines).split())}"
    return type(e).__name__


def _load_cut_audio(cut) -> np.ndarray:
    rec = getattr(cut, "recording", None)
    tfs = list(rec.transforms or []) if rec is not None else []
    if not tfs:
        return _downmix(cut.load_audio())
    if len(tfs) == 1 and isinstance(tfs[0], Resample) and hasattr(cut, "channel"):
        src_sr, dst_sr = tfs[0].source_sampling_rate, tfs[0].target_sampling_rate
        src_rec = fastcopy(
            rec, transforms=None, sampling_rate=src_sr, num_samples=compute_num_samples(rec.duration, src_sr)
        )
        mono = _downmix(src_rec.load_audio(channels=cut.channel, offset=cut.start, duration=cut.duration))
        out = resample(mono, src_sr, dst_sr)
        n = compute_num_samples(cut.duration, dst_sr)
        if len(out) < n:
            out = np.pad(out, (0, n - len(out)))
        return np.ascontiguousarray(out[:n], dtype=np.float32)
    ensure_resampling_backend()
    return _downmix(cut.load_audio())
