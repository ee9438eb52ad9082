"""Model benchmark (``python -m distill.bin.bench_models``; its docstring describes the measurement):
parameters, size on disk, real-time factor of each model form (fp32 / int8 torch, fp32 / int8 ONNX) and
per-chunk compute of the streaming forms, as Markdown tables."""

from __future__ import annotations

import functools
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from distill.models import build_model
from distill.models.checkpoint import save_pretrained
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

log = logging.getLogger("bench_models")


@dataclass
class BenchConfig:
    """Options of the model benchmark."""

    teacher: str = "w2v2-large"
    # the recipes' default stage-1 student first, then the same encoder with the teacher's full CNN
    models: list[str] = field(
        default_factory=lambda: ["student-12x384-cnn128-256", "student-12x384", "student-10x384-rcnn"]
    )
    deploy: str = "student-10x384-fbank"  # gets int8 / ONNX / streaming forms
    streaming_models: list[str] = field(default_factory=lambda: ["student-12x384-cnn128-256", "student-12x384"])
    seconds: float = 10.0
    repeats: int = 3
    threads: list[int] = field(default_factory=lambda: [1, 0])  # 0 = all cores
    chunk_frames: int = 24
    left_chunks: int | None = None
    vocab_size: int = 500
    output: str | None = None
    log_file: str | None = None


