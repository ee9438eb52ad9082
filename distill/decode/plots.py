"""Stage 6's figures: WER against latency (one curve per streaming model), WER against size, training curves.

Each ``*_figure`` function builds and returns a matplotlib figure (tests inspect its axes and lines);
:func:`save` writes it as PNG. The grouping of result rows into latency curves (:func:`latency_curves`)
is shared with the "WER vs latency" table of RESULTS.md: rows of one model file in one form (``path`` and
``form`` of a stage-6 result; without them, the name less a ``-<N>ms`` / ``-full`` suffix) form one curve
when at least one of them has a latency; its rows without a latency are its full-context point.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "TERM_NAMES",
    "finite_number",
    "latency_curves",
    "latency_figure",
    "size_figure",
    "training_figure",
    "save",
]

# loss terms of distill.losses.objective (and the teachers' CTC / LF-MMI) as the panels name them
TERM_NAMES = {
    "hid": "hidden-state MSE",
    "out": "output MSE",
    "mmi_kd": "LF-MMI KD",
    "lfmmi": "LF-MMI",
    "ctc": "CTC",
    "kl": "frame KL",
    "feat": "front-end MSE",
}
# numeric fields of train_log.jsonl records that are not loss terms
_NOT_TERMS = {
    "step",
    "epoch",
    "loss",
    "lr",
    "grad_norm",
    "num",
    "num_per_s",
    "audio_s_per_s",
    "updates_per_s",
    "skipped_nonfinite",
    "skipped_oom",
    "time",
    "best",
    "wer",
    "ref_words",
    "utts",
}
_SUFFIX = re.compile(r"-(\d+(\.\d+)?ms|full)$")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as a PNG and close it."""
    plt = _plt()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return p


