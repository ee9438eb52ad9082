"""Scale benchmark of stages 0–2 on synthetic GigaSpeech-format metadata (``python -m distill.bin.bench_data``;
its docstring describes the measurement): the synthetic release, each stage run as a child process with
its wall/CPU time and peak RSS, and the Markdown report. Imports neither torch nor lhotse (see
:func:`run_child`); the sampler check that needs them is :mod:`distill.bench.sampler`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm import tqdm

SAMPLE_RATE = 16000
SEGMENT_SECONDS = (1.0, 4.35, 20.0)  # min, mean, max of a train segment (GigaSpeech XL: 10,000 h / 8.28 M)
SEGMENTS_PER_RECORDING = 218  # 8.28 M segments / 38 k recordings
WORDS_PER_SECOND = 2.7
GAP_SECONDS = 0.05
NESTED = (("L", 0.25), ("M", 0.10), ("S", 0.025), ("XS", 0.001))  # share of XL also tagged with the subset
EVAL_RECORDINGS = 2  # DEV and TEST recordings (their size does not grow with --hours)
GARBAGE = ("<SIL>", "<MUSIC>", "<NOISE>", "<OTHER>")
GENERATOR_VERSION = 2  # bump when the generated metadata changes (regenerates cached corpora)
REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------- synthetic release


def pseudo_words(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct upper-case pseudo-words of 1–4 syllables (BPE finds pieces as in real text), shortest
    first: with Zipf's law the frequent words are the short ones, as in English."""
    rng = np.random.default_rng(seed)
    onsets = [
        "",
        "B",
        "BR",
        "CH",
        "D",
        "F",
        "G",
        "GR",
        "H",
        "J",
        "K",
        "L",
        "M",
        "N",
        "P",
        "PL",
        "R",
        "S",
        "SH",
        "ST",
        "T",
        "TH",
        "TR",
        "V",
        "W",
        "Y",
        "Z",
    ]
    nuclei = ["A", "E", "I", "O", "U", "AI", "EA", "EE", "OO", "OU", "Y"]
    codas = ["", "", "", "N", "R", "S", "T", "D", "L", "NG", "CK", "M", "ST", "'S"]
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        k = int(rng.integers(1, 5))
        w = "".join(
            onsets[rng.integers(len(onsets))] + nuclei[rng.integers(len(nuclei))] + codas[rng.integers(len(codas))]
            for _ in range(k)
        )
        if w not in seen and not w.startswith("'"):
            seen.add(w)
            out.append(w)
    return sorted(out, key=len)


class TextSampler:
    """Transcripts in GigaSpeech ``text_tn`` style: Zipf-distributed words, some punctuation tags."""

    def __init__(self, vocab_size: int, seed: int) -> None:
        self.words = np.array(pseudo_words(vocab_size, seed), dtype=object)
        p = 1.0 / np.arange(1, vocab_size + 1)
        self.cdf = np.cumsum(p / p.sum())
        self.rng = np.random.default_rng(seed + 1)

    def sentences(self, num_words: np.ndarray) -> list[str]:
        idx = np.searchsorted(self.cdf, self.rng.random(int(num_words.sum())))
        idx = np.minimum(idx, len(self.words) - 1)
        words = self.words[idx]
        comma = self.rng.random(len(words)) < 0.06
        words = np.where(comma, words + " <COMMA>", words)
        ends = self.rng.choice(
            ["<PERIOD>", "<QUESTIONMARK>", "<EXCLAMATIONPOINT>", ""], size=len(num_words), p=[0.7, 0.08, 0.02, 0.2]
        )
        out, pos = [], 0
        for n, end in zip(num_words.tolist(), ends.tolist()):
            s = " ".join(words[pos : pos + n].tolist())
            out.append(f"{s} {end}" if end else s)
            pos += n
        return out


def _durations(rng: np.random.Generator, n: int) -> np.ndarray:
    lo, mean, hi = SEGMENT_SECONDS
    d = lo + rng.gamma(2.0, (mean - lo) / 2.0, size=n)
    return np.round(np.clip(d, lo, hi), 2)