def _time(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall-clock and process CPU time of ``fn`` after a warm-up. On one thread the CPU time is
    the compute cost even when other processes share the cores (wall time then includes waiting)."""
    fn()  # warm-up
    ws, cs = [], []
    for _ in range(max(1, repeats)):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        ws.append(time.perf_counter() - w0)
        cs.append(time.process_time() - c0)
    return statistics.median(ws), statistics.median(cs)


def _file_mb(path: Path) -> float:
    return path.stat().st_size / 2**20


@dataclass
class Row:
    name: str
    params: int
    size_mb: float
    rtf: dict[int, float] = field(default_factory=dict)  # wall clock, per thread count
    rtf_cpu1: float = float("nan")  # CPU time on one thread


def _store(row: Row, n: int, t: tuple[float, float], seconds: float) -> None:
    """Record the wall / CPU times ``t`` of ``seconds`` of audio on ``n`` threads as real-time factors."""
    row.rtf[n] = t[0] / seconds
    if n == 1:
        row.rtf_cpu1 = t[1] / seconds
    log.info("%s, %d threads: RTF %.4f (wall), %.4f (CPU)", row.name, n, row.rtf[n], t[1] / seconds)


def _thread_label(n: int) -> str:
    return f"{n} thread" + ("s" if n > 1 else "")


def run(cfg: BenchConfig) -> str:
    """Build, time and tabulate every model form of ``cfg``; prints the Markdown tables (also written to
    ``cfg.output`` when set) and returns them."""
    audio = torch.randn(1, int(cfg.seconds * 16000)) * 0.1
    tmp = Path(tempfile.mkdtemp(prefix="bench_models_"))
    rows: list[Row] = []
    stream_rows: list[tuple[str, dict[int, tuple[float, float]]]] = []
    threads = [t if t > 0 else (os.cpu_count() or 1) for t in cfg.threads]

    def torch_row(name: str, model, fn_factory) -> None:
        d = tmp / name.replace(" ", "_")
        save_pretrained(model, d)
        row = Row(name, model.num_parameters(), _file_mb(d / "model.safetensors"))
        for n in threads:
            torch.set_num_threads(n)
            _store(row, n, _time(fn_factory(model), cfg.repeats), cfg.seconds)
        rows.append(row)

    def wave_fn(model):
        def f():
            with torch.no_grad():
                model(audio)

        return f

    names = list(dict.fromkeys([cfg.teacher, *cfg.models, cfg.deploy]))
    for name in names:
        model = build_model(name, cfg.vocab_size).eval()
        torch_row(f"{name} fp32", model, wave_fn)
        if name == cfg.deploy:
            deploy = model
        del model

    # int8 torch (dynamic quantization of Linear layers)
    q = quantize_torch(deploy)
    qpath = tmp / "deploy_int8.pt"
    torch.save(q.state_dict(), qpath)
    row = Row(f"{cfg.deploy} int8 torch", deploy.num_parameters(), _file_mb(qpath))
    for n in threads:
        torch.set_num_threads(n)
        _store(row, n, _time(wave_fn(q), cfg.repeats), cfg.seconds)
    rows.append(row)

    # ONNX fp32 / int8
    onnx_fp32 = export_onnx(deploy, tmp / "deploy.onnx")
    onnx_int8 = quantize_onnx(onnx_fp32, tmp / "deploy_int8.onnx")
    fb_mode = deploy.config.frontend == "fbank"
    for label, path in (("ONNX fp32", onnx_fp32), ("ONNX int8", onnx_int8)):
        row = Row(f"{cfg.deploy} {label}", deploy.num_parameters(), _file_mb(path))
        for n in threads:
            sess = onnx_session(path, n)

            def f(sess=sess):
                if fb_mode:
                    fb = compute_fbank_knf(audio[0])[None]
                    run_onnx(sess, fb, torch.tensor([fb.shape[1]]))
                else:
                    run_onnx(sess, audio, torch.tensor([audio.shape[1]]))

            _store(row, n, _time(f, cfg.repeats), cfg.seconds)
        rows.append(row)

    # streaming: per-chunk compute time
    piece = cfg.chunk_frames * 320

    def stream_time(make_rec) -> tuple[float, float, float]:
        """Mean and max wall ms and mean CPU ms per chunk."""
        rec = make_rec()
        ws, cs = [], []
        for i in range(0, audio.shape[1], piece):
            w0, c0 = time.perf_counter(), time.process_time()
            out = rec.accept_waveform(audio[0, i : i + piece])
            if out.shape[0]:
                ws.append(time.perf_counter() - w0)
                cs.append(time.process_time() - c0)
        rec.finalize()
        ws, cs = ws[1:] or ws, cs[1:] or cs  # the first call includes one-off set-up
        return statistics.mean(ws) * 1000, max(ws) * 1000, statistics.mean(cs) * 1000

    forms = []
    for name in cfg.streaming_models:
        m = build_model(name, cfg.vocab_size).eval()
        m.set_streaming(cfg.chunk_frames, cfg.left_chunks)
        forms.append((f"{name} fp32 torch", lambda m=m: StreamingRecognizer(m, cfg.chunk_frames, cfg.left_chunks)))
    deploy.set_streaming(cfg.chunk_frames, cfg.left_chunks)
    forms.append((f"{cfg.deploy} fp32 torch", lambda: StreamingRecognizer(deploy, cfg.chunk_frames, cfg.left_chunks)))
    sp = export_streaming_onnx(deploy, tmp / "deploy_step.onnx", cfg.chunk_frames, cfg.left_chunks)
    sq = quantize_onnx(sp, tmp / "deploy_step_int8.onnx")
    for label, path in (("ONNX fp32", sp), ("ONNX int8", sq)):
        forms.append((f"{cfg.deploy} {label}", path))
    for label, form in forms:
        res = {}
        for n in threads:
            torch.set_num_threads(n)
            if isinstance(form, Path):
                step = OnnxStreamingStep(StreamingStep(deploy, cfg.chunk_frames, cfg.left_chunks), form, n)
                make = functools.partial(StreamingRecognizer, deploy, cfg.chunk_frames, cfg.left_chunks, step=step)
            else:
                make = form
            stream_time(make)  # warm-up
            res[n] = stream_time(make)
            log.info("streaming %s, %d threads: %.1f ms/chunk (max %.1f, CPU %.1f)", label, n, *res[n])
        stream_rows.append((label, res))

    teacher = rows[0]
    one = 1 in threads
    hdr = ["model", "params (M)", "size (MB)", "smaller"]
    if one:
        hdr += ["RTF 1 thread (CPU time)", "speed-up"]
    for n in threads:
        hdr += [f"RTF {_thread_label(n)} (wall)", "speed-up"]
    lines = [
        f"Audio: {cfg.seconds:.0f} s, batch 1, median of {cfg.repeats}; {os.cpu_count()} CPU cores; "
        f"torch {torch.__version__}. Ratios are against {teacher.name}; 'smaller' compares size on disk.",
        "",
        "| " + " | ".join(hdr) + " |",
        "|" + " --- |" * len(hdr),
    ]
    for r in rows:
        cells = [r.name, f"{r.params / 1e6:.1f}", f"{r.size_mb:.1f}", f"{teacher.size_mb / r.size_mb:.1f}x"]
        if one:
            cells += [f"{r.rtf_cpu1:.4f}", f"{teacher.rtf_cpu1 / r.rtf_cpu1:.1f}x"]
        for n in threads:
            cells += [f"{r.rtf[n]:.4f}", f"{teacher.rtf[n] / r.rtf[n]:.1f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    shdr = ["streaming form"]
    if one:
        shdr.append("1 thread, CPU ms")
    shdr += [f"{_thread_label(n)}, wall ms mean (max)" for n in threads]
    lines += [
        "",
        f"Streaming: compute per {cfg.chunk_frames}-frame chunk ({cfg.chunk_frames * 20} ms of audio), "
        f"left context {'unlimited' if cfg.left_chunks is None else f'{cfg.left_chunks} chunks'}:",
        "",
        "| " + " | ".join(shdr) + " |",
        "|" + " --- |" * len(shdr),
    ]
    for label, res in stream_rows:
        cells = [label]
        if one:
            cells.append(f"{res[1][2]:.1f}")
        cells += [f"{res[n][0]:.1f} ({res[n][1]:.1f})" for n in threads]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    if cfg.output:
        Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.output).write_text(text + "\n")
    return text
