"""Recipe stages 0-2 of all three recipes, run through their run.sh on the tiny demo corpus in its three
layouts (Kaldi dirs, LibriSpeech tree, GigaSpeech release)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def _env() -> dict:
    env = dict(os.environ)
    env["VIRTUAL_ENV"] = sys.prefix
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "demo"
    r = subprocess.run(
        [sys.executable, str(REPO / "local" / "make_demo_corpus.py"), "--out", str(out), "--size", "tiny",
         "--layouts", "kaldi,librispeech,gigaspeech", "--nj", "2"],
        capture_output=True, text=True, env=_env(),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def recipe_copy(tmp_path: Path, name: str, vocab_size: int = 40) -> Path:
    """A copy of egs/<name> (configs may be edited) whose utils/ and path.sh lead back to this checkout."""
    d = tmp_path / "egs" / name
    shutil.copytree(REPO / "egs" / name, d, symlinks=True, ignore=shutil.ignore_patterns("data", "exp", "download"))
    (tmp_path / "utils").symlink_to(REPO / "utils")
    lang = d / "conf" / "lang.yaml"
    cfg = yaml.safe_load(lang.read_text())
    cfg["tokenizer"]["vocab_size"] = vocab_size  # the tiny corpus has too little text for the real size
    lang.write_text(yaml.safe_dump(cfg))
    return d


def run_recipe(d: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(d / "run.sh"), *args], capture_output=True, text=True, env=_env())


def check_outputs(d: Path, splits: dict[str, int]) -> None:
    index = yaml.safe_load((d / "data" / "manifests" / "splits.yaml").read_text())
    assert set(index["splits"]) >= {"train", "dev", "test"}
    lang = d / "data" / "lang"
    for f in ["tokens.txt", "words.txt", "lexicon.txt", "bpe.model", "train_token_ids.txt", "train_text.txt", "cuts.yaml"]:
        assert (lang / f).is_file() and (lang / f).stat().st_size > 0, f
    tokens = [line.split() for line in (lang / "tokens.txt").read_text().splitlines()]
    assert tokens[0] == ["<blk>", "0"]
    summary = json.loads((lang / "summary.json").read_text())
    assert summary, "stage 1 summary is empty"
    # stage 2: the denominator graph and the token LM it came from
    assert (lang / "P.arpa").is_file() and (lang / "den.pt").is_file()
    from distill.graph import Fsa

    den = Fsa.load(lang / "den.pt")
    assert int(den.label.max()) == len(tokens) - 1 and int(den.label.min()) >= 0
    n_train = len((lang / "train_text.txt").read_text().splitlines())
    assert n_train == len((lang / "train_token_ids.txt").read_text().splitlines())
    assert n_train >= splits["train"] * 0.8


def corpus_counts(corpus: Path) -> dict[str, int]:
    return {s: len((corpus / "kaldi" / s / "text").read_text().splitlines()) for s in ("train", "dev", "test")}


def test_inhouse_kaldi_dirs(tmp_path, corpus):
    d = recipe_copy(tmp_path, "inhouse")
    r = run_recipe(d, "--stop-stage", "2", "--corpus-dir", str(corpus / "kaldi"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Stage 0 (data): started" in r.stderr and "Stage 2 (denominator graph): finished" in r.stderr
    check_outputs(d, corpus_counts(corpus))
    # a second run skips both stages; a later stage that does not exist yet fails clearly
    r = run_recipe(d, "--stop-stage", "2", "--corpus-dir", str(corpus / "kaldi"))
    assert r.returncode == 0 and r.stderr.count("already done") == 3


def test_librispeech_tree(tmp_path, corpus):
    d = recipe_copy(tmp_path, "librispeech")
    r = run_recipe(d, "--stop-stage", "2", "--corpus-dir", str(corpus), "--parts",
                   "train-clean-100 dev-clean test-clean")
    assert r.returncode == 0, r.stderr[-3000:]
    check_outputs(d, corpus_counts(corpus))
    ids = {line.split()[0] for line in (corpus / "kaldi" / "test" / "text").read_text().splitlines()}
    import lhotse

    test_cuts = yaml.safe_load((d / "data" / "lang" / "cuts.yaml").read_text())["test"]
    got = set()
    for path in test_cuts.values():
        got |= {c.supervisions[0].id for c in lhotse.CutSet.from_file(d / "data" / "lang" / path)}
    assert got == ids


def test_gigaspeech_release(tmp_path, corpus):
    d = recipe_copy(tmp_path, "gigaspeech")
    r = run_recipe(d, "--stop-stage", "2", "--corpus-dir", str(corpus / "GigaSpeech"), "--subsets", "XS DEV TEST")
    assert r.returncode == 0, r.stderr[-3000:]
    check_outputs(d, corpus_counts(corpus))
    summary = json.loads((d / "data" / "manifests" / "summary.json").read_text())
    assert "garbage" in json.dumps(summary).lower(), "garbage-only segments should be dropped and counted"
    text = (d / "data" / "lang" / "train_text.txt").read_text()
    assert "<COMMA>" not in text and "<PERIOD>" not in text


def test_inhouse_demo_default_path(tmp_path):
    """Without --corpus-dir the inhouse recipe generates the demo corpus itself."""
    d = recipe_copy(tmp_path, "inhouse")
    r = run_recipe(d, "--stop-stage", "2", "--demo-size", "tiny")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (d / "download" / "demo" / "kaldi" / "train" / "wav.scp").is_file()
    check_outputs(d, corpus_counts(d / "download" / "demo"))
