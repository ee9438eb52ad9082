"""Result reports: ``RESULTS.md`` (one table per test set), ``results.json`` and PNG plots.

Input is a list of per-model result dicts::

    {"name": "student-streaming-480ms", "params": 26.9e6, "size_mb": 103.0, "rtf": 0.05,
     "latency_ms": 480, "wer": {"test-clean": 4.1, "test-other": 9.8}}

``latency_ms`` is the algorithmic latency (chunk duration) of a streaming model, None for full-context
models; ``rtf`` is measured on one CPU thread. Rows of one model at several chunk sizes form a latency curve
(:func:`distill.decode.plots.latency_curves`, by ``path`` and ``form``): RESULTS.md gets a "WER vs latency"
table, and the plots are drawn by :mod:`distill.decode.plots`.
Models named in ``expected`` without a result get a
"not trained" row (a model without a WER on some test set: "not evaluated" there). The relative WER
degradation is ``(WER - WER_teacher) / WER_teacher``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from distill.decode import plots

log = logging.getLogger(__name__)

__all__ = [
    "PAPER",
    "write_results",
    "results_markdown",
    "plot_wer_vs_latency",
    "plot_wer_vs_size",
    "plot_training_curves",
    "read_train_log",
]

PAPER = {
    "speedup": 8.0,
    "size_reduction": 12.0,
    "rel_wer_degradation_pct": (9.0, 23.4),
    "latency_ms": 480,
    "source": "Fu et al. 2023, DistillW2V2 (arXiv 2303.09278), abstract",
}

_FIELDS = ("name", "params", "size_mb", "rtf", "latency_ms", "wer")


def _check(models: Sequence[Mapping[str, Any]]) -> list[dict]:
    out = []
    names = set()
    for i, m in enumerate(models):
        if "name" not in m:
            raise ValueError(f"model result #{i} has no 'name'")
        if m["name"] in names:
            raise ValueError(f"model '{m['name']}' appears twice in the results")
        names.add(m["name"])
        wer = m.get("wer") or {}
        if not isinstance(wer, Mapping):
            raise ValueError(f"model '{m['name']}': 'wer' must map test sets to WER values")
        row = {
            "name": m["name"],
            "params": m.get("params"),
            "size_mb": m.get("size_mb"),
            "rtf": m.get("rtf"),
            "latency_ms": m.get("latency_ms"),
            "wer": {k: float(v) for k, v in wer.items()},
        }
        row.update({k: v for k, v in m.items() if k not in row})  # extra fields go to results.json as given
        out.append(row)
    return out


def _not_trained(m: Mapping[str, Any] | None) -> bool:
    return m is None or m.get("status") == "not trained"


def _fmt(v: Any, spec: str, missing: str = "-") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return missing
    return format(v, spec)


def _size(mb: float | None) -> str:
    """MB with one decimal; three below 1 MB (tiny test models would all read 0.0)."""
    return _fmt(mb, ".1f" if mb is None or mb >= 1 else ".3f")


def _params(n: float | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.1f} M" if n >= 1e5 else f"{int(n):,}"


def results_markdown(
    models: Sequence[Mapping[str, Any]],
    teacher: str | None = None,
    expected: Sequence[str] = (),
    title: str = "Results",
    appendix: str = "",
) -> str:
    """The RESULTS.md text (see the module docstring); ``appendix`` (Markdown) is added at the end.

    A result with ``"status": "not trained"`` gets a "not trained" row, like a name of ``expected``
    without a result."""
    ms = _check(models)
    by_name = {m["name"]: m for m in ms}
    order = list(expected) + [m["name"] for m in ms if m["name"] not in expected]
    teacher = teacher or (order[0] if order else None)
    t = by_name.get(teacher) if teacher else None
    test_sets = sorted({k for m in ms for k in m["wer"]})
    lines = [f"# {title}", ""]
    lines += [
        "RTF: compute time / audio duration on 1 CPU thread (see the set-up notes, if any). "
        "Algorithmic latency: the chunk duration of a streaming model (full context: -). Relative WER degradation: "
        f"(WER - WER of `{teacher}`) / WER of `{teacher}`.",
        "",
    ]
    if not test_sets:
        lines += ["No WER results yet.", ""]
    for ts in test_sets:
        lines += [
            f"## {ts}",
            "",
            "| model | params | size MB | RTF (1 CPU thread) | algorithmic latency | WER "
            "| rel. WER degradation vs teacher |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        tw = t["wer"].get(ts) if t else None
        for name in order:
            m = by_name.get(name)
            if _not_trained(m) or ts not in m["wer"]:
                lines.append(f"| {name} | {'not trained' if _not_trained(m) else 'not evaluated'} | | | | | |")
                continue
            w = m["wer"][ts]
            if name == teacher:
                rel = "(teacher)"
            elif tw:
                rel = f"{100 * (w - tw) / tw:+.1f}%"
            else:
                rel = "-"
            lat = "-" if m["latency_ms"] is None else f"{m['latency_ms']:g} ms"
            lines.append(
                f"| {name} | {_params(m['params'])} | {_size(m['size_mb'])} | {_fmt(m['rtf'], '.4f')} "
                f"| {lat} | {w:.2f} | {rel} |"
            )
        lines.append("")
    lines += _latency_table(ms, test_sets)
    lines += [
        "## Compared with the paper",
        "",
        f"DistillW2V2 reports its final streaming student **{PAPER['speedup']:g}x faster** and "
        f"**{PAPER['size_reduction']:g}x smaller** than the teacher, with **{PAPER['rel_wer_degradation_pct'][0]:g}"
        f"–{PAPER['rel_wer_degradation_pct'][1]:g}% relative WER degradation at {PAPER['latency_ms']} ms** "
        f"latency ({PAPER['source']}).",
        "",
    ]
    if t is not None:
        lines += [
            "| model | speed-up vs teacher (RTF) | size reduction vs teacher | rel. WER degradation (per test set) |",
            "| --- | ---: | ---: | --- |",
        ]
        for name in order:
            m = by_name.get(name)
            if _not_trained(m) or name == teacher:
                continue
            sp = t["rtf"] / m["rtf"] if t.get("rtf") and m.get("rtf") else None
            sz = t["size_mb"] / m["size_mb"] if t.get("size_mb") and m.get("size_mb") else None
            rels = [
                f"{ts} {100 * (m['wer'][ts] - t['wer'][ts]) / t['wer'][ts]:+.1f}%"
                for ts in test_sets
                if ts in m["wer"] and t["wer"].get(ts)
            ]
            lines.append(f"| {name} | {_fmt(sp, '.1f')}x | {_fmt(sz, '.1f')}x | {', '.join(rels) or '-'} |")
        lines.append("")
    if appendix:
        lines += [appendix.rstrip("\n"), ""]
    return "\n".join(lines)


def _latency_table(ms: list[dict], test_sets: list[str]) -> list[str]:
    """The "WER vs latency" section: a row per streaming model and test set, a column per latency
    (:func:`distill.decode.plots.latency_curves`), the offline models in the full-context column."""
    curves, offline = plots.latency_curves(ms)
    if not curves or not test_sets:
        return []
    lats = sorted({r["latency_ms"] for rows in curves.values() for r in rows if r["latency_ms"] is not None})
    lines = [
        "## WER vs latency",
        "",
        "WER of each streaming model decoded at several chunk sizes (its chunk-masked forward, which gives "
        "the streaming output; algorithmic latency = chunk duration), full context = the same model with "
        "full attention; offline models for reference (plot: `wer_vs_latency_<test set>.png`).",
        "",
        "| model | test set | " + " | ".join(f"{x:g} ms" for x in lats) + " | full context |",
        "| --- | --- | " + " | ".join("---:" for _ in lats) + " | ---: |",
    ]
    for ts in test_sets:
        for label, rows in curves.items():
            by_lat = {r["latency_ms"]: r["wer"].get(ts) for r in rows}
            cells = [_fmt(by_lat.get(x), ".2f", "") for x in [*lats, None]]
            lines.append(f"| {label} (streaming) | {ts} | " + " | ".join(cells) + " |")
        for m in offline:
            if ts in m["wer"]:
                lines.append(f"| {m['name']} (offline) | {ts} | " + " | " * len(lats) + f"{m['wer'][ts]:.2f} |")
    return lines + [""]


def write_results(
    models: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    teacher: str | None = None,
    expected: Sequence[str] = (),
    train_logs: Mapping[str, Any] | None = None,
    title: str = "Results",
    appendix: str = "",
    curve_keys: Iterable[str] | None = None,
) -> dict[str, Path]:
    """Write RESULTS.md, results.json and the plots to ``out_dir``; returns the written paths.

    results.json holds :data:`_FIELDS` of each model, then any extra fields of its result dict.
    ``train_logs`` / ``curve_keys``: see :func:`plot_training_curves`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ms = _check(models)
    paths = {"markdown": out / "RESULTS.md", "json": out / "results.json"}
    paths["markdown"].write_text(results_markdown(ms, teacher, expected, title, appendix), encoding="utf-8")
    paths["json"].write_text(json.dumps(ms, indent=2) + "\n", encoding="utf-8")
    for ts in sorted({k for m in ms for k in m["wer"]}):
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in ts)
        p = plot_wer_vs_latency(ms, ts, out / f"wer_vs_latency_{safe}.png")
        if p:
            paths[f"wer_vs_latency_{ts}"] = p
        p = plot_wer_vs_size(ms, ts, out / f"wer_vs_size_{safe}.png", teacher)
        if p:
            paths[f"wer_vs_size_{ts}"] = p
    if train_logs:
        p = plot_training_curves(train_logs, out / "training_curves.png", curve_keys)
        if p:
            paths["training_curves"] = p
    return paths


