"""Fault injection, processes: ``python -m distill.bin.train`` (tiny teacher of egs/inhouse/conf/tiny, CPU)
killed at random updates and in the middle of a checkpoint write, and a second run started on the same
experiment directory.

Per seed, one chain of processes on one exp dir, compared with an uninterrupted reference run:

1. run A is frozen (SIGSTOP) as soon as its log shows a randomly drawn update; run B, started on the same
   exp dir with another learning rate, must exit 1 naming A's pid, and leave every file as it was;
   then A gets SIGKILL;
2. run C resumes and is killed half-way through writing a randomly drawn later checkpoint (the
   ``DISTILL_TEST_KILL_IN_WRITE`` hook of distill/train/checkpoint.py): the previous checkpoint must
   still load and be the newest valid one, and the partial file is only a hidden temporary;
3. run D resumes from that previous checkpoint and finishes: its final parameters (last.pt, avg2.pt, the
   exported model) are bit-identical to the reference run's.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_train_stages as stages  # noqa: E402  (tests/ is on sys.path under pytest)
import torch

from distill.train import checkpoint as ck

REPO = Path(__file__).resolve().parents[1]
MAX_STEPS = 10  # 4 batches per epoch: the runs cross epoch boundaries
CKPT_EVERY = 2


def train_cmd(lang: Path, exp: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "distill.bin.train",
        "--config",
        str(REPO / "egs/inhouse/conf/tiny/teacher.yaml"),
        f"lang_dir={lang}",
        f"exp_dir={exp}",
        f"train.max_steps={MAX_STEPS}",
        f"train.checkpoint_interval={CKPT_EVERY}",
        "train.log_interval=1",
        "train.progress=false",
        "data.max_duration=2.5",
        "data.valid_max_batches=1",
        "num_threads=1",
        *extra,
    ]


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != ck.KILL_IN_WRITE_ENV}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def run(cmd: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(**env), timeout=600)


def snapshot(d: Path) -> dict[str, str]:
    """Every file under ``d`` with the SHA-1 of its content."""
    return {
        str(p.relative_to(d)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()
    }


def logged_step(exp: Path) -> int:
    """The newest update of the jsonl training log (0 before the first one)."""
    jl = exp / "train_log.jsonl"
    steps = [0]
    if jl.exists():
        for line in jl.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("type") == "train":
                steps.append(int(rec["step"]))
    return max(steps)


def final_state(exp: Path) -> dict[str, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    return {
        "last.pt": ck.load_model_state(exp / "last.pt"),
        "avg2.pt": ck.load_model_state(exp / "avg2.pt"),
        "model": load_file(str(exp / "model" / "model.safetensors")),
    }


@pytest.fixture(scope="module")
def lang_dir(tmp_path_factory) -> Path:
    return stages.make_lang(tmp_path_factory.mktemp("faults_process"))


@pytest.fixture(scope="module")
def reference(lang_dir: Path, tmp_path_factory):
    """The lang dir, and the uninterrupted reference run (started here, awaited by the first user)."""
    lang = lang_dir
    exp = tmp_path_factory.mktemp("faults_process_ref") / "reference"
    proc = subprocess.Popen(
        train_cmd(lang, exp), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env()
    )
    state: dict = {}

    def result() -> dict[str, dict[str, torch.Tensor]]:
        if not state:
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-3000:]
            state.update(final_state(exp))
        return state

    yield lang, result
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def kill_and_refuse_second_run(lang: Path, exp: Path, rng: random.Random) -> None:
    """Run A to a random update and a random moment after it, freeze it; B on the same exp dir is refused
    and changes nothing; then A is SIGKILLed."""
    k1 = rng.randint(CKPT_EVERY + 1, MAX_STEPS - 3)
    a = subprocess.Popen(train_cmd(lang, exp), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        t0 = time.monotonic()
        while logged_step(exp) < k1:
            assert a.poll() is None, f"run A ended early ({a.returncode}): {a.stderr.read()[-3000:]}"
            assert time.monotonic() - t0 < 300, f"run A did not reach update {k1}"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.1))
        os.kill(a.pid, signal.SIGSTOP)
        before = snapshot(exp)
        b = run(train_cmd(lang, exp, "train.optim.lr=0.5"))
        assert b.returncode == 1, b.stderr[-3000:]
        assert f"experiment directory '{exp}' is in use by another run (pid {a.pid}" in b.stderr, b.stderr[-2000:]
        assert "Traceback" not in b.stderr
        assert snapshot(exp) == before, "the refused run must not touch the running one's files"
        os.kill(a.pid, signal.SIGKILL)
        a.wait(timeout=60)
        assert a.returncode == -signal.SIGKILL
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    assert not (exp / "model").exists()


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_kills_and_a_second_run_then_resume_bit_exact(reference, tmp_path: Path, seed: int) -> None:
    lang, ref_state = reference
    rng = random.Random(seed)

    # 1. A runs until a random update (after the first checkpoint, so that every resume loads one) and
    # a random moment after it, is frozen; B on the same exp dir is refused and changes nothing. A tiny
    # model on an idle machine can write its last checkpoint within that moment; then part 2 has no
    # later checkpoint to die in, and part 1 is repeated on a fresh directory.
    for attempt in range(5):
        exp = tmp_path / f"exp{attempt}"
        ckdir = exp / "checkpoints"
        kill_and_refuse_second_run(lang, exp, rng)
        if max((s for s, _ in ck.list_checkpoints(ckdir)), default=0) < MAX_STEPS:
            break
    else:
        pytest.fail("run A wrote its last checkpoint before it could be frozen, 5 times")

    # 2. C resumes and dies half-way through writing a later checkpoint
    done = [s for s, _ in ck.list_checkpoints(ckdir)]
    resume_at = max(done, default=0)
    k2 = rng.choice([s for s in range(CKPT_EVERY, MAX_STEPS + 1, CKPT_EVERY) if s > resume_at])
    target = ck.checkpoint_path(ckdir, k2)
    c = run(train_cmd(lang, exp), **{ck.KILL_IN_WRITE_ENV: target.name})
    assert c.returncode == -signal.SIGKILL, c.stderr[-3000:]
    partial = [p for p in ckdir.iterdir() if p.name.startswith(f".{target.name}.tmp-")]
    assert len(partial) == 1 and partial[0].stat().st_size > 0, sorted(p.name for p in ckdir.iterdir())
    assert not target.exists()
    prev = ck.checkpoint_path(ckdir, k2 - CKPT_EVERY)
    found = ck.latest_valid_checkpoint(ckdir)
    assert found is not None and found[0] == prev, found
    assert found[1]["trainer"]["step"] == k2 - CKPT_EVERY  # intact: it loads, with its own content

    # 3. D resumes from the previous checkpoint and finishes like the uninterrupted run
    d = run(train_cmd(lang, exp))
    assert d.returncode == 0, d.stderr[-3000:]
    log = (exp / "train.log").read_text()
    assert "left by an interrupted checkpoint write" in log
    assert log.count("resumed from") == 2 and f"resumed from {prev}" in log
    assert not [p for p in ckdir.iterdir() if ".tmp-" in p.name]
    got, want = final_state(exp), ref_state()
    for name in want:
        assert want[name].keys() == got[name].keys(), name
        for key in want[name]:
            assert torch.equal(want[name][key], got[name][key]), f"{name}: {key} differs from the uninterrupted run"


# scheduled checkpoints at 10 and 20 (keep_last 2, avg2.pt = their mean): a signal anywhere in 11..19 puts an
# extra checkpoint between them, which must neither push ckpt-10 out of the rotation nor enter the average
SIG_RUN = ("train.max_steps=20", "train.checkpoint_interval=10")


def test_signal_then_resume_gives_the_uninterrupted_models(lang_dir: Path, tmp_path: Path) -> None:
    """SIGTERM and SIGINT between two scheduled checkpoints, then the same command: last.pt, best.pt, avg2.pt
    and the exported model.safetensors are bit-identical to an uninterrupted run's."""
    from safetensors.torch import load_file

    def start(exp: Path) -> subprocess.Popen:
        return subprocess.Popen(
            train_cmd(lang_dir, exp, *SIG_RUN), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env()
        )

    ref = start(tmp_path / "reference")
    runs = {sig: (tmp_path / sig.name, start(tmp_path / sig.name)) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        pending, t0 = dict(runs), time.monotonic()
        while pending:  # signal each run as soon as it has logged update 10: it stops after update 11 or so
            for sig, (exp, p) in list(pending.items()):
                assert p.poll() is None, f"{sig.name} run ended early ({p.returncode}): {p.stderr.read()[-3000:]}"
                if logged_step(exp) >= 10:
                    os.kill(p.pid, sig)
                    del pending[sig]
            assert time.monotonic() - t0 < 300, "the runs did not reach update 10"
            time.sleep(0.005)
        for sig, (exp, p) in runs.items():
            _, err = p.communicate(timeout=300)
            assert p.returncode == 128 + sig, err[-3000:]
            log = (exp / "train.log").read_text()
            stopped = [int(x.split()[0].rstrip(";")) for x in log.split(f"stopped by {sig.name} at update ")[1:]]
            assert stopped and 10 < stopped[0] < 20, (sig.name, stopped)  # between the two scheduled checkpoints
            assert not (exp / "model").exists() and not (exp / "last.pt").exists()
        resumed = {sig: start(exp) for sig, (exp, _) in runs.items()}
        for sig, p in resumed.items():
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, (sig.name, err[-3000:])
        _, err = ref.communicate(timeout=300)
        assert ref.returncode == 0, err[-3000:]
    finally:
        for p in [ref, *(p for _, p in runs.values())]:
            if p.poll() is None:
                p.kill()
                p.wait()

    def models(exp: Path) -> dict[str, dict[str, torch.Tensor]]:
        out = {name: ck.load_model_state(exp / name) for name in ("last.pt", "best.pt", "avg2.pt")}
        out["model.safetensors"] = load_file(str(exp / "model" / "model.safetensors"))
        return out

    want = models(tmp_path / "reference")
    for sig, (exp, _) in runs.items():
        got = models(exp)
        for name in want:
            assert want[name].keys() == got[name].keys(), (sig.name, name)
            for key in want[name]:
                assert torch.equal(want[name][key], got[name][key]), (
                    f"after {sig.name} and resume, {name}: {key} differs from the uninterrupted run"
                )
        # the signal checkpoint was superseded and removed; the rotation is the uninterrupted one
        assert [s for s, _ in ck.list_checkpoints(exp / "checkpoints")] == [10, 20]
        assert sorted(q.name for q in (exp / "checkpoints").iterdir()) == ["ckpt-00000010.pt", "ckpt-00000020.pt"]