def write_audio_pool(pool_dir: Path, seconds: float, n: int) -> list[Path]:
    """``n`` Opus files of ``seconds`` of quiet noise in ``pool_dir`` (kept and reused across sizes)."""

    def one(k: int) -> Path:
        path = pool_dir / f"P{k:04d}.opus"
        if path.is_file() and sf.info(str(path)).duration >= seconds:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(k)
        tmp = path.with_suffix(".tmp.opus")
        with sf.SoundFile(str(tmp), "w", SAMPLE_RATE, 1, format="OGG", subtype="OPUS", compression_level=1.0) as f:
            for _ in range(math.ceil(seconds / 60)):
                f.write((0.01 * rng.standard_normal(60 * SAMPLE_RATE)).astype(np.float32))
        os.replace(tmp, path)
        return path

    with ThreadPoolExecutor(2) as ex:  # libsndfile's encoder runs without the GIL
        return list(ex.map(one, range(n)))


def write_release(
    root: Path,
    hours: float,
    pool_dir: Path,
    *,
    vocab_size: int = 200_000,
    pool_files: int = 2,
    segments_per_recording: int = SEGMENTS_PER_RECORDING,
    seed: int = 0,
) -> dict[str, Any]:
    """A GigaSpeech release of ``hours`` of train segments (metadata only; audio shared); returns its stats.

    The JSON is written one recording at a time, so memory does not grow with ``hours``.
    """
    lo, mean, hi = SEGMENT_SECONDS
    rec_seconds = segments_per_recording * (mean + GAP_SECONDS)
    max_rec_seconds = 1.3 * rec_seconds
    pool = []
    for src in write_audio_pool(pool_dir, max_rec_seconds + 5, pool_files):
        rel = f"audio/pool/{src.name}"
        pool.append(rel)
        if not (root / rel).is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, root / rel)
    n_train = max(1, round(hours * 3600 / rec_seconds))
    text = TextSampler(vocab_size, seed)
    rng = np.random.default_rng(seed + 2)
    stats = {"hours": 0.0, "recordings": 0, "segments": 0, "words": 0}
    tmp = root / "GigaSpeech.json.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(
            '{"dataset": "GigaSpeech", "language": "EN", "version": "synthetic (distill.bin.bench_data)", "audios": [\n'
        )
        jobs = (
            [("train", i) for i in range(n_train)]
            + [("DEV", i) for i in range(EVAL_RECORDINGS)]
            + [("TEST", i) for i in range(EVAL_RECORDINGS)]
        )
        for n, (kind, i) in enumerate(tqdm(jobs, desc=f"GigaSpeech.json ({hours:g} h)", unit="rec", mininterval=5)):
            aid = {"train": "POD", "DEV": "YOU", "TEST": "AUD"}[kind] + f"{i:010d}"
            dur = _durations(rng, segments_per_recording)
            while dur.sum() + GAP_SECONDS * len(dur) > max_rec_seconds:
                dur = dur[:-1]
            begin = np.round(np.concatenate([[0.0], np.cumsum(dur + GAP_SECONDS)[:-1]]), 2)
            nw = np.maximum(1, np.round(dur * WORDS_PER_SECOND * rng.uniform(0.6, 1.4, len(dur)))).astype(int)
            texts = text.sentences(nw)
            garbage = rng.random(len(dur)) < 0.01
            u = rng.random(len(dur))
            segs = []
            for k in range(len(dur)):
                if kind == "train":
                    subsets = ["{XL}"] + ["{" + s + "}" for s, share in NESTED if u[k] < share]
                else:
                    subsets = ["{" + kind + "}"]
                t = GARBAGE[k % len(GARBAGE)] if garbage[k] else texts[k]
                segs.append(
                    {
                        "sid": f"{aid}_S{k:07d}",
                        "speaker": "N/A",
                        "begin_time": float(begin[k]),
                        "end_time": round(float(begin[k] + dur[k]), 2),
                        "text_tn": t,
                        "subsets": subsets,
                    }
                )
                if kind == "train" and not garbage[k]:
                    stats["hours"] += float(dur[k]) / 3600
                    stats["segments"] += 1
                    stats["words"] += int(nw[k])
            audio = {
                "title": f"synthetic {aid}",
                "url": "",
                "path": pool[n % len(pool)],
                "aid": aid,
                "source": "podcast",
                "format": "opus",
                "sample_rate": SAMPLE_RATE,
                "channels": 1,
                "md5": "",
                "duration": round(float(begin[-1] + dur[-1]) + 1.0, 3),
                "speaker": "N/A",
                "category": "Arts",
                "subsets": sorted({s for g in segs for s in g["subsets"]}),
                "segments": segs,
            }
            f.write(("" if n == 0 else ",\n") + json.dumps(audio))
            stats["recordings"] += kind == "train"
        f.write("\n]}\n")
    os.replace(tmp, root / "GigaSpeech.json")
    stats.update(
        hours=round(stats["hours"], 2),
        json_bytes=(root / "GigaSpeech.json").stat().st_size,
        pool_files=pool_files,
        vocab_size=vocab_size,
        segments_per_recording=segments_per_recording,
        seed=seed,
        version=GENERATOR_VERSION,
    )
    return stats


