"""The code style is checked by ruff (settings in ruff.toml): lint rules and formatting, on the whole repository."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args", [["check", "--no-cache"], ["format", "--check", "--no-cache"]], ids=["lint", "format"])
def test_ruff(args: list[str]) -> None:
    r = subprocess.run([sys.executable, "-m", "ruff", *args, "."], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, (
        f"ruff {' '.join(args)} found problems (fix: ruff check --fix . && ruff format .):\n"
        + (r.stdout + r.stderr)[-5000:]
    )
