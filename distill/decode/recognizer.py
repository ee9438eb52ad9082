"""The Python API: transcribe audio with a trained model in three lines, whole or as it arrives.

    from distill import Recognizer
    r = Recognizer.from_pretrained("exp/stage2/model")        # a model dir with tokens.txt
    print(r.transcribe("x.wav").text)                          # .words: [Word(word, start_s, end_s), ...]

    s = r.stream()                                             # a streaming student only
    for piece in pieces:                                       # 16 kHz mono float32, any size
        for ev in s.accept(piece):
            print("partial:", ev.text)
    print(s.finish().words)

Everything goes through :func:`distill.decode.transcribe.load` and its :class:`~distill.decode.transcribe.Loaded`
methods, the code that ``python -m distill.bin.transcribe`` runs, so the text is the command's: greedy
CTC by default, WFST one-best with ``graph=`` (an ``HLG.fst`` as ``--graph``); long recordings in bounded
memory. Word times come from the CTC frames (:mod:`distill.decode.timestamps`). Unlike the command,
which reports a bad file and goes on, the API raises (:class:`~distill.decode.audio.AudioError`,
``ValueError``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from distill.decode.audio import TARGET_SR, AudioFile, resample
from distill.decode.timestamps import Decoded, PieceDecoder, Word
from distill.decode.transcribe import Loaded, NotStreamingError, TranscribeOptions, load

__all__ = ["NotStreamingError", "Recognizer", "Result", "Stream", "StreamEvent", "Word"]

# TranscribeOptions fields that from_pretrained passes on (the rest describe the command's inputs/outputs)
_OPTIONS = (
    "lang_dir",
    "words",
    "beam",
    "max_active",
    "min_active",
    "acoustic_scale",
    "nj",
    "batch_size",
    "max_whole_seconds",
    "window_seconds",
    "window_overlap_seconds",
)


@dataclasses.dataclass
class Result:
    """One utterance: its text and its words with start/end times (seconds)."""

    text: str
    words: list[Word]
    duration_s: float


@dataclasses.dataclass
class StreamEvent:
    """A result while streaming: ``final`` False gives the text so far (it may still be revised by a
    WFST decoder, never by greedy decoding), True the final text with its words."""

    text: str
    final: bool
    words: list[Word] = dataclasses.field(default_factory=list)


def _mono16k(x: Any, sample_rate: int) -> np.ndarray:
    a = np.asarray(x, dtype=np.float32)
    if a.ndim == 2:  # [S, channels] as soundfile reads it, or [channels, S]
        a = a.mean(axis=1 if a.shape[0] >= a.shape[1] else 0)
    if a.ndim != 1:
        raise ValueError(f"audio must be mono samples [S] (or [S, channels]), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("audio contains NaN or inf")
    if sample_rate != TARGET_SR:
        a = resample(a, sample_rate, TARGET_SR)
    return np.ascontiguousarray(a, dtype=np.float32)


class Recognizer:
    """A loaded model with its tokens and decoder; build it with :meth:`from_pretrained`."""

    def __init__(self, loaded: Loaded) -> None:
        self._lo = loaded

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike,
        *,
        graph: str | os.PathLike | None = None,
        device: str = "cpu",
        num_threads: int = 0,
        **options: Any,
    ) -> Recognizer:
        """Load ``model`` (an HF model directory, e.g. one written by training or ``package_model``, or a
        fairseq ``.pt``). ``graph``: decode with this WFST (``HLG.fst``) instead of greedy. ``options``:
        ``lang_dir`` (tokens, when the model directory carries none), ``words``, ``beam``,
        ``max_active``, ``min_active``, ``acoustic_scale``, ``nj``, ``batch_size`` and the long-audio
        settings, as ``distill.bin.transcribe`` names them (same defaults)."""
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(_OPTIONS)}")
        opts = TranscribeOptions(
            model=str(model),
            graph=None if graph is None else str(graph),
            device=device,
            num_threads=num_threads,
            **{k: str(v) if k in ("lang_dir", "words") and v is not None else v for k, v in options.items()},
        )
        opts.long_audio()  # ValueError on inconsistent long-audio settings
        return cls(load(opts))

    @property
    def streaming(self) -> bool:
        """Whether the model was trained for streaming (its config's ``chunk_frames`` > 0)."""
        return self._lo.model.config.chunk_frames > 0

    @property
    def frame_shift_s(self) -> float:
        """Seconds between the model's output frames (word times are multiples of it)."""
        return self._lo.frame_shift_s

    def _result(self, d: Decoded, num_samples: int) -> Result:
        return Result(self._lo.text(d.symbols), self._lo.words(d), num_samples / TARGET_SR)

    def _decode_arrays(self, waves: Sequence[np.ndarray]) -> list[Result]:
        out: list[Result | None] = [None] * len(waves)
        rf, bs = self._lo.model.config.receptive_field, self._lo.opts.batch_size
        todo = [i for i, w in enumerate(waves) if len(w) >= rf]
        for i, w in enumerate(waves):
            if len(w) < rf:  # shorter than one frame: no output (the command warns and prints an empty line)
                out[i] = Result("", [], len(w) / TARGET_SR)
        for k in range(0, len(todo), bs):
            idx = todo[k : k + bs]
            for i, d in zip(idx, self._lo.decode_waves([waves[i] for i in idx])):
                out[i] = self._result(d, len(waves[i]))
        return out  # type: ignore[return-value]

    def _decode_path(self, path: str) -> Result | np.ndarray:
        """A file's result when it is long (decoded in bounded memory), else its samples."""
        f = AudioFile(path)
        with f:
            if self._lo.opts.long_audio().is_long(f.num_samples):
                d, _ = self._lo.decode_long(f)
                return self._result(d, f.num_samples)
            return f.read_all()

    def transcribe(self, audio: Any, sample_rate: int = TARGET_SR) -> Result | list[Result]:
        """Transcribe a path, a list of paths, or samples (a float numpy array at ``sample_rate``,
        resampled to 16 kHz and averaged to mono; or a list of them). One input gives a :class:`Result`,
        a list a list of them, in order."""
        if isinstance(audio, (list, tuple)):
            items = list(audio)
            single = False
        else:
            items, single = [audio], True
        got: list[Result | np.ndarray] = []
        for a in items:
            if isinstance(a, (str, os.PathLike)):
                got.append(self._decode_path(os.fspath(a)))
            else:
                got.append(_mono16k(a, sample_rate))
        arrays = [i for i, g in enumerate(got) if isinstance(g, np.ndarray)]
        for i, r in zip(arrays, self._decode_arrays([got[i] for i in arrays])):  # type: ignore[misc]
            got[i] = r
        return got[0] if single else got  # type: ignore[return-value]

    def stream(self, chunk_frames: int | None = None, left_chunks: int | None = None) -> Stream:
        """A new stream (one utterance) with the model's own chunk and left context unless given. A model
        not trained for streaming raises :class:`~distill.decode.transcribe.NotStreamingError`."""
        return Stream(self._lo, self._lo.streaming_recognizer(chunk_frames, left_chunks))

    def close(self) -> None:
        """Stop the WFST worker processes, if any."""
        self._lo.close()

    def __enter__(self) -> Recognizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Stream:
    """One utterance recognised as its audio arrives: :meth:`accept` 16 kHz mono float32 pieces of any
    size, then :meth:`finish`. The chunk steps, and greedy/WFST decoding of each chunk's scores, are
    those of ``transcribe --streaming`` (:class:`~distill.models.streaming.StreamingRecognizer`)."""

    def __init__(self, loaded: Loaded, recognizer: Any) -> None:
        self._lo, self._rec = loaded, recognizer
        self._dec = PieceDecoder(loaded.decoder)
        self._text = ""
        self._samples = 0
        self.finished = False

    @property
    def text(self) -> str:
        """The text so far."""
        return self._text

    def accept(self, samples: Any) -> list[StreamEvent]:
        """Add samples; returns a partial :class:`StreamEvent` when the text changed (else nothing)."""
        if self.finished:
            raise RuntimeError("stream already finished; start a new one with Recognizer.stream()")
        x = _mono16k(samples, TARGET_SR)
        self._samples += len(x)
        scores = self._rec.accept_waveform(x)
        if not len(scores):
            return []
        self._dec.accept(scores)
        text = self._lo.text(self._dec.partial())
        if text == self._text:
            return []
        self._text = text
        return [StreamEvent(text, False)]

    def finish(self) -> StreamEvent:
        """The end of the audio: the final text with its words."""
        if self.finished:
            raise RuntimeError("stream already finished; start a new one with Recognizer.stream()")
        self.finished = True
        self._dec.accept(self._rec.finalize())
        d = self._dec.finish()
        self._text = self._lo.text(d.symbols)
        return StreamEvent(self._text, True, self._lo.words(d))
