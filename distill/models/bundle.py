"""The deployment bundle of one model: what ``python -m distill.bin.export`` writes (recipe stage 7).

``OUT/`` holds

* ``offline.onnx`` / ``offline.int8.onnx``: the full-utterance model (:func:`~distill.models.export.export_onnx`:
  ``wave [B,S], lengths [B] -> scores [B,T,V], out_lengths [B]``; the Fbank front-end takes ``fbank``);
  a streaming student's is its chunk-masked forward, equal to its streaming output;
* ``streaming.onnx`` / ``streaming.int8.onnx`` (streaming students only): one chunk step
  (:func:`~distill.models.export.export_streaming_onnx`), state in, state out (docs/deploy.md);
* ``sherpa-onnx/model.onnx``, ``model.int8.onnx``, ``tokens.txt``: the form sherpa-onnx runs
  (:mod:`distill.models.sherpa`; CNN front-end only);
* ``tokens.txt`` (and ``bpe.model``), ``HLG.fst`` + ``words.txt`` (with a graph dir);
* ``README.md``, the model card, and ``export.json``, the same facts for programs.

Every ONNX file carries ``metadata_props`` (:func:`onnx_metadata`): vocabulary, frame shift, sample
rate, input scaling, chunk and state layout, so that a runtime needs nothing else.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from distill.data.tokenizer import TOKEN_FILES, Tokenizer, check_same_tokens

from .card import bundle_readme
from .checkpoint import load_pretrained
from .export import export_onnx, export_streaming_onnx, quantize_onnx
from .sherpa import SherpaExportError, export_sherpa_onnx, sherpa_scaling_note
from .streaming import StreamingStep
from .wav2vec2 import W2V2Model

__all__ = ["ExportError", "export_bundle", "onnx_metadata", "set_onnx_metadata", "read_onnx_metadata"]


class ExportError(ValueError):
    """Bad input to the exporter, naming the offending path or option."""


_SCALING = {
    "none": "none: the raw samples in [-1, 1] go to the CNN",
    "utterance": "utterance: each utterance to zero mean / unit variance (variance + 1e-7)",
    "fixed": "fixed: (x - wave_mean) / wave_std",
    "running": "running: causal running mean/variance in blocks of frame_shift samples with a prior of "
    "wave_prior_s seconds at (wave_mean, wave_std); the streaming model carries its sums in wave_stats",
}


def onnx_metadata(model: W2V2Model, form: str, step: StreamingStep | None = None) -> dict[str, str]:
    """The ``metadata_props`` of an exported file (all values are strings)."""
    cfg = model.config
    meta: dict[str, Any] = {
        "model_type": "distillw2v2-ctc",
        "form": form,
        "vocab_size": cfg.vocab_size,
        "blank_id": 0,
        "sample_rate": 16000,
        "frontend": cfg.frontend,
        "frame_shift_samples": cfg.frame_shift,
        "frame_shift_ms": 1000 * cfg.frame_shift // 16000,
        "subsampling_factor": cfg.frame_shift,
        "receptive_field_samples": cfg.receptive_field,
        "wave_norm": cfg.wave_norm,
        "wave_mean": cfg.wave_mean,
        "wave_std": cfg.wave_std,
        "wave_prior_s": cfg.wave_prior_s,
        "input_scaling": _SCALING[cfg.wave_norm] if cfg.frontend == "cnn" else "fbank (kaldi-native-fbank)",
        "trained_chunk_frames": cfg.chunk_frames,
        "trained_left_chunks": "all" if cfg.left_chunks is None else cfg.left_chunks,
    }
    if form == "sherpa-onnx":
        meta["input_scaling"] = "sherpa-onnx normalises each utterance; " + sherpa_scaling_note(
            cfg.wave_norm, cfg.wave_mean, cfg.wave_std
        )
    if step is not None:
        shapes = {n: [int(d) for d in s.shape] for n, s in zip(step.state_names(), step.init_state(1))}
        if step.cache_frames is None:
            shapes["kv_cache"][4] = "Tc"
        dtypes = {n: str(s.dtype).replace("torch.", "") for n, s in zip(step.state_names(), step.init_state(1))}
        meta.update(
            chunk_frames=step.chunk,
            chunk_ms=step.chunk * 1000 * cfg.frame_shift // 16000,
            left_chunks="all" if step.left_chunks is None else step.left_chunks,
            chunk_input_samples=step.chunk * cfg.frame_shift + cfg.receptive_field - cfg.frame_shift,
            overlap_samples=cfg.receptive_field - cfg.frame_shift,
            state_names=",".join(step.state_names()),
            state_shapes=json.dumps(shapes),
            state_dtypes=json.dumps(dtypes),
        )
    return {k: str(v) for k, v in meta.items()}


def set_onnx_metadata(path: str | Path, meta: dict[str, str]) -> None:
    """Write ``meta`` into the ONNX file's ``metadata_props`` (replacing keys already there)."""
    import onnx  # optional heavy dependency (extra "onnx")

    m = onnx.load(str(path))
    old = {p.key: p.value for p in m.metadata_props}
    old.update(meta)
    del m.metadata_props[:]
    for k, v in old.items():
        m.metadata_props.add(key=k, value=v)
    onnx.save(m, str(path))


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file."""
    import onnx  # optional heavy dependency (extra "onnx")

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _pair(model: W2V2Model, out: Path, name: str, export, meta: dict[str, str], int8: bool) -> list[str]:
    """``name.onnx`` (and ``name.int8.onnx``) with ``meta``; returns the file names."""
    fp32 = export(out / f"{name}.onnx")
    set_onnx_metadata(fp32, {**meta, "precision": "float32"})
    files = [fp32.name]
    if int8:
        q = quantize_onnx(fp32, out / f"{name}.int8.onnx")
        set_onnx_metadata(q, {**meta, "precision": "int8 (dynamic, MatMul/Gemm weights)"})
        files.append(q.name)
    return files


def _write_tokens(lang_dir: Path, out: Path) -> None:
    for f in TOKEN_FILES:
        if (lang_dir / f).is_file():
            shutil.copy2(lang_dir / f, out / f)
    if not (out / "tokens.txt").is_file():  # a BPE lang dir without tokens.txt: write it from the pieces
        pieces = Tokenizer.load(lang_dir).pieces
        (out / "tokens.txt").write_text("".join(f"{p} {i}\n" for i, p in enumerate(pieces)), encoding="utf-8")


def _results_rows(results: Path | None, model_dir: Path) -> list[dict[str, Any]]:
    """Stage 6's rows of ``results.json`` decoded from ``model_dir``."""
    if results is None:
        return []
    if not results.is_file():
        raise ExportError(f"results file '{results}' does not exist (stage 6 writes exp/results.json)")
    try:
        rows = json.loads(results.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ExportError(f"{results}: not JSON: {e}") from None
    want = model_dir.resolve()
    out = []
    for r in rows if isinstance(rows, list) else []:
        p = r.get("path")
        if r.get("status") != "ok" or not p:
            continue
        cand = [Path(p), results.parent.parent.parent / p, results.parent.parent / p]
        if any(c.exists() and c.resolve() == want for c in cand):
            out.append(r)
    return out


def export_bundle(
    model_dir: Path,
    lang_dir: Path,
    out: Path,
    graph_dir: Path | None = None,
    results: Path | None = None,
    chunk_frames: int | None = None,
    left_chunks: int | None = None,
    int8: bool = True,
    name: str = "",
    command: str = "",
) -> dict[str, Any]:
    """Write the bundle of ``model_dir`` to ``out`` (replaced; see the module docstring); returns its card.

    ``chunk_frames`` / ``left_chunks``: the streaming step's chunk and left context (default: those the
    student was trained with); a full-context model gets no streaming files (the card says why)."""
    if not lang_dir.is_dir() or not any((lang_dir / f).is_file() for f in TOKEN_FILES):
        raise ExportError(f"lang dir '{lang_dir}' has neither {' nor '.join(TOKEN_FILES)}")
    if graph_dir is not None and not (graph_dir / "HLG.fst").is_file():
        raise ExportError(f"graph dir '{graph_dir}' has no HLG.fst (stage 6 builds it: data/lang_test)")
    m = load_pretrained(model_dir).eval()
    cfg = m.config
    check_same_tokens(
        model_dir, "model", lang_dir, "lang dir", a_size=cfg.vocab_size, b_size=Tokenizer.load(lang_dir).vocab_size
    )
    rows = _results_rows(results, model_dir)
    final, out = out, out.with_name(out.name + ".partial")  # `final` appears only when complete
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    _write_tokens(lang_dir, out)
    files: dict[str, list[str]] = {}
    notes: list[str] = []
    files["offline"] = _pair(m, out, "offline", lambda p: export_onnx(m, p), onnx_metadata(m, "offline"), int8)
    chunk = chunk_frames or cfg.chunk_frames
    left = left_chunks if left_chunks is not None else (cfg.left_chunks if chunk_frames is None else None)
    if cfg.chunk_frames > 0:
        step = StreamingStep(m, chunk, left)
        meta = onnx_metadata(m, "streaming-chunk", step)
        files["streaming"] = _pair(m, out, "streaming", lambda p: export_streaming_onnx(m, p, chunk, left), meta, int8)
    else:
        chunk = 0
        notes.append(
            "no streaming files: this is a full-context model (trained without a chunk mask); chunk-wise "
            "decoding would not give its output. Export the streaming student (exp/stage2/model) for those."
        )
    try:
        sdir = out / "sherpa-onnx"
        sdir.mkdir()
        shutil.copy2(out / "tokens.txt", sdir / "tokens.txt")
        files["sherpa-onnx"] = [
            f"sherpa-onnx/{f}"
            for f in _pair(m, sdir, "model", lambda p: export_sherpa_onnx(m, p), onnx_metadata(m, "sherpa-onnx"), int8)
        ]
    except SherpaExportError as e:
        shutil.rmtree(out / "sherpa-onnx")
        notes.append(f"no sherpa-onnx files: {e}")
    if graph_dir is not None:
        shutil.copy2(graph_dir / "HLG.fst", out / "HLG.fst")
        words = graph_dir / "words.txt" if (graph_dir / "words.txt").is_file() else lang_dir / "words.txt"
        if not words.is_file():
            raise ExportError(f"neither '{graph_dir}' nor '{lang_dir}' has words.txt (the HLG's word table)")
        shutil.copy2(words, out / "words.txt")
        files["graph"] = ["HLG.fst", "words.txt"]
    card: dict[str, Any] = {
        "name": name or final.name,
        "model": str(model_dir),
        "params": sum(p.numel() for p in m.parameters()),
        "vocab_size": cfg.vocab_size,
        "frontend": cfg.frontend,
        "wave_norm": cfg.wave_norm,
        "frame_shift_ms": 1000 * cfg.frame_shift // 16000,
        "streaming": cfg.chunk_frames > 0,
        "chunk_frames": chunk or None,
        "left_chunks": left if chunk else None,
        "files": files,
        "sizes_mb": {f: round((out / f).stat().st_size / 2**20, 2) for fs in files.values() for f in fs},
        "results": [
            {k: r.get(k) for k in ("name", "form", "chunk_frames", "latency_ms", "primary_method", "wer_by_method")}
            for r in rows
        ],
        "results_file": str(results) if results is not None else None,
        "notes": notes,
        "sherpa_scaling": sherpa_scaling_note(cfg.wave_norm, cfg.wave_mean, cfg.wave_std),
        "command": command,
    }
    (out / "export.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(bundle_readme(card), encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    out.rename(final)
    return card
