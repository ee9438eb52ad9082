"""RESULTS.md / results.json / plots from fake per-model results."""

from __future__ import annotations

import json

import pytest

from distill.decode import plots
from distill.decode.report import plot_training_curves, read_train_log, results_markdown, write_results

MODELS = [
    {
        "name": "teacher",
        "params": 317.4e6,
        "size_mb": 1211.0,
        "rtf": 0.40,
        "latency_ms": None,
        "wer": {"test-clean": 4.0, "test-other": 10.0},
    },
    {
        "name": "student-stream-480",
        "params": 26.9e6,
        "size_mb": 101.0,
        "rtf": 0.05,
        "latency_ms": 480,
        "wer": {"test-clean": 4.6, "test-other": 11.0},
    },
    {
        "name": "student-stream-960",
        "params": 26.9e6,
        "size_mb": 101.0,
        "rtf": 0.05,
        "latency_ms": 960,
        "wer": {"test-clean": 4.4},
    },
]


def _row(md: str, section: str, name: str) -> list[str]:
    part = md.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    line = next(ln for ln in part.splitlines() if ln.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_markdown_tables_and_relative_degradation():
    md = results_markdown(MODELS, teacher="teacher", expected=["teacher", "student-nonstream", "student-stream-480"])
    row = _row(md, "test-clean", "student-stream-480")
    assert row == ["student-stream-480", "26.9 M", "101.0", "0.0500", "480 ms", "4.60", "+15.0%"]
    assert _row(md, "test-other", "student-stream-480")[-1] == "+10.0%"
    assert _row(md, "test-clean", "teacher")[-1] == "(teacher)" and _row(md, "test-clean", "teacher")[4] == "-"
    assert _row(md, "test-clean", "student-nonstream")[1] == "not trained"
    # a model without a result on one test set is "not evaluated" there
    assert _row(md, "test-other", "student-stream-960")[1] == "not evaluated"
    assert "8x faster" in md and "12x smaller" in md and "9–23.4% relative WER degradation at 480 ms" in md
    speed = _row(md, "Compared with the paper", "student-stream-480")
    assert speed[1] == "8.0x" and speed[2] == "12.0x"


def test_write_results_files_and_plots(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text(
        "\n".join(
            [
                json.dumps({"step": s, "loss": 10 / (s + 1), **({"dev_wer": 50 - s} if s % 5 == 0 else {})})
                for s in range(20)
            ]
            + ["not json", '{"loss": 1}']
        )
        + "\n"
    )
    paths = write_results(MODELS, tmp_path / "out", teacher="teacher", train_logs={"stage1": log})
    data = json.loads(paths["json"].read_text())
    assert [m["name"] for m in data] == [m["name"] for m in MODELS]
    assert set(data[1]) == {"name", "params", "size_mb", "rtf", "latency_ms", "wer"}
    assert data[1]["wer"] == {"test-clean": 4.6, "test-other": 11.0}
    for key in ("wer_vs_latency_test-clean", "wer_vs_size_test-clean", "wer_vs_size_test-other", "training_curves"):
        p = paths[key]
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000, key
    assert paths["markdown"].read_text().startswith("# Results")
    assert len(read_train_log(log)) == 20  # the two malformed lines are skipped


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="twice"):
        results_markdown([MODELS[0], MODELS[0]])
    with pytest.raises(ValueError, match="no 'name'"):
        results_markdown([{"wer": {}}])
    with pytest.raises(FileNotFoundError, match="nolog"):
        plot_training_curves({"x": tmp_path / "nolog.jsonl"}, tmp_path / "c.png")
    md = results_markdown([], expected=["teacher"])
    assert "No WER results yet." in md


def _stage6_rows() -> list[dict]:
    """Rows as stage 6 writes them: the streaming model at its own chunk (row ``streaming``) and at
    240/960/1920 ms and full context (row ``streaming-chunk``), its int8 form, three offline models."""

    def row(name, path, lat, wer, form="fp32", size=2.2):
        return {
            "name": name,
            "params": 6e5,
            "size_mb": size,
            "rtf": 0.01,
            "latency_ms": lat,
            "wer": {"test": wer},
            "status": "ok",
            "path": path,
            "form": form,
            "primary_method": "hlg",
        }

    s2 = "exp/stage2/model"
    return [
        row("teacher", "exp/teacher/model", None, 23.8, size=20.9),
        row("student", "exp/stage1/model", None, 44.8),
        row("student-int8", "exp/stage1/model", None, 44.4, form="int8", size=1.3),
        row("streaming", s2, 480, 54.1),
        row("streaming-chunk-240ms", s2, 240, 58.0),
        row("streaming-chunk-960ms", s2, 960, 51.0),
        row("streaming-chunk-1920ms", s2, 1920, 49.5),
        row("streaming-chunk-full", s2, None, 47.0),
        row("streaming-int8", s2, 480, 54.3, form="int8", size=1.3),
        {"name": "student-fbank", "wer": {}, "status": "not trained", "path": "exp/stage1_fbank/model"},
    ]


def test_latency_curve_rows_table_and_plot(tmp_path):
    rows = _stage6_rows()
    curves, offline = plots.latency_curves(rows)
    assert {k: [r["name"] for r in v] for k, v in curves.items()} == {
        "streaming": [
            "streaming-chunk-240ms",
            "streaming",
            "streaming-chunk-960ms",
            "streaming-chunk-1920ms",
            "streaming-chunk-full",
        ],
        "streaming-int8": ["streaming-int8"],
    }
    assert [m["name"] for m in offline] == ["teacher", "student", "student-int8"]

    paths = write_results(rows, tmp_path, teacher="teacher", expected=[r["name"] for r in rows])
    data = {m["name"]: m for m in json.loads(paths["json"].read_text())}
    assert [m["name"] for m in data.values()] == [r["name"] for r in rows]  # results.json: rows as given

    md = paths["markdown"].read_text()
    head = md.split("## WER vs latency\n", 1)[1].split("\n## ", 1)[0]
    assert "| model | test set | 240 ms | 480 ms | 960 ms | 1920 ms | full context |" in head
    assert _row(md, "WER vs latency", "streaming (streaming)") == [
        "streaming (streaming)",
        "test",
        "58.00",
        "54.10",
        "51.00",
        "49.50",
        "47.00",
    ]
    assert _row(md, "WER vs latency", "streaming-int8 (streaming)")[2:] == ["", "54.30", "", "", ""]
    assert _row(md, "WER vs latency", "teacher (offline)")[2:] == ["", "", "", "", "23.80"]
    # the full-context variant is a row of the main table too, without a latency
    assert _row(md, "test", "streaming-chunk-full")[4] == "-"

    p = paths["wer_vs_latency_test"]
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = plots.latency_figure(rows, "test")
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    # two streaming models, and fp32 offline models only as horizontal reference lines
    assert set(lines) == {"streaming", "streaming-int8", "teacher (offline)", "student (offline)"}
    xs, ys = lines["streaming"].get_data()
    assert list(ys) == [58.0, 54.1, 51.0, 49.5, 47.0] and list(xs[:4]) == [240, 480, 960, 1920] and xs[4] > 1920
    assert lines["streaming"].get_linestyle() == "-" and lines["streaming-int8"].get_linestyle() == "None"
    assert set(lines["teacher (offline)"].get_ydata()) == {23.8}
    assert [t.get_text() for t in ax.get_xticklabels()] == ["240", "480", "960", "1920", "full"]
    assert "hlg" in ax.get_ylabel()


def test_size_plot_tells_kinds_apart(tmp_path):
    rows = _stage6_rows()
    fig = plots.size_figure(rows, "test", teacher="teacher")
    ax = fig.axes[0]
    pts = {ln.get_label().split(": ", 1)[1]: ln for ln in ax.get_lines()}
    # one point per offline model, one per streaming model (at its trained chunk), numbered in the legend
    assert sorted(pts) == [
        "streaming (streaming, 480 ms)",
        "streaming-int8 (streaming, 480 ms, int8)",
        "student (offline)",
        "student-int8 (offline, int8)",
        "teacher (teacher)",
    ]
    assert pts["teacher (teacher)"].get_marker() == "*"
    assert pts["streaming (streaming, 480 ms)"].get_marker() == "^"
    assert pts["student (offline)"].get_marker() == "o"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [lb.split(":")[0] for lb in labels] == ["1", "2", "3", "4", "5"]
    # one number per spot, each number once: points that coincide share one label ("a,b"), not two on top
    texts = {a.get_text(): a.xy for a in ax.texts}
    assert sorted(n for t in texts for n in t.split(",")) == ["1", "2", "3", "4", "5"] and len(texts) == 5
    same = rows + [dict(rows[-2], name="streaming-int8-onnx", path="exp/stage2/x", form="onnx-int8")]
    ax2 = plots.size_figure(same, "test", teacher="teacher").axes[0]
    shared = [a.get_text() for a in ax2.texts if "," in a.get_text()]
    assert len(ax2.get_lines()) == 6 and len(ax2.texts) == 5 and len(shared) == 1, [a.get_text() for a in ax2.texts]
    named = {t.get_text().split(": ")[0]: t.get_text() for t in ax2.get_legend().get_texts()}
    assert sorted("int8" in named[n] for n in shared[0].split(",")) == [True, True]
    # x ticks: sizes on a log axis, none closer than 6 % of the axis (1.3 and 1.4 MB would overlap)
    assert ax.get_xscale() == "log"
    ticks = [float(t.get_text()) for t in ax.get_xticklabels()]
    assert ticks == sorted(ticks) and ticks[0] == 1.3 and ticks[-1] == 21
    p = write_results(rows, tmp_path, teacher="teacher")["wer_vs_size_test"]
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _log_records(valid_steps: list[int]) -> list[dict]:
    recs = [
        {"type": "train", "step": s, "loss": 3.0 / s, "hid": 1.0 / s, "kl": 2.0 / s, "lr": 1e-3, "num": 9}
        for s in range(1, 21)
    ]
    recs += [
        {"type": "valid", "step": s, "loss": 2.0 / s, "loss_hid": 0.5 / s, "loss_kl": 1.0 / s, "wer": 90.0 - s}
        for s in valid_steps
    ]
    return recs


def test_training_curves_panel_per_loss_term_and_dev_wer(tmp_path):
    runs = {"stage1": _log_records([5, 10, 20]), "teacher": _log_records([20])}
    runs["teacher"] = [{k: v for k, v in r.items() if k not in ("hid", "loss_hid")} for r in runs["teacher"]]
    fig = plots.training_figure(runs)
    shown = [ax for ax in fig.axes if ax.get_visible()]
    titles = [ax.get_title() for ax in shown]
    # stage1: its two loss terms on their own axes, the total, dev WER; teacher: one term (no total), dev WER
    assert titles == [
        "stage1: hidden-state MSE",
        "stage1: frame KL",
        "stage1: total loss",
        "stage1: dev WER (greedy)",
        "teacher: frame KL",
        "teacher: dev WER (greedy)",
    ]
    wer3, wer1 = shown[3].get_lines()[0], shown[5].get_lines()[0]
    assert list(wer3.get_xdata()) == [5, 10, 20] and wer3.get_linestyle() == "-"
    assert list(wer1.get_xdata()) == [20] and wer1.get_linestyle() == "None" and wer1.get_marker() == "o"
    assert "greedy" in wer3.get_label()
    kl = {ln.get_label(): ln for ln in shown[1].get_lines()}
    assert set(kl) == {"train", "dev"} and len(kl["train"].get_xdata()) == 20
    assert list(kl["dev"].get_xdata()) == [5, 10, 20] and list(kl["dev"].get_ydata()) == [0.2, 0.1, 0.05]
    assert [ax.get_title() for ax in plots.training_figure(runs, keys=["kl"]).axes if ax.get_visible()][:2] == [
        "stage1: frame KL",
        "stage1: dev WER (greedy)",
    ]
    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in runs["stage1"]))
    p = plot_training_curves({"stage1": log}, tmp_path / "c.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots.training_figure({"x": [{"type": "train", "step": 1, "lr": 0.1}]}) is None


def test_stage_report_reads_train_and_valid_records(tmp_path):
    from distill.decode.stage_report import training_curves

    log = tmp_path / "stage1" / "train_log.jsonl"
    log.parent.mkdir()
    recs = _log_records([10, 20]) + [{"type": "valid", "step": 21, "loss": float("nan"), "wer": 50.0}]
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))
    runs = training_curves(tmp_path)
    assert list(runs) == ["stage1"] and len(runs["stage1"]) == 23
    assert runs["stage1"][-1] == {"type": "valid", "step": 21, "wer": 50.0}  # the NaN loss is left out
    assert [r["wer"] for r in runs["stage1"] if r["type"] == "valid"] == [80.0, 70.0, 50.0]
