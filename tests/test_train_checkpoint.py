"""Checkpoint files, experiment-directory lock, averaging and RNG capture (distill.train)."""

from __future__ import annotations

import errno
import logging
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.train import checkpoint as ck
from distill.train.averaging import average_checkpoints, average_state_dicts
from distill.train.lock import ExpDirLock, ExpDirLocked


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_atomic_save_roundtrip_weights_only(tmp_path: Path) -> None:
    obj = {
        "format": ck.CKPT_FORMAT,
        "model": {"w": torch.arange(4.0)},
        "trainer": {"step": 3},
        "rng": ck.rng_state(),
        "nested": [1, 2.5, "x", None, (1, 2)],
    }
    p = ck.atomic_save(obj, tmp_path / "ckpt-00000003.pt")
    back = ck.load(p)  # weights_only=True inside
    assert torch.equal(back["model"]["w"], obj["model"]["w"]) and back["trainer"]["step"] == 3
    assert _files(tmp_path) == ["ckpt-00000003.pt"]


def _half_then(exc: BaseException):
    def write(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        f.flush()
        raise exc

    return write


def _torch_save_disk_full(obj, f):
    """torch.save into a file that runs out of space after 1000 bytes (torch wraps the OSError)."""

    class Full:
        n = 0

        def write(self, b):
            self.n += len(b)
            if self.n > 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return f.write(b)

        def flush(self):
            f.flush()

    torch.save(obj, Full())


@pytest.mark.parametrize(
    "writer,match",
    [
        (
            _half_then(OSError(errno.ENOSPC, "No space left on device")),
            "no space left on device.*previous file is intact",
        ),
        (_torch_save_disk_full, "no space left on device.*previous file is intact"),
        (_half_then(RuntimeError("serialiser exploded half-way")), "serialiser exploded"),
    ],
)
def test_failed_write_keeps_previous_and_leaves_nothing(tmp_path: Path, monkeypatch, writer, match) -> None:
    target = tmp_path / "ckpt-00000002.pt"
    ck.atomic_save({"format": ck.CKPT_FORMAT, "v": torch.ones(3)}, target)
    before = target.read_bytes()
    monkeypatch.setattr(ck, "_write", writer)
    with pytest.raises((ck.CheckpointError, RuntimeError), match=match):
        ck.atomic_save({"format": ck.CKPT_FORMAT, "v": torch.zeros(3000)}, target)
    assert target.read_bytes() == before
    assert _files(tmp_path) == ["ckpt-00000002.pt"]  # no temp file left


def test_enospc_on_new_file_names_it(tmp_path: Path, monkeypatch) -> None:
    ck.atomic_save({"format": ck.CKPT_FORMAT}, ck.checkpoint_path(tmp_path, 2))
    monkeypatch.setattr(ck, "_write", _half_then(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(ck.CheckpointError, match=r"ckpt-00000004\.pt': no space left on device"):
        ck.atomic_save({"format": ck.CKPT_FORMAT}, ck.checkpoint_path(tmp_path, 4))
    found = ck.latest_valid_checkpoint(tmp_path)
    assert found is not None and found[0].name == "ckpt-00000002.pt"
    assert _files(tmp_path) == ["ckpt-00000002.pt"]


def test_latest_valid_skips_truncated_and_foreign(tmp_path: Path, caplog) -> None:
    for s in (2, 4, 6):
        ck.atomic_save({"format": ck.CKPT_FORMAT, "trainer": {"step": s}}, ck.checkpoint_path(tmp_path, s))
    newest = ck.checkpoint_path(tmp_path, 6)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # truncated, as after a crash without atomic writes
    ck.atomic_save({"format": "something-else"}, ck.checkpoint_path(tmp_path, 5))
    (tmp_path / ".ckpt-00000008.pt.tmp-123").write_bytes(b"partial")  # leftover of a killed write
    with caplog.at_level(logging.WARNING):
        path, obj = ck.latest_valid_checkpoint(tmp_path)
    assert path.name == "ckpt-00000004.pt" and obj["trainer"]["step"] == 4
    assert "ckpt-00000006.pt' is unreadable" in caplog.text and "not a training checkpoint" in caplog.text
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [2, 4, 5, 6]  # temp files are never listed
    assert [p.name for p in ck.remove_stale_temp_files(tmp_path)] == [".ckpt-00000008.pt.tmp-123"]
    assert [p.name for p in ck.prune_checkpoints(tmp_path, 2)] == ["ckpt-00000002.pt", "ckpt-00000004.pt"]


def test_rng_state_roundtrip() -> None:
    st = ck.rng_state()
    a = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    ck.set_rng_state(st)
    b = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    assert a == b


def test_model_file_and_filter(tmp_path: Path) -> None:
    state = {
        "student.w": torch.ones(2),
        "student.b": torch.zeros(1),
        "teacher.w": torch.ones(5),
        "proj.w": torch.ones(1),
    }
    kept = ck.filter_state(state, ("teacher.",), "student.")
    assert set(kept) == {"w", "b"}
    ck.save_model_file(kept, tmp_path / "m.pt", step=7, metrics={"wer": 1.5})
    assert set(ck.load_model_state(tmp_path / "m.pt")) == {"w", "b"}
    assert ck.load(tmp_path / "m.pt")["metrics"] == {"wer": 1.5}
    torch.save({"not": "ours"}, tmp_path / "x.pt")
    with pytest.raises(ck.CheckpointError, match="neither a distill model file"):
        ck.load_model_state(tmp_path / "x.pt")
    with pytest.raises(ck.CheckpointError, match="does not exist"):
        ck.load(tmp_path / "missing.pt")


def test_average_checkpoints(tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        st = {
            "w": torch.full((2, 2), float(i), dtype=torch.float32),
            "h": torch.tensor([i], dtype=torch.float16),
            "n": torch.tensor(10 * i),
        }
        paths.append(ck.save_model_file(st, tmp_path / f"m{i}.pt"))
    avg = average_checkpoints(paths, tmp_path / "avg.pt")
    assert torch.equal(avg["w"], torch.ones(2, 2)) and avg["w"].dtype == torch.float32
    assert avg["h"].dtype == torch.float16 and float(avg["h"]) == 1.0
    assert int(avg["n"]) == 20  # integer buffers come from the last checkpoint
    assert ck.load(tmp_path / "avg.pt")["averaged_from"] == ["m0.pt", "m1.pt", "m2.pt"]
    with pytest.raises(ck.CheckpointError, match="different keys"):
        average_state_dicts([{"a": torch.ones(1)}, {"b": torch.ones(1)}], ["x.pt", "y.pt"])
    with pytest.raises(ck.CheckpointError, match="key 'a' has shape"):
        average_state_dicts([{"a": torch.ones(1)}, {"a": torch.ones(2)}])


def test_lock_refuses_second_holder(tmp_path: Path) -> None:
    with ExpDirLock(tmp_path) as lock:
        assert lock.held
        with pytest.raises(ExpDirLocked, match=r"is in use by another run \(pid \d+"):
            ExpDirLock(tmp_path).acquire()
    ExpDirLock(tmp_path).acquire().release()  # free again


def test_stale_lock_of_a_killed_process_does_not_block(tmp_path: Path) -> None:
    code = (
        "import fcntl,os,sys,time; fd=os.open(sys.argv[1], os.O_RDWR|os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'pid x'); print('locked', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(ExpDirLocked):
            ExpDirLock(tmp_path).acquire()
    finally:
        proc.kill()  # SIGKILL: no chance to unlock
        proc.wait()
    t0 = time.monotonic()
    ExpDirLock(tmp_path).acquire().release()
    assert time.monotonic() - t0 < 1.0


def test_forked_children_do_not_hold_the_lock(tmp_path: Path) -> None:
    """A DataLoader worker forked by a run must not keep the lock after the run is killed."""
    import os
    import signal

    lock = ExpDirLock(tmp_path).acquire()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the "worker": outlives the lock holder for a while
        os.close(r)
        os.write(w, b"x")
        time.sleep(30)
        os._exit(0)
    try:
        os.close(w)
        os.read(r, 1)
        lock.release()  # the parent lets go (as if it died) ...
        ExpDirLock(tmp_path).acquire().release()  # ... and the child does not block a new run
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
