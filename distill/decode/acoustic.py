"""A model in one deployable form for stage 6 (fp32 / int8 torch, ONNX, int8 ONNX): batched scores for the
WER pass, one-thread CPU timing (offline forward and the streaming pass) and the size on disk."""

from __future__ import annotations

import contextlib
import copy
import logging
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.decode.config import SAMPLE_RATE
from distill.decode.long_audio import LongAudioOptions, bounded_left_chunks, streamed_scores, windowed_scores
from distill.decode.streaming import stream_decode, summarize_latencies
from distill.models.config import conv_output_length
from distill.models.export import (
    OnnxStreamingStep,
    export_onnx,
    export_streaming_onnx,
    onnx_session,
    quantize_onnx,
    quantize_torch,
    run_onnx,
)
from distill.models.streaming import StreamingRecognizer, StreamingStep, compute_fbank_knf

__all__ = ["Acoustic", "torch_threads", "weights_size_mb"]


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """``torch.set_num_threads(n)`` inside the block (n <= 0: unchanged)."""
    if n <= 0:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def weights_size_mb(path: Path) -> float:
    """Size of a model's weight files: a directory's ``*.safetensors``/``*.bin``/``*.pt``, or the file."""
    if path.is_file():
        return path.stat().st_size / 2**20
    files = [p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt") and p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


class _DropOrtAdvice(logging.Filter):
    """onnxruntime's quantizer logs pre-processing advice as a root WARNING on every call."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please consider to run pre-processing before quantization")


@contextlib.contextmanager
def _quiet_ort() -> Iterator[None]:
    f = _DropOrtAdvice()
    logging.getLogger().addFilter(f)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(f)


class _TimedStep:
    """Wraps a streaming chunk step and records the CPU and wall time and output frames of each call."""

    def __init__(self, step: Any) -> None:
        self._step = step
        self.calls: list[tuple[float, float, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._step, name)

    def __call__(self, *args: Any) -> Any:
        c0, w0 = time.process_time(), time.perf_counter()
        out = self._step(*args)
        self.calls.append((time.process_time() - c0, time.perf_counter() - w0, int(out[0].shape[1])))
        return out


class Acoustic:
    """A model in one form: batched scores for WER, batch-1 CPU forward for RTF, a streaming recogniser.

    ``model`` is the fp32 model on the CPU, already switched to the chunk size to evaluate (streaming)."""

    def __init__(
        self, model: Any, form: str, work_dir: Path, device: str, num_threads: int, source: Path, chunk: int = 0
    ) -> None:
        self.form, self.chunk, self.work_dir = form, chunk, work_dir
        self.cfg = model.config
        self.cpu_model = model.eval()
        self.params = int(model.num_parameters())
        self.fbank = self.cfg.frontend == "fbank"
        self.device = torch.device(device if form == "fp32" else "cpu")
        self.sessions: dict[int, Any] = {}
        self._long_rec: Any = None  # the recogniser of long recordings (streaming chunk sizes)
        work_dir.mkdir(parents=True, exist_ok=True)
        if form == "fp32":
            self.model = copy.deepcopy(model).to(self.device).eval() if self.device.type != "cpu" else model
            self.size_mb = weights_size_mb(source)
        elif form == "int8":
            self.model = quantize_torch(model).eval()
            self.cpu_model = self.model
            p = work_dir / "model_int8.pt"
            torch.save(self.model.state_dict(), p)
            self.size_mb = p.stat().st_size / 2**20
        else:
            self.model = None
            onnx_path = export_onnx(model, work_dir / "model.onnx")
            if form == "onnx-int8":
                with _quiet_ort():
                    onnx_path = quantize_onnx(onnx_path, work_dir / "model.int8.onnx")
            self.onnx_path = onnx_path
            self.size_mb = onnx_path.stat().st_size / 2**20
        self.num_threads = num_threads

    def _onnx_session(self, threads: int) -> Any:
        if threads not in self.sessions:
            self.sessions[threads] = onnx_session(self.onnx_path, threads)
        return self.sessions[threads]

    # -- batched scores for WER ---------------------------------------------------------------------
    def scores(self, waves: Sequence[np.ndarray]) -> tuple[Any, Any]:
        """Scores [B,T,V] (float32 CPU tensor) and valid frames [B] of a list of waveforms."""
        olens = conv_output_length(torch.tensor([len(w) for w in waves]), self.cfg)
        if int(olens.max()) == 0:  # no utterance reaches one frame (an exported graph cannot even take them)
            return torch.zeros(len(waves), 0, self.cfg.vocab_size), olens.long()
        if self.model is not None:
            lens = torch.tensor([len(w) for w in waves])
            wave = torch.zeros(len(waves), int(lens.max()))
            for i, w in enumerate(waves):
                wave[i, : len(w)] = torch.from_numpy(w)
            with torch.inference_mode(), torch_threads(self.num_threads if self.device.type == "cpu" else 0):
                out = self.model(wave.to(self.device), lens.to(self.device))
            return out.scores.float().cpu(), out.lengths.cpu()
        x, lens = self._onnx_inputs(waves)
        scores, olens = run_onnx(self._onnx_session(self.num_threads), x, lens)
        return scores.float(), olens.long()

    def _onnx_inputs(self, waves: Sequence[np.ndarray]) -> tuple[Any, Any]:
        feats = (
            [compute_fbank_knf(w, self.cfg.fbank_num_mel_bins) for w in waves]
            if self.fbank
            else [torch.from_numpy(w) for w in waves]
        )
        lens = torch.tensor([len(f) for f in feats], dtype=torch.long)
        shape = (len(feats), max(1, int(lens.max()))) + tuple(feats[0].shape[1:])
        x = torch.zeros(shape)
        for i, f in enumerate(feats):
            x[i, : len(f)] = f
        return x, lens

    # -- one-thread CPU timing ----------------------------------------------------------------------
    def time_offline(self, utts: Sequence[tuple[str, np.ndarray]]) -> dict[str, Any]:
        """Batch-1 forward of each utterance on one CPU thread (one untimed warm-up call first)."""
        if self.model is None:
            sess = self._onnx_session(1)

            def fwd(w: np.ndarray) -> None:
                run_onnx(sess, *self._onnx_inputs([w]))
        else:
            m = self.cpu_model

            def fwd(w: np.ndarray) -> None:
                x = torch.from_numpy(w)[None]
                with torch.inference_mode():
                    m(x, torch.tensor([x.shape[1]]))

        cpu = wall = audio = 0.0
        with torch_threads(1):
            fwd(utts[0][1])
            for _, w in utts:
                c0, w0 = time.process_time(), time.perf_counter()
                fwd(w)
                cpu += time.process_time() - c0
                wall += time.perf_counter() - w0
                audio += len(w) / SAMPLE_RATE
        return {
            "how": "offline forward, batch 1",
            "threads": 1,
            "utts": len(utts),
            "audio_s": round(audio, 3),
            "cpu_s": cpu,
            "wall_s": wall,
            "rtf_cpu": cpu / audio,
            "rtf_wall": wall / audio,
        }

    # -- streaming ----------------------------------------------------------------------------------
    def streaming_step(self, left_chunks: int | None) -> _TimedStep:
        """The chunk step this form deploys (torch, or the exported ONNX step on one thread), timed."""
        step = StreamingStep(self.cpu_model, self.chunk, left_chunks)
        if self.form in ("onnx", "onnx-int8"):
            stem = f"step-c{self.chunk}" + ("" if left_chunks is None else f"-l{left_chunks}")
            p = export_streaming_onnx(self.cpu_model, self.work_dir / f"{stem}.onnx", self.chunk, left_chunks)
            if self.form == "onnx-int8":
                with _quiet_ort():
                    p = quantize_onnx(p, self.work_dir / f"{stem}.int8.onnx")
            step = OnnxStreamingStep(step, p, threads=1)
        return _TimedStep(step)

    def long_pieces(self, source: Any, opts: LongAudioOptions) -> Iterator[Any]:
        """Scores [n, V] of a long recording, in bounded memory (:mod:`distill.decode.long_audio`): a
        streaming chunk size streams it through this form's chunk step, with the left context bounded;
        full attention decodes it in overlapping windows."""
        if self.chunk == 0:

            def window(w: np.ndarray) -> Any:
                scores, lengths = self.scores([w])
                return scores[0, : int(lengths[0])]

            return windowed_scores(source, window, self.cfg, opts)
        if self._long_rec is None:
            left = bounded_left_chunks(self.cfg.left_chunks, self.chunk, self.cfg.frame_shift, opts)
            step = self.streaming_step(left)._step  # untimed: the timing pass is time_streaming's
            self._long_rec = StreamingRecognizer(self.cpu_model, self.chunk, left, step=step)
        return streamed_scores(self._long_rec, source, opts)

    def time_streaming(
        self, utts: Sequence[tuple[str, np.ndarray]], piece_ms: float
    ) -> tuple[dict[str, Any], dict[str, list[int]]]:
        """Streaming pass (one CPU thread, greedy): latencies, per-chunk compute, RTF; and the greedy
        tokens of each utterance."""
        step = self.streaming_step(self.cfg.left_chunks)
        rec = StreamingRecognizer(self.cpu_model, self.chunk, self.cfg.left_chunks, step=step)
        results, tokens = [], {}
        cpu = 0.0
        with torch_threads(1):
            stream_decode(rec, utts[0][1], "greedy", piece_ms=piece_ms)  # warm-up
            step.calls.clear()
            for uid, w in utts:
                c0 = time.process_time()
                r = stream_decode(rec, w, "greedy", piece_ms=piece_ms)
                cpu += time.process_time() - c0
                results.append(r)
                tokens[uid] = list(r.symbols)
        summary = summarize_latencies(results)
        audio = sum(r.audio_seconds for r in results)
        full = [c for c in step.calls if c[2] == self.chunk]
        summary.update(
            how=f"StreamingRecognizer ({'ONNX step' if self.model is None else 'torch'}), {piece_ms:g} ms pieces, "
            "greedy, batch 1",
            threads=1,
            audio_s=round(audio, 3),
            cpu_s=cpu,
            rtf_cpu=cpu / audio if audio else None,
            rtf_wall=summary.pop("rtf"),
            chunk_frames=self.chunk,
            left_chunks=self.cfg.left_chunks,
            piece_ms=piece_ms,
            chunk_compute_ms=_stats([1000 * c[0] for c in full]),
            chunk_compute_wall_ms=_stats([1000 * c[1] for c in full]),
            num_chunks=len(full),
        )
        return summary, tokens


def _stats(vals: list[float]) -> dict[str, float | None]:
    if not vals:
        return {"mean": None, "p50": None, "p90": None, "max": None}
    s = sorted(vals)
    return {
        "mean": statistics.fmean(s),
        "p50": s[len(s) // 2],
        "p90": s[min(len(s) - 1, int(0.9 * len(s)))],
        "max": s[-1],
    }
