"""Shared pytest fixtures and markers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# One thread: tiny-model tests are dominated by thread overhead on small shared machines.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """The tiny demo corpus in its three release layouts (Kaldi data dirs, LibriSpeech FLAC tree, GigaSpeech
    ``GigaSpeech.json`` + opus), made once per session for the recipe tests."""
    out = tmp_path_factory.mktemp("corpus") / "demo"
    env = dict(os.environ, VIRTUAL_ENV=sys.prefix, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "local" / "make_demo_corpus.py"),
            "--out",
            str(out),
            "--size",
            "tiny",
            "--layouts",
            "kaldi,librispeech,gigaspeech",
            "--nj",
            "2",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return out
