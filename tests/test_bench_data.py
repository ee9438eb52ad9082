"""The scale benchmark of stages 0–2 (distill.bin.bench_data; logic in distill.bench.data) at a tiny size: the
synthetic release, the per-stage measurement, the DDP sampler check and the report. Nothing here runs at
corpus scale."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from distill.bench import data as B
from distill.bench.sampler import check_sampler
from distill.data import gigaspeech
from distill.data import report as R


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, dict]:
    work = tmp_path_factory.mktemp("bench")
    stats = B.ensure_release(work / "GigaSpeech", 0.1, work / "pool", vocab_size=500, segments_per_recording=6)
    return work, stats


def test_release_is_gigaspeech_format_on_shared_audio(release):
    work, stats = release
    root = work / "GigaSpeech"
    meta = json.loads((root / "GigaSpeech.json").read_text())
    train = [a for a in meta["audios"] if "{XL}" in a["subsets"]]
    assert len(train) == stats["recordings"] >= 10
    assert {a["path"] for a in meta["audios"]} == {"audio/pool/P0000.opus", "audio/pool/P0001.opus"}
    segs = [g for a in train for g in a["segments"]]
    assert all(g["sid"].startswith(a["aid"] + "_S") for a in train for g in a["segments"])
    assert all(0 <= g["begin_time"] < g["end_time"] <= a["duration"] for a in train for g in a["segments"])
    assert stats["segments"] == sum(1 for g in segs if g["text_tn"] not in B.GARBAGE)
    assert abs(stats["hours"] - 0.1) < 0.03
    # the same parameters reuse the release; stage 0 reads it, each shared file probed once
    mtime = (root / "GigaSpeech.json").stat().st_mtime_ns
    assert B.ensure_release(root, 0.1, work / "pool", vocab_size=500, segments_per_recording=6) == stats
    assert (root / "GigaSpeech.json").stat().st_mtime_ns == mtime
    index = gigaspeech.write_manifests(root, ["XL", "DEV", "TEST"], R.PrepReport("x"), work / "manifests")
    assert index["XL"]["num_utterances"] == stats["segments"] and index["DEV"]["num_recordings"] == 2


def test_run_child_measures_its_own_peak_rss(tmp_path):
    """Measured from a small driver process, as the benchmark runs: on Linux a child's peak RSS is at least
    its parent's RSS when it was spawned (exec keeps the copied address space's high-water mark), so the
    figure is the child's own only under a parent smaller than it (the pytest process is not)."""
    code = "import sys; b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); sys.exit(3)"
    driver = (
        "import json, sys; from pathlib import Path; import distill.bench.data as B; "
        f"print(json.dumps(B.run_child([sys.executable, '-c', {code!r}], Path({str(tmp_path / 'log')!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, check=True).stdout
    res = json.loads(out.strip().splitlines()[-1])
    assert res["rc"] == 3 and 200 < res["peak_rss_mb"] < 400 and res["wall_s"] >= 0


def test_sampler_check_on_a_lazy_manifest(tmp_path):
    from lhotse import CutSet
    from lhotse.testing.dummies import dummy_cut

    path = tmp_path / "cuts.jsonl.gz"
    with CutSet.open_writer(path) as w:
        for i in range(400):
            w.write(dummy_cut(i, duration=1.0 + (i % 7) / 2))
    res = check_sampler(str(path), max_duration=20.0, world_size=3, k=4, load_audio=False)
    assert res["disjoint"] and res["complete"] and res["cuts_checked"] > 3 * 4


def test_markdown_table_and_growth():
    def row(h, t0, r0):
        return {
            "hours": h,
            "release": {"hours": h, "segments": h * 830, "recordings": h * 4, "json_bytes": h * 2e5},
            "stages": {"stage 0 manifests": {"wall_s": t0, "cpu_s": t0 - 1, "peak_rss_mb": r0, "rc": 0}},
        }

    table = B.markdown([row(100, 10.0, 250.0), row(1000, 100.0, 250.0)])
    assert "| 100 h, 0.08 M segs, 400 recs, 0.02 GiB JSON | 10 s (9 s) / 250 MB |" in table
    assert "| growth exponent 100 → 1000 h (time / RSS) | 1.00 / 0.00 |" in table
