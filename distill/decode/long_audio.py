"""Long recordings (podcasts, meetings) in bounded memory, for ``transcribe`` and stage 6.

A recording longer than ``max_whole_seconds`` is never read or decoded whole (attention memory grows
with the square of the length, the audio and the scores linearly). Its audio is read in blocks from its
source (:class:`SampleSource`: :class:`distill.decode.audio.AudioFile`, a stage-6 cut) and its scores
come out as a sequence of ``[n, V]`` pieces that :func:`decode_pieces` decodes incrementally (greedy
CTC with :class:`~distill.decode.greedy.GreedyStream`, WFST with :class:`~distill.decode.wfst.WfstStream`:
the stitched frame scores are decoded as one utterance, with the same best path as decoding them at once).

* **Streaming model** (``chunk_frames`` > 0): :func:`streamed_scores` feeds ``block_seconds`` blocks to a
  :class:`~distill.models.streaming.StreamingRecognizer`. Its scores equal the chunk-masked forward's
  with the same left context. A model trained with unbounded left context (``left_chunks`` None) would
  keep a key/value cache that grows with the recording (and attention cost per chunk with it), so a
  long recording gets a bounded one: :func:`bounded_left_chunks` = the chunks that make up
  ``max_whole_seconds``, i.e. each layer sees at most as much left context as in a whole-file decode.
* **Offline model**: :func:`windowed_scores` runs the model on windows of ``window_seconds`` that
  overlap by ``overlap_seconds`` and keeps each window's central frames (half the overlap of context on
  each side; the first and last windows keep their outer edges), on the global 20 ms frame grid
  (windows start on a frame, so a window's frame j is the recording's frame start+j). Frames whose
  receptive field fits in the window (CNN, positional convolution) come out exactly as in a whole-file
  decode; self-attention sees the window instead of the whole recording, so the text can differ near
  where a whole-file decode would have used context beyond the window. Models that normalise over the
  whole input (group-norm CNN, ``wave_norm: utterance``) normalise each window on its own.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

import numpy as np

from distill.models.config import conv_output_length

from .greedy import GreedyStream

__all__ = [
    "LongAudioOptions",
    "SampleSource",
    "plan_windows",
    "windowed_scores",
    "streamed_scores",
    "bounded_left_chunks",
    "decode_pieces",
]

SAMPLE_RATE = 16000


@dataclasses.dataclass(frozen=True)
class LongAudioOptions:
    """When a recording counts as long, and how it is then decoded (see the module docstring)."""

    max_whole_seconds: float = 60.0  # longer recordings are streamed / windowed
    window_seconds: float = 30.0  # offline models: window length
    overlap_seconds: float = 4.0  # offline models: overlap of consecutive windows (half of it is context each side)
    block_seconds: float = 10.0  # audio read from the source at a time

    def __post_init__(self) -> None:
        for key in ("max_whole_seconds", "window_seconds", "block_seconds"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        if not 0 <= self.overlap_seconds < self.window_seconds:
            raise ValueError(
                f"the window overlap ({self.overlap_seconds:g} s) must be >= 0 and shorter than the "
                f"window ({self.window_seconds:g} s)"
            )

    def is_long(self, num_samples: int) -> bool:
        return num_samples > self.max_whole_seconds * SAMPLE_RATE


class SampleSource(Protocol):
    """A recording readable in pieces: 16 kHz mono float32 samples [start, start+n), fewer at the end."""

    num_samples: int

    def read(self, start: int, n: int) -> np.ndarray: ...


def plan_windows(num_frames: int, window: int, context: int, align: int = 1) -> list[tuple[int, int, int, int]]:
    """``(start, end, keep_start, keep_end)`` frame ranges covering ``num_frames``: each window is at most
    ``window`` frames and keeps its frames from ``keep_start`` to ``keep_end``, at least ``context`` frames
    from its ends except at the recording's ends; the kept ranges tile [0, num_frames). Window starts are
    multiples of ``align`` (a chunk-masked model's chunk, so that its chunks stay on the global grid)."""
    if window <= 2 * context + align - 1:
        raise ValueError(
            f"a window of {window} frames leaves nothing to keep with {context} frames of context "
            f"on each side (alignment {align})"
        )
    out: list[tuple[int, int, int, int]] = []
    keep = 0
    while keep < num_frames:
        start = max(0, keep - context) // align * align
        end = min(num_frames, start + window)
        if end == num_frames:  # the last window: as much left context as the window allows
            start = min(start, -(-max(0, num_frames - window) // align) * align)
            keep_end = num_frames
        else:
            keep_end = end - context
        out.append((start, end, keep, keep_end))
        keep = keep_end
    return out


def windowed_scores(
    source: SampleSource, forward: Callable[[np.ndarray], Any], cfg: Any, opts: LongAudioOptions, align: int = 1
) -> Iterator[Any]:
    """Scores [n, V] of an offline model (config ``cfg``) over ``source`` window by window (see the module
    docstring). ``forward(samples)`` returns one window's scores [T, V] (T = its frames)."""

    frame_shift, receptive_field = cfg.frame_shift, cfg.receptive_field
    total = int(conv_output_length(source.num_samples, cfg))
    frames_per_s = SAMPLE_RATE / frame_shift
    window = int(opts.window_seconds * frames_per_s)
    context = int(opts.overlap_seconds * frames_per_s / 2)
    for start, end, k0, k1 in plan_windows(total, window, context, align):
        wave = source.read(start * frame_shift, (end - start - 1) * frame_shift + receptive_field)
        scores = forward(wave)
        got = start + int(scores.shape[0])
        if got < k1:  # the source ended early (a header promising more samples than the file holds)
            if got > k0:
                yield scores[k0 - start :]
            return
        yield scores[k0 - start : k1 - start]


def streamed_scores(recognizer: Any, source: SampleSource, opts: LongAudioOptions) -> Iterator[Any]:
    """Scores [n, V] of a :class:`~distill.models.streaming.StreamingRecognizer` fed ``source`` in
    ``block_seconds`` blocks; the recogniser holds at most one block plus one chunk of audio."""
    block = max(1, int(opts.block_seconds * SAMPLE_RATE))
    recognizer.reset()
    for start in range(0, source.num_samples, block):
        x = source.read(start, block)
        if len(x) == 0:
            break
        yield recognizer.accept_waveform(x)
    yield recognizer.finalize()


def bounded_left_chunks(left_chunks: int | None, chunk_frames: int, frame_shift: int, opts: LongAudioOptions) -> int:
    """The left context (chunks) for streaming a long recording: the model's own when bounded, else the
    chunks that make up ``max_whole_seconds`` (at least one)."""
    if left_chunks is not None:
        return left_chunks
    frames = opts.max_whole_seconds * SAMPLE_RATE / frame_shift
    return max(1, math.ceil(frames / chunk_frames))


def decode_pieces(pieces: Iterable[Any], decoders: Mapping[str, Any]) -> dict[str, list[int]]:
    """Decode a stream of score pieces [n, V] with each decoder (``"greedy"`` or a
    :class:`~distill.decode.wfst.WfstDecoder`) as one utterance; returns each one's output symbols."""

    streams = {k: GreedyStream() if isinstance(d, str) else d.stream() for k, d in decoders.items()}
    for piece in pieces:
        if piece is None or not len(piece):
            continue
        for s in streams.values():
            s.accept(piece)
    return {k: list(s.tokens) if isinstance(s, GreedyStream) else s.finalize().symbols for k, s in streams.items()}