def plot_wer_vs_latency(models: Sequence[Mapping[str, Any]], test_set: str, path: str | Path) -> Path | None:
    """WER against algorithmic latency: one line per streaming model, offline models as horizontal
    lines (:func:`distill.decode.plots.latency_figure`); None when there is no streaming model."""
    fig = plots.latency_figure(_check(models), test_set)
    return None if fig is None else plots.save(fig, path)


def plot_wer_vs_size(
    models: Sequence[Mapping[str, Any]], test_set: str, path: str | Path, teacher: str | None = None
) -> Path | None:
    """WER against model size (:func:`distill.decode.plots.size_figure`); None when no model has both."""
    fig = plots.size_figure(_check(models), test_set, teacher)
    return None if fig is None else plots.save(fig, path)


def read_train_log(path: str | Path) -> list[dict]:
    """Records of a ``train_log.jsonl`` (one JSON object with a ``step`` per line); bad lines are
    skipped with a warning that counts them."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"training log '{p}' does not exist")
    recs, bad = [], 0
    for line in p.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if not isinstance(r, dict) or not isinstance(r.get("step"), (int, float)):
            bad += 1
            continue
        recs.append(r)
    if bad:
        log.warning("%s: skipped %d malformed line(s)", p, bad)
    return recs


def plot_training_curves(logs: Mapping[str, Any], path: str | Path, keys: Iterable[str] | None = None) -> Path | None:
    """Training curves (:func:`distill.decode.plots.training_figure`): a row of panels per run, one per
    loss term, and dev WER (greedy) over updates; ``keys`` limits the loss terms. ``logs`` maps a run
    name to its ``train_log.jsonl`` path or to a list of records already read. None: nothing to plot."""
    runs = {name: list(p) if isinstance(p, (list, tuple)) else read_train_log(p) for name, p in logs.items()}
    fig = plots.training_figure(runs, keys)
    return None if fig is None else plots.save(fig, path)
