"""An exclusive lock on an experiment directory, so that two runs never write the same checkpoints.

``fcntl.flock`` locks belong to the open file and vanish when the holding process dies (even with
SIGKILL), so a lock file left behind by a crashed run never blocks the next one. Forked children
(DataLoader workers) would inherit the lock and keep it for a few seconds after their parent was
killed; they close their copy right after the fork.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from types import TracebackType

__all__ = ["ExpDirLocked", "ExpDirLock"]

_HELD_FDS: set[int] = set()


def _close_in_child() -> None:
    for fd in _HELD_FDS:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_FDS.clear()


os.register_at_fork(after_in_child=_close_in_child)


class ExpDirLocked(RuntimeError):
    """Another live process holds the lock of the experiment directory."""


class ExpDirLock:
    """``with ExpDirLock(exp_dir): ...`` holds ``<exp_dir>/.lock`` exclusively (non-blocking)."""

    def __init__(self, exp_dir: str | Path) -> None:
        self.path = Path(exp_dir) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> ExpDirLock:
        """Take the lock or raise :class:`ExpDirLocked` naming the holder."""
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown process"
            os.close(fd)
            raise ExpDirLocked(
                f"experiment directory '{self.path.parent}' is in use by another run ({holder}); "
                "wait for it to finish, stop it, or choose another exp_dir"
            ) from None
        os.ftruncate(fd, 0)
        info = f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        os.pwrite(fd, info.encode(), 0)
        self._fd = fd
        _HELD_FDS.add(fd)
        return self

    def release(self) -> None:
        """Drop the lock (the file stays; an unlocked file means nothing)."""
        if self._fd is None:
            return
        _HELD_FDS.discard(self._fd)
        try:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> ExpDirLock:
        return self.acquire()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
