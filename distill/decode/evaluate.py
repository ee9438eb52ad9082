"""Stage 6: decode every test set with every model, score it, measure speed and latency, report.

:func:`run` is what ``python -m distill.bin.decode`` calls. For each row of ``models`` (a trained model
in one deployable *form*: ``fp32`` torch, ``int8`` torch dynamic quantization, ``onnx``, ``onnx-int8``):

* **WER.** Each test set is decoded from a batched forward pass (utterances sorted by duration, at most
  ``batch_seconds`` of padded audio per batch) with every method of ``methods`` (``greedy`` CTC, WFST
  one-best over ``HLG.fst`` and/or ``HP.fst``), scored with :mod:`distill.scoring` and written as
  icefall-style ``recogs-/errs-/wer-summary-<test set>-<method>.txt`` under ``out_dir/<row>/``. A
  streaming model is evaluated at each chunk size of ``chunks`` with its chunk-masked forward, which
  gives the same scores as streaming (the models' tests prove it; here the greedy output of the
  streaming pass below is compared with it and the agreement reported).
* **Speed (RTF).** On the CPU with one thread (``torch.set_num_threads(1)``, onnxruntime with one
  intra-op thread), batch 1, over the first ``speed_max_utts`` utterances (at most ``speed_max_seconds``
  of audio) of ``speed_test_set``: process CPU time of the acoustic model (front-end included) divided
  by the audio duration, after one untimed warm-up utterance. Streaming models are timed in the
  streaming pass, which feeds the audio in ``piece_ms`` pieces to a
  :class:`~distill.models.streaming.StreamingRecognizer` (ONNX forms: the exported chunk step) with
  greedy decoding; it also measures the compute of each chunk and the first-/last-token latencies
  (:func:`distill.decode.streaming.stream_decode`).
* **Size.** What the form needs on disk: the model directory's weight files (fp32), the int8 state dict
  (``torch.save``), the ONNX file; MB = 2^20 bytes.

Bad input: a reference that is not UTF-8 text or is empty stops the stage before any decoding, naming
the utterance; an utterance whose audio cannot be loaded is scored as all deletions (``missing_hyps`` of
the scorer), listed in the ``errs-`` files, ``results.json`` and RESULTS.md, and the run continues. A row
whose model does not exist is reported as "not trained". An utterance shorter than one frame (test sets are
not length-filtered) gets an empty hypothesis, with a warning, listed as ``short_utts``.

Long utterances (over ``max_whole_seconds``) are read in pieces and decoded in bounded memory
(:mod:`distill.decode.long_audio`): streamed by streaming chunk sizes (this form's chunk step, left context
bounded to ``max_whole_seconds``), in overlapping windows by full attention; every method decodes the
stitched scores as one utterance. They are listed as ``long_utts`` and not timed.

This module evaluates one model row and runs the stage; its parts: the configuration
(:mod:`~distill.decode.config`), test sets and audio (:mod:`~distill.decode.test_sets`), a model in one form
(:mod:`~distill.decode.acoustic`), the decoders (:mod:`~distill.decode.decoders`) and the RESULTS.md
appendix (:mod:`~distill.decode.stage_report`).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from distill.data.tokenizer import Tokenizer
from distill.decode.acoustic import Acoustic
from distill.decode.config import (
    SAMPLE_RATE,
    DecodeConfig,
    ModelRow,
    check_config,
    long_options,
    primary_method,
    row_names,
)
from distill.decode.decoders import Decoders
from distill.decode.report import write_results
from distill.decode.stage_report import appendix, training_curves
from distill.decode.test_sets import (
    CutAudio,
    CutReadError,
    TestSet,
    load_batches,
    note_short,
    plan_batches,
    read_test_sets,
    record_failure,
    speed_subset,
)
from distill.decode.wfst import WfstOptions
from distill.models import load_pretrained
from distill.scoring import write_scoring_files, write_wer_summary

log = logging.getLogger(__name__)

# ModelRow, DecodeConfig, check_config, row_names (distill.decode.config), TestSet and read_test_sets
# (distill.decode.test_sets) are importable from here too, as before the stage was split
__all__ = [
    "ModelRow",
    "DecodeConfig",
    "TestSet",
    "check_config",
    "read_test_sets",
    "row_names",
    "evaluate_model",
    "run",
]


def _variants(row: ModelRow, model: Any) -> list[int]:
    """Chunk sizes to evaluate (0 = offline / full attention)."""
    if row.chunks is not None:
        return list(row.chunks)
    return [int(model.config.chunk_frames)]


def evaluate_model(
    row: ModelRow, cfg: DecodeConfig, test_sets: dict[str, TestSet], decoders: Decoders, device: str
) -> list[dict[str, Any]]:
    """Evaluate one config row (one result per chunk size); see the module docstring."""
    primary = primary_method(cfg)
    base = load_pretrained(row.path).float().eval()
    decoders.check(base.config.vocab_size, row.path)
    frame_ms = 1000 * base.config.frame_shift / SAMPLE_RATE
    names = row_names(row, frame_ms)
    speed_set = test_sets[cfg.speed_test_set or next(iter(test_sets))]
    long = long_options(cfg)
    speed_utts = speed_subset(
        speed_set, cfg.speed_max_utts, cfg.speed_max_seconds, base.config.receptive_field, long.max_whole_seconds
    )
    if not speed_utts:
        raise ValueError(
            f"no loadable utterance of one frame to max_whole_seconds ({long.max_whole_seconds:g} s) "
            f"in test set '{speed_set.name}' to measure speed on"
        )
    speed_ids = {u for u, _ in speed_utts}
    results = []
    for name, chunk in zip(names, _variants(row, base)):
        t0 = time.time()
        model = copy.deepcopy(base)
        if chunk > 0:
            model.set_streaming(chunk, model.config.left_chunks if model.config.chunk_frames > 0 else None)
        elif model.config.chunk_frames > 0:
            model.set_streaming(0)  # full attention, the causal positional conv stays
        out = Path(cfg.out_dir) / name
        ac = Acoustic(model, row.form, out, device, cfg.num_threads, Path(row.path), chunk)
        log.info(
            "model %s (%s, %s): %.2f M parameters, %.1f MB, %s",
            name,
            row.path,
            row.form,
            ac.params / 1e6,
            ac.size_mb,
            f"chunk {chunk} frames ({chunk * frame_ms:g} ms)" if chunk else "full context",
        )
        wers: dict[str, dict[str, float]] = {}
        details: dict[str, dict[str, Any]] = {}
        batch_greedy: dict[str, list[int]] = {}
        for ts in test_sets.values():
            hyps: dict[str, dict[str, str]] = {m: {} for m in cfg.methods}
            groups = plan_batches(ts, cfg.batch_seconds, cfg.max_batch_size, long.max_whole_seconds)
            for batch in _progress(load_batches(ts, groups), f"{name} {ts.name}", len(groups)):
                scores, lengths = ac.scores([w for _, w in batch])
                note_short(ts, [uid for uid, _ in batch], lengths)
                texts, greedy = decoders.decode(scores, lengths)
                for i, (uid, _) in enumerate(batch):
                    for m in cfg.methods:
                        hyps[m][uid] = texts[m][i]
                    if ts is speed_set and uid in speed_ids:
                        batch_greedy[uid] = greedy[i]
            for cut in ts.long_cuts(long.max_whole_seconds):
                log.info(
                    "%s %s: utterance '%s' (%.1f s) is longer than max_whole_seconds: decoded %s",
                    name,
                    ts.name,
                    cut.id,
                    cut.duration,
                    "streamed" if chunk else "in overlapping windows",
                )
                try:
                    texts1, _ = decoders.decode_pieces(ac.long_pieces(CutAudio(cut), long))
                except CutReadError as e:
                    record_failure(ts, cut.id, e.__cause__ or e)  # scored as all deletions
                    continue
                for m in cfg.methods:
                    hyps[m][cut.id] = texts1[m]
            wers[ts.name], details[ts.name] = {}, {}
            for m in cfg.methods:
                res = write_scoring_files(
                    out, ts.name, m, ts.refs, hyps[m], mode=cfg.scoring_mode, normalize=cfg.normalize
                )
                wers[ts.name][m] = res["wer"]
                details[ts.name][m] = {
                    k: res[k] for k in ("ins", "del", "sub", "ref_words", "num_utts", "num_sent_errs")
                }
            write_wer_summary(out, ts.name, "all", wers[ts.name])
        result: dict[str, Any] = {
            "name": name,
            "params": ac.params,
            "size_mb": round(ac.size_mb, 3),
            "latency_ms": chunk * frame_ms if chunk else None,
            "wer": {t: round(w[primary], 2) for t, w in wers.items()},
            "status": "ok",
            "path": row.path,
            "form": row.form,
            "chunk_frames": chunk or None,
            "primary_method": primary,
            "wer_by_method": {t: {m: round(v, 2) for m, v in w.items()} for t, w in wers.items()},
            "errors": details,
            "failed_utts": {t.name: sorted(t.failed) for t in test_sets.values() if t.failed},
            "short_utts": {t.name: sorted(t.short) for t in test_sets.values() if t.short},
            "long_utts": {
                t.name: sorted(c.id for c in t.long_cuts(long.max_whole_seconds))
                for t in test_sets.values()
                if t.long_cuts(long.max_whole_seconds)
            },
            "decode_dir": str(out),
        }
        if chunk:
            stream, tokens = ac.time_streaming(speed_utts, cfg.piece_ms)
            same = sum(tokens[u] == batch_greedy.get(u) for u in tokens)
            stream["same_greedy_as_batch"] = f"{same}/{len(tokens)}"
            stream["test_set"] = speed_set.name
            result["streaming"] = stream
            result["speed"] = {k: stream[k] for k in ("how", "threads", "audio_s", "cpu_s", "rtf_cpu", "rtf_wall")}
            result["speed"]["utts"] = stream["num_utts"]
        else:
            result["speed"] = ac.time_offline(speed_utts)
        result["speed"]["test_set"] = speed_set.name
        result["rtf"] = round(result["speed"]["rtf_cpu"], 5)
        result["seconds"] = round(time.time() - t0, 1)
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        log.info(
            "model %s: WER %s (%s), RTF %.4f (1 thread)%s",
            name,
            ", ".join(f"{t} {w:.2f}" for t, w in result["wer"].items()),
            primary,
            result["rtf"],
            ""
            if not chunk
            else f", compute/chunk {_ms(result['streaming']['chunk_compute_ms'])} ms, "
            f"first-token {_ms(result['streaming']['first_token_ms'])} ms",
        )
        results.append(result)
    return results


def _ms(s: dict) -> str:
    return "-" if s.get("mean") is None else f"{s['mean']:.1f}"


def _progress(it: Iterator, desc: str, total: int) -> Iterator:
    return tqdm(it, desc=desc, total=total, unit="batch", leave=False, mininterval=5.0)


# ---------------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------------
def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' requested but CUDA is not available")
    return device


def run(cfg: DecodeConfig) -> dict[str, Any]:
    """Run stage 6; returns ``{"results": [...], "paths": {...}, "markdown": str}``."""
    check_config(cfg)
    device = _resolve_device(cfg.device)
    tok = Tokenizer.load(cfg.lang_dir)
    test_sets = read_test_sets(cfg.lang_dir, cfg.test_sets, cfg.max_utts, cfg.normalize)
    if cfg.speed_test_set is not None and cfg.speed_test_set not in test_sets:
        raise ValueError(f"speed_test_set '{cfg.speed_test_set}' is not among the test sets {list(test_sets)}")
    log.info(
        "test sets: %s",
        ", ".join(f"{t.name} ({len(t.cuts)} utterances, {t.seconds:.1f} s)" for t in test_sets.values()),
    )
    opts = WfstOptions(
        beam=cfg.beam, max_active=cfg.max_active, min_active=cfg.min_active, acoustic_scale=cfg.acoustic_scale
    )
    decoders = Decoders(cfg.methods, Path(cfg.graph_dir), tok, opts, cfg.nj, Path(cfg.lang_dir))
    results: list[dict[str, Any]] = []
    expected: list[str] = []
    if not cfg.models:
        log.warning("no models configured (key 'models'): RESULTS.md will have no rows")
    try:
        for row in cfg.models:
            names = row_names(row)
            expected += names
            if not Path(row.path).exists():
                log.warning("model '%s': %s does not exist: reported as not trained", row.name, row.path)
                results += [
                    {
                        "name": n,
                        "params": None,
                        "size_mb": None,
                        "rtf": None,
                        "latency_ms": None,
                        "wer": {},
                        "status": "not trained",
                        "path": row.path,
                        "form": row.form,
                    }
                    for n in names
                ]
                continue
            try:
                results += evaluate_model(row, cfg, test_sets, decoders, device)
            except (ValueError, RuntimeError, OSError) as e:
                raise ValueError(f"model '{row.name}' ({row.path}, {row.form}): {e}") from e
    finally:
        decoders.close()
    runs = training_curves(Path(cfg.exp_root))
    notes = appendix(results, cfg, test_sets, device)
    paths = write_results(
        results,
        cfg.exp_root,
        teacher=cfg.teacher,
        expected=expected,
        train_logs=runs or None,
        title=cfg.title,
        appendix=notes,
    )
    return {"results": results, "paths": paths, "markdown": paths["markdown"].read_text(encoding="utf-8")}
