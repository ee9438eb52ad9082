"""Killed-and-resumed runs end with exactly the parameters of an uninterrupted run (CPU, bit-exact).

Each scenario runs tests/train_toy_script.py (dropout, accum_grad=2, tri-stage LR, validation every 3
updates, checkpoints every 2) once uninterrupted, and once as a chain of processes that die at
random points: SIGKILL inside a micro-batch (mid-update), SIGTERM (clean stop, exit 143), SIGKILL
half-way through a checkpoint write. Each process resumes from what the previous one left.
"""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import pytest
import torch
import train_toy_script as toy  # noqa: E402  (tests/ is on sys.path under pytest)

from distill.train import checkpoint as ck


def _argv(exp: Path, sampler: str, max_steps: int, *extra: str) -> list[str]:
    return [
        "--exp-dir",
        str(exp),
        "--out",
        str(exp / "final.pt"),
        "--sampler",
        sampler,
        "--max-steps",
        str(max_steps),
        *extra,
    ]


def _join(p, what: str, timeout: float = 120.0) -> int:
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        pytest.fail(f"{what} did not finish in {timeout} s")
    return p.exitcode


def _run_chain(
    tmp_path: Path, sampler: str, max_steps: int, chain: list[tuple[list[str], int]], workers: int = 0
) -> None:
    """Start the reference run in the background, run the chain, compare the final parameters."""
    extra = ["--workers", str(workers)]
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref = toy.run_child(toy.child, _argv(ref_dir, sampler, max_steps, *extra, "--tensorboard"))
    for args, want_rc in chain + [([], 0)]:
        rc = _join(
            toy.run_child(toy.child, _argv(run_dir, sampler, max_steps, *extra, "--tensorboard", *args)), f"run {args}"
        )
        log = (run_dir / "train.log").read_text() if (run_dir / "train.log").exists() else ""
        assert rc == want_rc, f"{args}: exit code {rc}, wanted {want_rc}\n{log[-3000:]}"
        if args and args[0] == "--term-at":
            assert "stopped by SIGTERM" in log
        if args and args[0] == "--kill-in-write":
            leftovers = [q.name for q in (run_dir / "checkpoints").iterdir() if ".tmp-" in q.name]
            assert leftovers, "the simulated crash should leave a partial temp file"
    assert _join(ref, "reference run") == 0
    a = torch.load(ref_dir / "final.pt", weights_only=True)
    b = torch.load(run_dir / "final.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"parameter {k} differs after resume"

    def curve(d: Path) -> list[tuple]:
        recs = [json.loads(x) for x in (d / "train_log.jsonl").read_text().splitlines()]
        return [(r["type"], r["step"], r.get("loss"), r.get("grad_norm"), r.get("lr")) for r in recs]

    # the resumed run's training log is the uninterrupted one (minus timing fields)
    assert curve(ref_dir) == curve(run_dir)
    for name in ("avg2.pt", "best.pt"):
        ra, rb = ck.load_model_state(ref_dir / name), ck.load_model_state(run_dir / name)
        assert all(torch.equal(ra[k], rb[k]) for k in ra), name
    # TensorBoard events of the killed runs after the resumed checkpoint were purged
    assert any((run_dir / "tensorboard").iterdir())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_term_and_crash_in_write_resume_exactly(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    # micro-batch indices count per process; odd = first half of an update (accum_grad=2)
    chain = [
        (["--kill-at", str(rng.randrange(3, 12, 2))], -signal.SIGKILL),
        (["--term-at", str(rng.randrange(4, 10))], 128 + signal.SIGTERM),
        (["--kill-in-write", str(rng.randrange(14, 25, 2))], -signal.SIGKILL),
    ]
    _run_chain(tmp_path, "simple", 26, chain)


@pytest.mark.parametrize("seed", [0, 1])
def test_lhotse_sampler_with_prefetching_worker_resumes_exactly(tmp_path: Path, seed: int) -> None:
    rng = random.Random(100 + seed)
    chain = [
        (["--kill-at", str(rng.randrange(3, 9))], -signal.SIGKILL),
        (["--kill-at", str(rng.randrange(5, 12))], -signal.SIGKILL),
    ]
    _run_chain(tmp_path, "lhotse", 16, chain, workers=1)