def finite_number(v: Any) -> bool:
    """A finite int or float, not a bool (the plottable values of a log record)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ---------------------------------------------------------------------------------------------------
# WER against latency
# ---------------------------------------------------------------------------------------------------
def latency_curves(models: Sequence[Mapping[str, Any]]) -> tuple[dict[str, list[Mapping[str, Any]]], list]:
    """``({curve label: rows by latency, full context last}, offline rows)`` (see the module docstring).

    A curve's label is its shortest row name less the latency suffix (``streaming`` for rows
    ``streaming`` and ``streaming-chunks-240ms``)."""
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for m in models:
        if m.get("status") == "not trained":
            continue
        key = (m["path"], m.get("form")) if m.get("path") else _SUFFIX.sub("", m["name"])
        groups.setdefault(key, []).append(m)
    curves: dict[str, list[Mapping[str, Any]]] = {}
    offline: list[Mapping[str, Any]] = []
    for rows in groups.values():
        if not any(r.get("latency_ms") is not None for r in rows):
            offline += rows
            continue
        label = min((_SUFFIX.sub("", r["name"]) for r in rows), key=lambda s: (len(s), s))
        curves[label] = sorted(rows, key=lambda r: math.inf if r.get("latency_ms") is None else r["latency_ms"])
    return curves, offline


def _is_fp32(m: Mapping[str, Any]) -> bool:
    return m.get("form") in (None, "fp32")


def latency_figure(models: Sequence[Mapping[str, Any]], test_set: str) -> Any | None:
    """One line per streaming model (WER against algorithmic latency, full context at the right end) and
    a dashed horizontal line per fp32 offline model; None when no streaming model has a WER here."""
    curves, offline = latency_curves(models)
    curves = {k: [r for r in v if test_set in r["wer"]] for k, v in curves.items()}
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None
    lats = sorted({r["latency_ms"] for v in curves.values() for r in v if r.get("latency_ms") is not None})
    full_x = lats[-1] * 2 if lats else 1.0
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    markers = "os^Dv<>p"
    for i, (label, rows) in enumerate(curves.items()):
        xs = [full_x if r.get("latency_ms") is None else r["latency_ms"] for r in rows]
        ys = [r["wer"][test_set] for r in rows]
        ax.plot(xs, ys, marker=markers[i % len(markers)], linestyle="-" if len(xs) > 1 else "none", label=label)
    refs = [m for m in offline if test_set in m["wer"] and _is_fp32(m)]
    for j, m in enumerate(refs):
        ax.axhline(m["wer"][test_set], linestyle="--", linewidth=1, color=f"C{(len(curves) + j) % 10}")
        ax.lines[-1].set_label(f"{m['name']} (offline)")
    ax.set_xscale("log", base=2)
    ticks = lats + ([full_x] if any(r.get("latency_ms") is None for v in curves.values() for r in v) else [])
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in lats] + (["full"] if len(ticks) > len(lats) else []))
    ax.minorticks_off()
    ax.set_xlabel("algorithmic latency (ms; chunk duration)")
    ax.set_ylabel(f"WER (%), {_method(models)}")
    ax.set_title(f"WER vs latency ({test_set})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _method(models: Sequence[Mapping[str, Any]]) -> str:
    methods = {m.get("primary_method") for m in models if m.get("primary_method")}
    return methods.pop() if len(methods) == 1 else "WER column"


# ---------------------------------------------------------------------------------------------------
# WER against size
# ---------------------------------------------------------------------------------------------------
def size_figure(models: Sequence[Mapping[str, Any]], test_set: str, teacher: str | None = None) -> Any | None:
    """WER against size on disk: offline models as circles, streaming as triangles, the teacher as a star;
    points are numbered and the legend names them (no overlapping labels). A streaming model evaluated
    at several latencies is shown at its shortest-named row (its trained chunk size). None when no model
    has both a size and a WER here."""
    curves, offline = latency_curves(models)
    reps = {label: next((r for r in rows if r["name"] == label), rows[0]) for label, rows in curves.items()}
    pts = [(m, False) for m in offline] + [(r, True) for r in reps.values()]
    pts = [(m, s) for m, s in pts if m.get("size_mb") is not None and test_set in m["wer"]]
    if not pts:
        return None
    pts.sort(key=lambda p: (p[0]["size_mb"], p[0]["wer"][test_set]))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    xs = [math.log10(m["size_mb"]) for m, _ in pts]
    ys = [m["wer"][test_set] for m, _ in pts]
    xr, yr = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    spots: list[dict[str, Any]] = []  # one number label per spot: "2,3" for points that coincide
    for i, (m, streaming) in enumerate(pts, 1):
        if m["name"] == teacher:
            style = dict(marker="*", color="C3", markersize=13)
            kind = "teacher"
        elif streaming:
            style = dict(marker="^", color="C1", markersize=8)
            kind = f"streaming, {m['latency_ms']:g} ms"
        else:
            style = dict(marker="o", color="C0", markersize=7)
            kind = "offline"
        form = "" if _is_fp32(m) else f", {m['form']}"
        x, y = m["size_mb"], m["wer"][test_set]
        ax.plot([x], [y], linestyle="none", label=f"{i}: {m['name']} ({kind}{form})", **style)
        fx, fy = (math.log10(x) - min(xs)) / xr, (y - min(ys)) / yr  # axis fractions
        near = next((sp for sp in spots if abs(fx - sp["fx"]) < 0.04 and abs(fy - sp["fy"]) < 0.035), None)
        if near is None:
            spots.append({"fx": fx, "fy": fy, "xy": (x, y), "names": [str(i)]})
        else:
            near["names"].append(str(i))
    for sp in spots:
        ax.annotate(",".join(sp["names"]), sp["xy"], textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ticks: list[float] = []
    for t in sorted({float(f"{m['size_mb']:.2g}") for m, _ in pts}):
        if not ticks or math.log10(t) - math.log10(ticks[-1]) > 0.06 * xr:  # readable: no overlapping ticks
            ticks.append(t)
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("model size on disk (MB, log scale)")
    ax.set_ylabel(f"WER (%), {_method(models)}")
    ax.set_title(f"WER vs model size ({test_set})")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


# ---------------------------------------------------------------------------------------------------
# training curves
# ---------------------------------------------------------------------------------------------------
def _panels(recs: Sequence[Mapping[str, Any]], keys: Iterable[str] | None) -> list[str]:
    terms: list[str] = []
    for r in recs:
        if r.get("type", "train") == "train":
            terms += [k for k, v in r.items() if k not in _NOT_TERMS and finite_number(v) and k not in terms]
    if keys is not None:
        terms = [t for t in terms if t in set(keys)]
    has_total = any(finite_number(r.get("loss")) for r in recs)
    panels = terms + (["loss"] if has_total and len(terms) != 1 else [])  # one term: the total is that term
    if any(finite_number(r.get("wer")) for r in recs if r.get("type") == "valid"):
        panels.append("wer")
    return panels


def training_figure(runs: Mapping[str, Sequence[Mapping[str, Any]]], keys: Iterable[str] | None = None) -> Any | None:
    """A row of panels per run: one per loss term (train records: a line; dev ``loss_<term>``: points),
    the total loss when there are several terms, and "dev WER (greedy)" from the validation records —
    a line when validated several times, a marker when once. ``keys`` limits the loss terms. None when
    no run has anything to plot."""
    rows = {name: _panels(recs, keys) for name, recs in runs.items()}
    rows = {k: v for k, v in rows.items() if v}
    if not rows:
        return None
    ncol = max(len(v) for v in rows.values())
    plt = _plt()
    fig, axes = plt.subplots(len(rows), ncol, figsize=(3.3 * ncol, 2.5 * len(rows)), squeeze=False)
    for i, (run, panels) in enumerate(rows.items()):
        recs = runs[run]
        train = [r for r in recs if r.get("type", "train") == "train"]
        valid = [r for r in recs if r.get("type") == "valid"]
        last = max([r["step"] for r in recs] + [1])
        for j in range(ncol):
            ax = axes[i, j]
            if j >= len(panels):
                ax.set_visible(False)
                continue
            key = panels[j]
            if key == "wer":
                pts = [(r["step"], r["wer"]) for r in valid if finite_number(r.get("wer"))]
                ax.plot(*zip(*pts), "o-" if len(pts) > 1 else "o", color="C2", label="dev (greedy CTC)")
                ax.set_title(f"{run}: dev WER (greedy)", fontsize=9)
                ax.set_ylabel("WER (%)", fontsize=8)
            else:
                dev_key = key if key == "loss" else f"loss_{key}"
                pts = [(r["step"], r[key]) for r in train if finite_number(r.get(key))]
                if pts:
                    ax.plot(*zip(*pts), "-" if len(pts) > 1 else "o", color="C0", label="train")
                dev = [(r["step"], r[dev_key]) for r in valid if finite_number(r.get(dev_key))]
                if dev:
                    ax.plot(*zip(*dev), "s-" if len(dev) > 1 else "s", color="C1", label="dev")
                name = "total loss" if key == "loss" else TERM_NAMES.get(key, key)
                ax.set_title(f"{run}: {name}", fontsize=9)
                ax.set_ylabel("loss", fontsize=8)
            ax.set_xlim(0, last * 1.04)  # the run's whole span, also for a single validation
            ax.set_xlabel("update", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