def ensure_release(root: Path, hours: float, pool_dir: Path, **kw: Any) -> dict[str, Any]:
    """The release under ``root`` if one of these parameters is there already, else a new one."""
    meta = root / "bench_release.json"
    if meta.is_file() and (root / "GigaSpeech.json").is_file():
        old = json.loads(meta.read_text())
        if (
            old.get("version") == GENERATOR_VERSION
            and old.get("requested_hours") == hours
            and all(old.get(k) == v for k, v in kw.items())
        ):
            return old
    stats = write_release(root, hours, pool_dir, **kw)
    stats["requested_hours"] = hours
    meta.write_text(json.dumps(stats, indent=1) + "\n")
    return stats


# ------------------------------------------------------------------------- measuring the stages


def run_child(argv: Sequence[str], log_path: Path) -> dict[str, Any]:
    """Run ``argv`` (output to ``log_path``): wall and CPU seconds, peak RSS in MB (``os.wait4``: this
    child's own, or that of a process it waited for, whichever is larger) and exit status.

    On Linux a child's peak RSS is at least its parent's RSS when it was spawned (exec keeps the copied
    address space's high-water mark): call this from a process smaller than what it measures, as the
    benchmark's own driver is (it does not import torch)."""
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
    return {
        "wall_s": round(time.perf_counter() - t0, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "rc": os.waitstatus_to_exitcode(status),
    }


def stage_commands(
    root: Path, out: Path, conf: Path, nj: int, sampler_max_duration: float
) -> list[tuple[str, list[str]]]:
    """The (name, argv) of each measured step, as ``egs/gigaspeech/run.sh`` runs stages 0-2, then the sampler."""
    py = [sys.executable, "-m"]
    man, lang = out / "manifests", out / "lang"
    return [
        (
            "stage 0 manifests",
            py
            + [
                "distill.bin.prepare_manifests",
                "--config",
                str(conf / "data.yaml"),
                f"corpus_dir={root}",
                f"out_dir={man}",
                f"nj={nj}",
            ],
        ),
        (
            "stage 1 lang",
            py
            + [
                "distill.bin.prepare_lang",
                "--config",
                str(conf / "lang.yaml"),
                f"manifest_dir={man}",
                f"lang_dir={lang}",
                f"nj={nj}",
            ],
        ),
        (
            "stage 2 den graph",
            py + ["distill.bin.build_den_graph", "--config", str(conf / "den.yaml"), f"lang_dir={lang}"],
        ),
        (
            "sampler",
            py
            + [
                "distill.bin.bench_data",
                "--check-sampler",
                str(lang / "cuts_train.jsonl.gz"),
                "--sampler-max-duration",
                f"{sampler_max_duration:g}",
            ],
        ),
    ]


def _sampler_max_duration(hours: float, world_size: int = 4, k: int = 8) -> float:
    """600 s batches (a GPU's worth), smaller for tiny corpora so that k batches per rank stay inside one epoch."""
    return float(min(600.0, max(10.0, hours * 3600 * 0.8 / (2 * world_size * k))))


# ------------------------------------------------------------------------- report


def _growth(rows: list[dict[str, Any]], stage: str, key: str) -> list[str]:
    """Exponent b of value ~ hours^b between consecutive sizes (1.0 = linear, 0 = constant)."""
    out = []
    pts = [(r["hours"], r["stages"][stage][key]) for r in rows if stage in r["stages"]]
    for (h1, v1), (h2, v2) in zip(pts, pts[1:]):
        out.append(f"{math.log(v2 / v1) / math.log(h2 / h1):.2f}" if v1 > 0 and v2 > 0 and h2 != h1 else "–")
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    """The results table: one row per size, then the growth exponents between consecutive sizes."""
    stages = list(rows[0]["stages"]) if rows else []
    lines = [
        "| metadata | " + " | ".join(f"{s}: wall (CPU) / peak RSS" for s in stages) + " |",
        "| --- |" + " --- |" * len(stages),
    ]
    for r in rows:
        rel = r["release"]
        h = f"{rel['hours']:,.0f}" if rel["hours"] >= 10 else f"{rel['hours']:.1f}"
        head = (
            f"{h} h, {rel['segments'] / 1e6:.2f} M segs, {rel['recordings']:,} recs, "
            f"{rel['json_bytes'] / 2**30:.2f} GiB JSON"
        )
        cells = [
            f"{v['wall_s']:,.0f} s ({v.get('cpu_s', 0):,.0f} s) / {v['peak_rss_mb']:,.0f} MB"
            + ("" if v["rc"] == 0 else f" (exit {v['rc']})")
            for v in r["stages"].values()
        ]
        lines.append(f"| {head} | " + " | ".join(cells) + " |")
    if len(rows) > 1:
        grow = {s: (_growth(rows, s, "wall_s"), _growth(rows, s, "peak_rss_mb")) for s in stages}
        for i in range(len(rows) - 1):
            lines.append(
                f"| growth exponent {rows[i]['hours']:g} → {rows[i + 1]['hours']:g} h (time / RSS) | "
                + " | ".join(f"{grow[s][0][i]} / {grow[s][1][i]}" for s in stages)
                + " |"
            )
    return "\n".join(lines)


# ------------------------------------------------------------------------- the benchmark


def run(
    hours: Sequence[float],
    work_dir: str | Path,
    conf_dir: str | Path,
    *,
    nj: int = 2,
    vocab_size: int = 200_000,
    pool_files: int = 2,
    segments_per_recording: int = SEGMENTS_PER_RECORDING,
    stages: str = "0,1,2,sampler",
    keep_outputs: bool = False,
) -> int:
    """Measure ``stages`` (comma-separated subset of 0,1,2,sampler) at each size in ``hours``; print the
    progress and the Markdown table, write ``<work_dir>/results.json``. Returns the exit status (1 when a
    stage failed or the sampler check did not hold)."""
    work = Path(work_dir).resolve()
    wanted = {s.strip() for s in stages.split(",")}
    rows: list[dict[str, Any]] = []
    results = work / "results.json"
    for h in sorted(hours):
        d = work / f"{h:g}h"
        t0 = time.perf_counter()
        rel = ensure_release(
            d / "GigaSpeech",
            h,
            work / "pool",
            vocab_size=vocab_size,
            pool_files=pool_files,
            segments_per_recording=segments_per_recording,
        )
        print(
            f"[{h:g} h] release: {rel['segments']:,} segments in {rel['recordings']:,} recordings, "
            f"{rel['json_bytes'] / 2**20:,.0f} MiB JSON ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        row: dict[str, Any] = {"hours": h, "release": rel, "stages": {}}
        out = d / "out"
        for name, cmd in stage_commands(d / "GigaSpeech", out, Path(conf_dir), nj, _sampler_max_duration(h)):
            key = name.split()[1] if name.startswith("stage") else name
            if key not in wanted:
                continue
            log_path = d / f"{name.replace(' ', '_')}.log"
            res = run_child(cmd, log_path)
            if name == "sampler" and res["rc"] == 0:
                last = log_path.read_text().strip().splitlines()[-1]
                res["check"] = json.loads(last)
            row["stages"][name] = res
            print(
                f"[{h:g} h] {name}: {res['wall_s']:,.1f} s, peak RSS {res['peak_rss_mb']:,.0f} MB"
                + (f", {res.get('check')}" if "check" in res else "")
                + ("" if res["rc"] == 0 else f" — FAILED (exit {res['rc']}), see {log_path}"),
                flush=True,
            )
            if res["rc"] != 0:
                break
        row["disk_mb"] = {
            sub: round(sum(f.stat().st_size for f in (out / sub).rglob("*") if f.is_file()) / 2**20, 1)
            for sub in ("manifests", "lang")
            if (out / sub).is_dir()
        }
        rows.append(row)
        if not keep_outputs:
            shutil.rmtree(out, ignore_errors=True)
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(rows, indent=1) + "\n")
    print(markdown(rows))
    ok = all(
        v["rc"] == 0 and v.get("check", {}).get("disjoint", True) and v.get("check", {}).get("complete", True)
        for r in rows
        for v in r["stages"].values()
    )
    return 0 if ok else 1
