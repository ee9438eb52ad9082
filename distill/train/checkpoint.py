"""Crash-safe checkpoint files.

* :func:`atomic_save` writes to a temporary file in the target directory, fsyncs it, renames it over
  the target with ``os.replace`` and fsyncs the directory: a reader sees the old file or the complete
  new one, never a partial one, whatever happens to the writer (SIGKILL, power loss, ENOSPC).
* Checkpoints hold tensors and plain Python values only, so :func:`load` reads them with
  :func:`distill.safe_load.load` (``weights_only=True``: no arbitrary unpickling; failures raise its
  :class:`~distill.safe_load.CheckpointError`, re-exported here). RNG states are stored as tensors/lists.
* Full training checkpoints live in ``<exp_dir>/checkpoints/ckpt-<step>.pt``; the one written on a
  SIGTERM/SIGINT off the schedule is ``signal-<step>.pt`` there, outside the ``keep_last`` rotation and
  averaging, and removed once a later checkpoint supersedes it. :func:`latest_valid_checkpoint` returns
  the newest one of either kind that loads, warning about broken ones.
* Fault-injection hook for the tests (tests/test_faults_process.py): when the environment variable
  ``DISTILL_TEST_KILL_IN_WRITE`` equals a file name (e.g. ``ckpt-00000004.pt``), the process writes half
  of that file's temporary copy and then SIGKILLs itself, as a crash in the middle of a write would.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import random
import re
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill import safe_load
from distill.safe_load import CKPT_FORMAT, MODEL_FORMAT, CheckpointError, load_error_detail, refused_global

__all__ = [
    "CheckpointError",
    "atomic_save",
    "load",
    "checkpoint_path",
    "list_checkpoints",
    "signal_checkpoint_path",
    "list_signal_checkpoints",
    "remove_signal_checkpoints",
    "resume_candidates",
    "latest_valid_checkpoint",
    "remove_stale_temp_files",
    "prune_checkpoints",
    "rng_state",
    "set_rng_state",
    "save_model_file",
    "load_model_state",
    "CKPT_FORMAT",
    "MODEL_FORMAT",
    # defined in distill.safe_load (the one loader of pickled files), importable from here as before
    "load_error_detail",
    "refused_global",
]

log = logging.getLogger(__name__)

_CKPT_RE = re.compile(r"^ckpt-(\d+)\.pt$")
_SIGNAL_RE = re.compile(r"^signal-(\d+)\.pt$")
_TMP_MARK = ".tmp-"


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _write(obj: Any, f: Any) -> None:
    """Serialise ``obj`` into the open binary file ``f`` (separate so tests can inject failures)."""
    torch.save(obj, f)


KILL_IN_WRITE_ENV = "DISTILL_TEST_KILL_IN_WRITE"


def _write_half_and_die(obj: Any, f: Any) -> None:
    """The test hook of the module docstring: half of the bytes reach the disk, then SIGKILL."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


