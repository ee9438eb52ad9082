"""Streaming decoding driver with latency measurement.

:func:`stream_decode` feeds one utterance's audio to a streaming recogniser in pieces of ``piece_ms``
(as a microphone would deliver them), decodes each batch of finished chunks right away (greedy with
:class:`~distill.decode.greedy.GreedyStream`, or WFST with :class:`~distill.decode.wfst.WfstStream`)
and times every step. The recogniser only needs ``accept_waveform(samples) -> scores [n, V]`` and
``finalize() -> scores [n, V]`` (and optionally ``reset()``), as
:class:`distill.models.streaming.StreamingRecognizer` provides.

Latency definitions (seconds; see docs/decoding.md):

* audio arrives in real time: piece i is available at ``a_i`` = the audio time of its last sample;
* a single worker processes the pieces in order; its clock after piece i is
  ``c_i = max(c_{i-1}, a_i) + p_i``, with ``p_i`` the measured wall time of ``accept_waveform`` plus
  the decoder update plus reading the partial result (``finalize`` is handled the same way at the end
  of the audio);
* an output symbol of the final hypothesis is **emitted** at the clock ``c_k`` of the first step k
  after which every partial hypothesis (and the final one) starts with the same symbols up to and
  including it; for greedy decoding this is the step that produced it (nothing is ever revised);
* it was **spoken** at the end of the CNN window of the frame that produced it: ``(f * hop + window)
  / 16000`` for frame f (hop 320, window 400 samples for the standard CNN);
* token latency = emitted - spoken; the **first-token latency** and **last-token latency** of an
  utterance are those of its first and last output symbol; **finalize latency** = clock after
  ``finalize`` minus the audio duration.

The chunk duration is the algorithmic latency; the measured latencies add the compute time and the
waiting for the chunk's remaining audio.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from .greedy import GreedyStream

__all__ = ["Recognizer", "StreamResult", "stream_decode", "summarize_latencies"]


class Recognizer(Protocol):
    def accept_waveform(self, samples: Any) -> Any: ...

    def finalize(self) -> Any: ...


@dataclasses.dataclass
class StreamResult:
    """One utterance decoded in streaming mode (times in seconds)."""

    symbols: list[int]
    symbol_frames: list[int]
    emit_times: list[float]
    spoken_times: list[float]
    audio_seconds: float
    compute_seconds: float
    finalize_latency: float
    num_steps: int
    frame_labels: list[int] = dataclasses.field(default_factory=list)  # the token read at each frame (blank 0)

    @property
    def latencies(self) -> list[float]:
        return [e - s for e, s in zip(self.emit_times, self.spoken_times)]

    @property
    def first_token_latency(self) -> float | None:
        lat = self.latencies
        return lat[0] if lat else None

    @property
    def last_token_latency(self) -> float | None:
        lat = self.latencies
        return lat[-1] if lat else None

    @property
    def rtf(self) -> float:
        return self.compute_seconds / self.audio_seconds if self.audio_seconds > 0 else 0.0


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _frame_timing(recognizer: Any, sample_rate: int) -> tuple[float, float]:
    cfg = getattr(recognizer, "cfg", None)
    hop = getattr(cfg, "frame_shift", 320) if cfg is not None else 320
    win = getattr(cfg, "receptive_field", 400) if cfg is not None else 400
    return hop / sample_rate, win / sample_rate


def stream_decode(
    recognizer: Any,
    samples: Any,
    decoder: Any = "greedy",
    piece_ms: float = 40.0,
    sample_rate: int = 16000,
    frame_timing: tuple[float, float] | None = None,
    on_partial: Callable[[list[int]], None] | None = None,
) -> StreamResult:
    """Decode ``samples`` (1-D, 16 kHz) through ``recognizer`` piece by piece; see the module docstring.

    ``decoder``: ``"greedy"`` or a :class:`~distill.decode.wfst.WfstDecoder`. ``frame_timing``:
    (hop, window) of an output frame in seconds, by default from ``recognizer.cfg``. ``on_partial`` is
    called with the partial hypothesis whenever a piece changes it (outside the timed steps).
    """
    x = np.asarray(samples.detach().cpu().numpy() if hasattr(samples, "detach") else samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"stream_decode expects mono samples [S], got shape {x.shape}")
    piece = int(round(piece_ms * sample_rate / 1000))
    if piece <= 0:
        raise ValueError(f"piece_ms must give at least one sample, got {piece_ms}")
    hop_s, win_s = frame_timing or _frame_timing(recognizer, sample_rate)
    if hasattr(recognizer, "reset"):
        recognizer.reset()
    greedy = isinstance(decoder, str)
    if greedy and decoder != "greedy":
        raise ValueError(f"decoder must be 'greedy' or a WfstDecoder, got {decoder!r}")
    gs = GreedyStream() if greedy else None
    ws = None if greedy else decoder.stream()

    last: list[int] = []
    labels: list[int] = []  # greedy: the best token of each frame

    def step(scores: Any) -> list[int]:
        nonlocal last
        if scores is None or not len(scores):
            return last  # nothing new: the partial result cannot have changed
        if greedy:
            gs.accept(scores)  # type: ignore[union-attr]
            labels.extend(scores.detach().argmax(dim=-1).cpu().tolist())
            last = list(gs.tokens)  # type: ignore[union-attr]
        else:
            ws.accept(scores)  # type: ignore[union-attr]
            last = ws.partial().symbols  # type: ignore[union-attr]
        return last

    clock = 0.0
    compute = 0.0
    history: list[tuple[float, list[int]]] = []
    n = len(x)
    for start in range(0, n, piece):
        end = min(n, start + piece)
        t0 = time.perf_counter()
        hyp = step(recognizer.accept_waveform(x[start:end]))
        dt = time.perf_counter() - t0
        compute += dt
        clock = max(clock, end / sample_rate) + dt
        history.append((clock, hyp))
        if on_partial is not None and hyp != (history[-2][1] if len(history) > 1 else []):
            on_partial(hyp)
    t0 = time.perf_counter()
    tail = recognizer.finalize()
    if greedy:
        step(tail)
        final, frames = list(gs.tokens), list(gs.token_frames)  # type: ignore[union-attr]
    else:
        if tail is not None and len(tail):
            ws.accept(tail)  # type: ignore[union-attr]
        res = ws.finalize()  # type: ignore[union-attr]
        final, frames, labels = res.symbols, res.symbol_frames, res.frame_labels
    dt = time.perf_counter() - t0
    compute += dt
    audio_s = n / sample_rate
    clock = max(clock, audio_s) + dt
    history.append((clock, final))

    # emission: first step from which every later hypothesis agrees with the final one up to the symbol
    agree = [_common_prefix(h, final) for _, h in history]
    suffix_min = agree[:]
    for i in range(len(agree) - 2, -1, -1):
        suffix_min[i] = min(agree[i], suffix_min[i + 1])
    emit: list[float] = []
    k = 0
    for j in range(len(final)):
        while suffix_min[k] <= j:
            k += 1
        emit.append(history[k][0])
    spoken = [f * hop_s + win_s for f in frames]
    return StreamResult(
        final, list(frames), emit, spoken, audio_s, compute, clock - audio_s, len(history), list(labels)
    )


def summarize_latencies(results: Sequence[StreamResult]) -> dict[str, Any]:
    """Mean / median / 90th percentile of first-token, last-token and finalize latency (ms), and RTF."""

    def stats(vals: list[float]) -> dict[str, float | None]:
        if not vals:
            return {"mean": None, "p50": None, "p90": None}
        s = sorted(vals)
        return {
            "mean": 1000 * statistics.fmean(s),
            "p50": 1000 * s[len(s) // 2],
            "p90": 1000 * s[min(len(s) - 1, int(0.9 * len(s)))],
        }

    first = [r.first_token_latency for r in results if r.first_token_latency is not None]
    last = [r.last_token_latency for r in results if r.last_token_latency is not None]
    audio = sum(r.audio_seconds for r in results)
    return {
        "num_utts": len(results),
        "first_token_ms": stats(first),  # type: ignore[arg-type]
        "last_token_ms": stats(last),  # type: ignore[arg-type]
        "finalize_ms": stats([r.finalize_latency for r in results]),
        "rtf": sum(r.compute_seconds for r in results) / audio if audio > 0 else 0.0,
    }
