"""RESULTS.md / results.json / plots from fake per-model results."""

from __future__ import annotations

import json

import pytest

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