def _find_os_error(e: BaseException) -> OSError | None:
    """The OSError that caused ``e`` (torch may wrap the file object's error in a RuntimeError)."""
    seen = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, OSError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def atomic_save(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` to ``path`` atomically (temp file + fsync + ``os.replace`` + directory fsync).

    On any failure the temporary file is removed, an existing ``path`` is left untouched and a
    :class:`CheckpointError` names the file and the cause (a full disk is said so plainly).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}{_TMP_MARK}{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            if os.environ.get(KILL_IN_WRITE_ENV) == path.name:
                _write_half_and_die(obj, f)
            _write(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        oe = _find_os_error(e)
        if oe is None:
            raise
        what = "no space left on device" if oe.errno == errno.ENOSPC else (oe.strerror or str(oe))
        prev = "the previous file is intact" if path.exists() else "no previous file existed"
        raise CheckpointError(f"could not write '{path}': {what} ({prev}; nothing partial was left behind)") from e
    _fsync_dir(path.parent)
    return path


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint/model file with ``weights_only=True``; :class:`CheckpointError` if unreadable."""
    path = Path(path)
    obj = safe_load.load(path, map_location, what="checkpoint")
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint '{path}' does not hold a dict (got {type(obj).__name__})")
    return obj


def checkpoint_path(ckpt_dir: str | Path, step: int) -> Path:
    return Path(ckpt_dir) / f"ckpt-{step:08d}.pt"


def signal_checkpoint_path(ckpt_dir: str | Path, step: int) -> Path:
    """Where a checkpoint written because of a signal, off the schedule, goes."""
    return Path(ckpt_dir) / f"signal-{step:08d}.pt"


def _list(ckpt_dir: str | Path, pattern: re.Pattern) -> list[tuple[int, Path]]:
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = pattern.match(p.name)
        if m and p.is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def list_checkpoints(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the scheduled full checkpoints in ``ckpt_dir``, oldest first: the ones that
    rotate (``keep_last``) and are averaged. Signal checkpoints and temp files are not listed."""
    return _list(ckpt_dir, _CKPT_RE)


def list_signal_checkpoints(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the checkpoints written on a signal (``signal-<step>.pt``), oldest first."""
    return _list(ckpt_dir, _SIGNAL_RE)


def remove_signal_checkpoints(ckpt_dir: str | Path, upto_step: int, keep: Path | None = None) -> list[Path]:
    """Delete the signal checkpoints of steps ``<= upto_step`` (but ``keep``): a later checkpoint
    supersedes them. Returns the deleted paths."""
    return _delete(
        [p for s, p in list_signal_checkpoints(ckpt_dir) if s <= upto_step and p != keep],
        "superseded signal checkpoint",
    )


def _delete(paths: list[Path], what: str) -> list[Path]:
    """Delete ``paths`` (a failure is a warning naming the file: a stale checkpoint is no harm)."""
    for p in paths:
        try:
            p.unlink()
        except OSError as e:
            log.warning("could not delete %s %s: %s", what, p, e)
    return paths


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete temporary files left by interrupted writes (they are never valid checkpoints)."""
    d = Path(directory)
    removed = []
    if d.is_dir():
        for p in d.iterdir():
            if _TMP_MARK in p.name and p.name.startswith("."):
                try:
                    p.unlink()
                    removed.append(p)
                except OSError as e:
                    log.warning("could not remove stale temporary file %s: %s", p, e)
    for p in removed:
        log.warning("removed %s left by an interrupted checkpoint write", p)
    return removed


def resume_candidates(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """Scheduled and signal checkpoints, oldest first; at equal steps the scheduled one counts as newer."""
    tagged = [(s, 1, p) for s, p in list_checkpoints(ckpt_dir)] + [
        (s, 0, p) for s, p in list_signal_checkpoints(ckpt_dir)
    ]
    return [(s, p) for s, _, p in sorted(tagged)]


def latest_valid_checkpoint(ckpt_dir: str | Path) -> tuple[Path, dict] | None:
    """The newest checkpoint (scheduled or signal) that loads and has the expected format, with its content.

    Broken ones (truncated, corrupt, foreign) are skipped with a warning naming them; they are not
    deleted, so that a person can look at them.
    """
    for _step, p in reversed(resume_candidates(ckpt_dir)):
        try:
            obj = load(p)
        except CheckpointError as e:
            log.warning("skipping %s; falling back to an older checkpoint", e)
            continue
        if obj.get("format") != CKPT_FORMAT:
            log.warning(
                "skipping '%s': not a training checkpoint (format=%r); falling back to an older checkpoint",
                p,
                obj.get("format"),
            )
            continue
        return p, obj
    return None


def prune_checkpoints(ckpt_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` full checkpoints; returns the deleted paths."""
    ckpts = list_checkpoints(ckpt_dir)
    return _delete([p for _, p in ckpts[:-keep_last]] if keep_last > 0 else [], "old checkpoint")


def rng_state() -> dict:
    """Python, NumPy, torch CPU and CUDA generator states as tensors / plain lists."""
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((npst[0], npst[1].numpy().astype(np.uint32), npst[2], npst[3], npst[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            log.warning(
                "checkpoint has %d CUDA RNG states but %d devices are visible; CUDA RNG not restored",
                len(cuda),
                torch.cuda.device_count(),
            )


def filter_state(
    state: Mapping[str, torch.Tensor], exclude: tuple[str, ...] = (), prefix: str = ""
) -> dict[str, torch.Tensor]:
    """Keys not starting with any ``exclude`` prefix; when ``prefix`` is set, only keys under it, stripped."""
    out = {}
    for k, v in state.items():
        if exclude and k.startswith(exclude):
            continue
        if prefix:
            if not k.startswith(prefix):
                continue
            k = k[len(prefix) :]
        out[k] = v
    return out


def save_model_file(state: Mapping[str, torch.Tensor], path: str | Path, **meta: Any) -> Path:
    """Write a model file: ``{"format", "model": state_dict, **meta}`` (meta: plain values only)."""
    obj = {"format": MODEL_FORMAT, "model": {k: v.detach().cpu() for k, v in state.items()}}
    obj.update(meta)
    return atomic_save(obj, path)


def load_model_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The model ``state_dict`` held by a model file or a full training checkpoint."""
    obj = load(path)
    if obj.get("format") not in (MODEL_FORMAT, CKPT_FORMAT) or "model" not in obj:
        raise CheckpointError(
            f"'{path}' is neither a distill model file nor a training checkpoint (format={obj.get('format')!r})"
        )
    return obj["model"]
