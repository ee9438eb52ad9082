"""What stage 6 writes into RESULTS.md besides the result tables (:mod:`distill.decode.report`): the
appendix (WER by method, streaming latencies, unloadable audio, set-up) and the runs' training curves."""

from __future__ import annotations

from pathlib import Path

from distill.decode.config import DecodeConfig, primary_method
from distill.decode.plots import finite_number
from distill.decode.report import read_train_log
from distill.decode.test_sets import TestSet

__all__ = ["training_curves", "appendix"]


def training_curves(exp_root: Path) -> dict[str, list[dict]]:
    """Per training run (``<exp_root>/<run>/train_log.jsonl``, written by :mod:`distill.train.outputs`):
    its train records (``step``, total ``loss``, one field per loss term) and validation records
    (``type: valid``: ``loss``, ``loss_<term>``, greedy-CTC ``wer``), numbers that are not finite left
    out, for :func:`distill.decode.report.plot_training_curves` (a panel per loss term, dev WER by update)."""
    runs: dict[str, list[dict]] = {}
    for p in sorted(exp_root.glob("*/train_log.jsonl")):
        recs = []
        for r in read_train_log(p):
            kind = r.get("type", "train")
            if kind not in ("train", "valid"):
                continue
            rec = {k: v for k, v in r.items() if finite_number(v)}
            if len(rec) > 1:  # more than the step
                recs.append({"type": kind, **rec})
        if recs:
            runs[p.parent.name] = recs
    return runs


def appendix(results: list[dict], cfg: DecodeConfig, test_sets: dict[str, TestSet], device: str) -> str:
    """The Markdown sections after the result tables (see the module docstring)."""
    primary = primary_method(cfg)
    ok = [r for r in results if r.get("status") == "ok"]
    lines = [
        "## WER by decoding method",
        "",
        f"The WER column above is `{primary}`. greedy: best label per frame; hlg: kaldi-decoder one-best "
        f"over HLG (lexicon + word n-gram); hp: over CTC ∘ token bigram P. Beam {cfg.beam:g}, max-active "
        f"{cfg.max_active}, acoustic scale {cfg.acoustic_scale:g}; scoring: {cfg.scoring_mode}"
        f"{', ' + cfg.normalize + ' normalisation' if cfg.normalize else ''}.",
        "",
        "| model | test set | " + " | ".join(cfg.methods) + " | utterances | words |",
        "| --- | --- | " + " | ".join("---:" for _ in cfg.methods) + " | ---: | ---: |",
    ]
    for r in ok:
        for ts, w in r["wer_by_method"].items():
            d = r["errors"][ts][primary]
            lines.append(
                f"| {r['name']} | {ts} | "
                + " | ".join(f"{w[m]:.2f}" for m in cfg.methods)
                + f" | {d['num_utts']} | {d['ref_words']} |"
            )
    lines.append("")
    stream = [r for r in ok if r.get("streaming")]
    if stream:
        s0 = stream[0]["streaming"]
        lines += [
            "## Streaming: measured compute and latency",
            "",
            f"Streaming pass over the first {s0['num_utts']} utterances ({s0['audio_s']:.1f} s) of "
            f"`{s0['test_set']}`: audio fed in {cfg.piece_ms:g} ms pieces as if live, chunk-wise "
            "`StreamingRecognizer` (ONNX forms: the exported chunk step), greedy decoding, 1 CPU thread. "
            "Compute per chunk: CPU time of one full chunk step. Token latency: time the token is final "
            "minus the end of the audio that produced it (docs/decoding.md). `same as batch`: utterances "
            "whose streaming greedy output equals the greedy output of the chunk-masked batch forward "
            "used for the WER.",
            "",
            "| model | algorithmic latency | compute per chunk, ms (mean / p90) | first-token latency, ms "
            "(mean / p90) | last-token latency, ms (mean / p90) | finalize, ms | streaming RTF | same as batch |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]

        def mp(s: dict) -> str:
            return "-" if s.get("mean") is None else f"{s['mean']:.1f} / {s['p90']:.1f}"

        for r in stream:
            s = r["streaming"]
            lines.append(
                f"| {r['name']} | {r['latency_ms']:g} ms | {mp(s['chunk_compute_ms'])} | "
                f"{mp(s['first_token_ms'])} | {mp(s['last_token_ms'])} | "
                f"{'-' if s['finalize_ms']['mean'] is None else format(s['finalize_ms']['mean'], '.1f')} | "
                f"{s['rtf_cpu']:.4f} | {s['same_greedy_as_batch']} |"
            )
        lines.append("")
    failed = {t.name: t.failed for t in test_sets.values() if t.failed}
    if failed:
        lines += [
            "## Utterances whose audio could not be loaded",
            "",
            "Scored as all deletions for every model (listed at the end of each `errs-` file too):",
            "",
        ]
        for ts, f in failed.items():
            for uid, why in sorted(f.items()):
                lines.append(f"- `{ts}` / `{uid}`: {why}")
        lines.append("")
    speed_set = cfg.speed_test_set or next(iter(test_sets))
    not_trained = [r["name"] for r in results if r.get("status") == "not trained"]
    sets = ", ".join(f"`{t.name}` ({len(t.cuts)} utterances, {_duration(t.seconds)})" for t in test_sets.values())
    lines += [
        "## Set-up",
        "",
        f"- Test sets: {sets}" + (f" (first {cfg.max_utts} utterances of each)" if cfg.max_utts else "") + ".",
        f"- WER pass on `{device}` (int8 and ONNX forms on the CPU), batches of at most "
        f"{cfg.batch_seconds:g} s of padded audio; WFST decoding with {cfg.nj} process(es).",
        f"- RTF (1 CPU thread): process CPU time / audio duration, batch 1, over the first "
        f"{cfg.speed_max_utts} utterances (at most {cfg.speed_max_seconds:g} s) of `{speed_set}`, after one "
        "untimed warm-up utterance. Offline models: the full forward (front-end included); streaming "
        "models: the streaming pass. Decoding is not included (greedy costs nothing; WFST decoding "
        "is timed in docs/decoding.md).",
        "- Size: the form's weights on disk (fp32: the model directory's weight files; int8: the "
        "quantized state dict; ONNX: the .onnx file), MB = 2^20 bytes. Params: of the fp32 model.",
        f"- Per-model outputs: `{Path(cfg.out_dir)}/<model>/` (recogs-, errs-, wer-summary-, result.json).",
    ]
    if not_trained:
        lines.append(f"- Not trained (model not found): {', '.join(not_trained)}.")
    short = {t.name: sorted(t.short) for t in test_sets.values() if t.short}
    if short:
        lines.append(
            "- Shorter than one frame, so decoded as empty hypotheses: "
            + "; ".join(
                f"`{ts}`: {len(ids)} ({', '.join(f'`{u}`' for u in ids[:5])}{', ...' if len(ids) > 5 else ''})"
                for ts, ids in short.items()
            )
            + "."
        )
    long = {t.name: len(t.long_cuts(cfg.max_whole_seconds)) for t in test_sets.values()}
    if any(long.values()):
        lines.append(
            f"- Longer than {cfg.max_whole_seconds:g} s, so read in pieces and decoded in bounded memory "
            "(streaming rows: streamed, an unbounded left context bounded to that length; full-attention "
            f"rows: {cfg.window_seconds:g} s windows overlapping by {cfg.window_overlap_seconds:g} s): "
            + "; ".join(f"`{ts}`: {n}" for ts, n in long.items() if n)
            + "."
        )
    return "\n".join(lines) + "\n"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"
