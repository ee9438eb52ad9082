"""Kaldi ``wav.scp`` pipe commands (``cmd |``): the one place the toolkit runs a shell command on data.

That is the format's purpose (a ``wav.scp`` is trusted like a script); stage 0 runs each pipe once to
measure it and ``transcribe --wav-scp`` runs it to read the audio. A pipe that hangs is killed after a
timeout (stage 0: ``pipe_timeout`` in the data config; transcribe: ``--pipe-timeout``) together with
every process it started: the command runs in its own session, and the whole process group is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess

# seconds a wav.scp `cmd |` may run before it is killed with its children
DEFAULT_PIPE_TIMEOUT = 600.0


class PipeError(RuntimeError):
    """A ``wav.scp`` pipe command timed out or failed; ``timed_out`` tells which."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


def command_head(cmd: str, words: int = 4, chars: int = 60) -> str:
    """The first few words of a command, for messages (``'sox a.flac -t wav ...'``)."""
    parts = cmd.split()
    head = " ".join(parts[:words])
    if len(head) > chars:
        head = head[: chars - 3].rstrip() + "..."
    elif len(parts) > words:
        head += " ..."
    return f'"{head}"' if "'" in head else f"'{head}'"


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the whole process group ``proc`` leads (the shell and every child it started), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            f.close()
    proc.wait()


def run_pipe(cmd: str, timeout: float = DEFAULT_PIPE_TIMEOUT) -> bytes:
    """Run a Kaldi ``wav.scp`` pipe command (without the trailing ``|``) and return what it writes.

    The one place that runs data commands through a shell (that is the format's purpose). The command
    gets its own session (process group); when it has not finished after ``timeout`` seconds, or the
    caller is interrupted, the whole group is killed, so no child of the pipe (``sox ... | sox ...``, a
    ``sleep``) outlives it. Raises :class:`PipeError` naming the command's first words.
    """
    proc = subprocess.Popen(
        cmd,
        shell=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,  # noqa: S602
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise PipeError(
            f"command {command_head(cmd)} did not finish within the pipe timeout of {timeout:g} s; "
            "it was killed with its child processes",
            timed_out=True,
        ) from None
    except BaseException:
        _kill_group(proc)
        raise
    if proc.returncode != 0:
        lines = err.decode("utf-8", "replace").strip().splitlines()
        raise PipeError(
            f"command {command_head(cmd)} exited with status {proc.returncode}" + (f": {lines[-1]}" if lines else "")
        )
    return out
