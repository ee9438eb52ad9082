"""The shipped demo teacher (egs/inhouse/demo-teacher): a Hugging Face wav2vec 2.0 directory that the
default recipe imports, whose card states the greedy test WER it was shipped with.

The test synthesises the demo corpus's test split (unseen voices and sentences; ``--splits test`` makes
exactly the split of the default corpus) and re-measures that WER through the transcribe CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs" / "inhouse"
TEACHER = RECIPE / "demo-teacher"
TOLERANCE = 2.0  # absolute WER points (festival's HTS voice may differ by a few LSB between runs)


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads((TEACHER / "card.json").read_text())


def test_shipped_teacher_is_a_small_hf_directory(card):
    from distill.models import load_pretrained

    for f in (
        "config.json",
        "model.safetensors",
        "tokens.txt",
        "card.json",
        "README.md",
        "train.yaml",
        "train_log.jsonl",
        "train.log",
    ):
        assert (TEACHER / f).is_file(), f"demo teacher lacks {f}"
    size_mb = (TEACHER / "model.safetensors").stat().st_size / 2**20
    assert size_mb <= 15.0 and abs(size_mb - card["size_mb"]) < 0.01
    model = load_pretrained(TEACHER)
    assert sum(p.numel() for p in model.parameters()) == card["params"]
    assert model.config.vocab_size == len((TEACHER / "tokens.txt").read_text().splitlines())
    # the card's README states the WER and the exact command; the training record is there
    readme = (TEACHER / "README.md").read_text()
    assert f"{card['test_wer']['wer']:.2f} %" in readme and card["command"].strip() in readme
    assert "python -m distill.bin.train --config conf/teacher_large.yaml" in card["command"]
    assert card["training"]["updates"] > 0


def test_default_recipe_imports_the_shipped_teacher():
    cfg = yaml.safe_load((RECIPE / "conf" / "teacher.yaml").read_text())
    assert cfg["model"]["init"] == "pretrained"
    assert (RECIPE / cfg["model"]["path"]).resolve() == TEACHER.resolve()


@pytest.mark.slow
def test_shipped_teacher_wer_matches_its_card(card, tmp_path):
    """Greedy WER on the regenerated demo test set within 2 absolute points of the card's value."""
    from distill.models.package import greedy_test_wer

    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "local" / "make_demo_corpus.py"),
            "--out",
            str(out),
            "--size",
            "default",
            "--seed",
            "0",
            "--splits",
            "test",
            "--nj",
            "2",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    test = out / "kaldi" / "test"
    got = greedy_test_wer(TEACHER, test)
    want = card["test_wer"]
    assert got["num_utts"] == want["num_utts"] and got["ref_words"] == want["ref_words"]
    assert abs(got["wer"] - want["wer"]) <= TOLERANCE, (got, want)
