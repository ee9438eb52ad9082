"""Stage 0 + 1 on LibriSpeech trees: lhotse's own recipe as the oracle, the real LibriVox clips of
pocketsphinx-testdata, both directory layouts, and the exact command lines the recipes run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from lhotse import CutSet, RecordingSet, SupervisionSet
from test_data_helpers import make_librispeech

from distill.bin import prepare_lang, prepare_manifests
from distill.data import Tokenizer, load_cuts, make_dataloader

REPO = Path(__file__).resolve().parents[1]
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")

DATA_YAML = """corpus: librispeech
splits:
  train: [train-clean-100]
  dev: [dev-clean]
  test: [test-clean, test-other]
audio_check: tail
"""
LANG_YAML = """text:
  case: upper
  strip_punctuation: true
tokenizer:
  type: bpe
  vocab_size: 40
filter:
  min_duration: 0.5
  max_duration: 20.0
"""


def _recipe(tmp_path: Path, data_yaml: str = DATA_YAML, lang_yaml: str = LANG_YAML) -> Path:
    (tmp_path / "conf").mkdir(exist_ok=True)
    (tmp_path / "conf" / "data.yaml").write_text(data_yaml)
    (tmp_path / "conf" / "lang.yaml").write_text(lang_yaml)
    return tmp_path


def test_cli_stage0_stage1_end_to_end(tmp_path):
    """The exact commands of run.sh stages 0 and 1, as subprocesses, from the recipe dir."""
    truth = make_librispeech(
        tmp_path / "corpus", {"train-clean-100": 12, "dev-clean": 4, "test-clean": 3, "test-other": 3}
    )
    rd = _recipe(tmp_path)
    env_py = sys.executable
    r0 = subprocess.run(
        [
            env_py,
            "-m",
            "distill.bin.prepare_manifests",
            "--config",
            "conf/data.yaml",
            f"corpus_dir={tmp_path / 'corpus'}",
            "out_dir=data/manifests",
            "nj=2",
        ],
        cwd=rd,
        capture_output=True,
        text=True,
    )
    assert r0.returncode == 0, r0.stderr
    assert "train-clean-100: kept 12, dropped 0" in r0.stderr
    r1 = subprocess.run(
        [
            env_py,
            "-m",
            "distill.bin.prepare_lang",
            "--config",
            "conf/lang.yaml",
            "manifest_dir=data/manifests",
            "lang_dir=data/lang",
        ],
        cwd=rd,
        capture_output=True,
        text=True,
    )
    assert r1.returncode == 0, r1.stderr
    lang = rd / "data" / "lang"
    for f in (
        "tokens.txt",
        "words.txt",
        "lexicon.txt",
        "bpe.model",
        "train_token_ids.txt",
        "train_text.txt",
        "cuts.yaml",
        "summary.json",
        "cuts_train.jsonl.gz",
        "cuts_dev.jsonl.gz",
    ):
        assert (lang / f).is_file(), f
    idx = yaml.safe_load((rd / "data/manifests/splits.yaml").read_text())
    assert idx["splits"]["test"] == ["test-clean", "test-other"]
    assert set(yaml.safe_load((lang / "cuts.yaml").read_text())["test"]) == {"test-clean", "test-other"}
    # texts and durations survive both stages
    for split, parts in (("train", ["train-clean-100"]), ("dev", ["dev-clean"])):
        cuts = {c.id: c for c in load_cuts(lang, split)}
        want = {u: v for p in parts for u, v in truth[p].items()}
        assert set(cuts) == set(want)
        for uid, (dur, text) in want.items():
            assert abs(cuts[uid].duration - dur) < 1e-3
            assert cuts[uid].supervisions[0].text == text
            assert cuts[uid].supervisions[0].custom["orig_text"] == text
    # train_token_ids.txt is the tokenizer's encoding of train_text.txt, line by line, without blanks
    tok = Tokenizer.load(lang)
    texts = (lang / "train_text.txt").read_text(encoding="utf-8").splitlines()
    ids = [list(map(int, line.split())) for line in (lang / "train_token_ids.txt").read_text().splitlines()]
    assert len(texts) == len(ids) == 12
    for t, i in zip(texts, ids):
        assert i == tok.encode(t) and 0 not in i and tok.decode(i) == t
    summary = json.loads((lang / "summary.json").read_text())
    assert summary["splits"]["train-clean-100"]["kept"] == 12


@pytest.mark.parametrize("nested", [True, False])
def test_matches_lhotse_recipe(tmp_path, monkeypatch, nested):
    """Our manifests equal lhotse's ``prepare_librispeech`` on a clean tree, in both layouts."""
    from lhotse.recipes import prepare_librispeech

    make_librispeech(tmp_path / "corpus", {"train-clean-100": 6, "dev-clean": 2}, nested=nested)
    monkeypatch.chdir(_recipe(tmp_path, DATA_YAML.replace("test: [test-clean, test-other]", "")))
    assert prepare_manifests.main(["--config", "conf/data.yaml", f"corpus_dir={tmp_path / 'corpus'}"]) == 0
    base = tmp_path / "corpus" / ("LibriSpeech" if nested else "")
    ref = prepare_librispeech(base, dataset_parts=["train-clean-100", "dev-clean"], num_jobs=1)
    for part in ("train-clean-100", "dev-clean"):
        recs = RecordingSet.from_file(f"data/manifests/librispeech_recordings_{part}.jsonl.gz")
        sups = SupervisionSet.from_file(f"data/manifests/librispeech_supervisions_{part}.jsonl.gz")
        ref_recs = {r.id: r for r in ref[part]["recordings"]}
        ref_sups = {s.id: s for s in ref[part]["supervisions"]}
        assert {r.id for r in recs} == set(ref_recs)
        for r in recs:
            assert r.to_dict() == ref_recs[r.id].to_dict()
        for s in sups:
            assert s.to_dict() == ref_sups[s.id].to_dict()
        cuts = CutSet.from_file(f"data/manifests/librispeech_cuts_{part}.jsonl.gz")
        assert sorted(c.id for c in cuts) == sorted(ref_sups)


def test_bad_librispeech_entries_are_counted(tmp_path, monkeypatch):
    """Empty line text, missing/unreadable FLAC, duplicate id, non-UTF-8 line, FLAC without transcript."""
    make_librispeech(tmp_path / "corpus", {"train-clean-100": 6}, speakers=("19",))
    chap = tmp_path / "corpus" / "LibriSpeech" / "train-clean-100" / "19" / "100"
    trans = chap / "19-100.trans.txt"
    lines = trans.read_bytes().splitlines()
    (chap / "19-100-0001.flac").unlink()  # missing audio
    (chap / "19-100-0002.flac").write_bytes(b"not a flac")  # unreadable audio
    lines[3] = b"19-100-0003"  # empty transcript
    lines.append(lines[0].split()[0] + b" ANOTHER TEXT")  # duplicate id
    lines.append(b"19-100-0004 CAF\xe9")  # not UTF-8 (the first 0004 line stays)
    trans.write_bytes(b"\n".join(lines) + b"\n")
    (chap / "19-100-0099.flac").write_bytes((chap / "19-100-0000.flac").read_bytes())  # no transcript
    monkeypatch.chdir(_recipe(tmp_path, "corpus: librispeech\nsplits:\n  train: [train-clean-100]\n"))
    assert prepare_manifests.main(["--config", "conf/data.yaml", f"corpus_dir={tmp_path / 'corpus'}"]) == 0
    s = json.loads(Path("data/manifests/summary.json").read_text())["splits"]["train-clean-100"]
    from distill.data import report as R

    assert s["dropped_by_reason"] == {
        R.MISSING_AUDIO: 1,
        R.UNREADABLE_AUDIO: 1,
        R.EMPTY_TRANSCRIPT: 1,
        R.DUPLICATE_ID: 1,
        R.NOT_UTF8: 1,
        R.NO_TRANSCRIPT: 1,
    }
    assert s["kept"] == 3
    ids = {c.id for c in CutSet.from_file("data/manifests/librispeech_cuts_train-clean-100.jsonl.gz")}
    assert ids == {"19-100-0000", "19-100-0004", "19-100-0005"}


def test_missing_part_is_a_clear_error(tmp_path, monkeypatch, caplog):
    make_librispeech(tmp_path / "corpus", {"train-clean-100": 2})
    monkeypatch.chdir(_recipe(tmp_path))
    assert prepare_manifests.main(["--config", "conf/data.yaml", f"corpus_dir={tmp_path / 'corpus'}"]) == 1
    assert "LibriSpeech part 'dev-clean' not found" in caplog.text
    assert "train-clean-100" in caplog.text  # lists what is there


@pytest.mark.skipif(not (LIBRIVOX / "transcription").is_file(), reason="pocketsphinx-testdata not installed")
def test_real_librivox_clips(tmp_path, monkeypatch):
    """Debian's LibriVox clips laid out as LibriSpeech (FLAC + trans.txt) through the librispeech path."""
    want: dict[str, tuple[int, str, np.ndarray]] = {}
    chap = tmp_path / "corpus" / "LibriSpeech" / "train-clean-100" / "1263" / "141"
    chap.mkdir(parents=True)
    lines = []
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        words, fid = line.rsplit("(", 1)
        fid = fid.strip(") ")
        text = " ".join(w for w in words.split() if w not in ("<s>", "</s>")).upper()
        samples, sr = sf.read(LIBRIVOX / f"{fid}.wav", dtype="int16")
        assert sr == 16000
        uid = f"1263-141-{fid.rsplit('-', 1)[1]}"
        sf.write(chap / f"{uid}.flac", samples, sr, subtype="PCM_16")
        lines.append(f"{uid} {text}")
        want[uid] = (len(samples), text, samples.astype(np.float32) / 32768)
    (chap / "1263-141.trans.txt").write_text("\n".join(lines) + "\n")
    assert len(want) == 5
    monkeypatch.chdir(
        _recipe(
            tmp_path,
            "corpus: librispeech\nsplits:\n  train: [train-clean-100]\n",
            "tokenizer:\n  type: char\nfilter:\n  max_duration: 20.0\n",
        )
    )
    assert prepare_manifests.main(["--config", "conf/data.yaml", f"corpus_dir={tmp_path / 'corpus'}"]) == 0
    recs = {r.id: r for r in RecordingSet.from_file("data/manifests/librispeech_recordings_train-clean-100.jsonl.gz")}
    sups = {
        s.id: s for s in SupervisionSet.from_file("data/manifests/librispeech_supervisions_train-clean-100.jsonl.gz")
    }
    assert set(recs) == set(want)
    for uid, (n, text, _) in want.items():
        assert recs[uid].num_samples == n and recs[uid].duration == pytest.approx(n / 16000)
        assert sups[uid].text == text and sups[uid].speaker == "1263"
    assert recs["1263-141-0870"].duration == pytest.approx(7.1)
    assert prepare_lang.main(["--config", "conf/lang.yaml"]) == 0
    tok = Tokenizer.load("data/lang")
    assert tok.kind == "char" and tok.id_to_piece(0) == "<blk>"
    dl = make_dataloader(load_cuts("data/lang", "train"), tok, max_duration=100.0, shuffle=False)
    seen = 0
    for batch in dl:
        for i, uid in enumerate(batch["cut_ids"]):
            n, text, samples = want[uid]
            assert int(batch["audio_lens"][i]) == n
            np.testing.assert_array_equal(batch["audio"][i, :n].numpy(), samples)  # FLAC is lossless
            assert float(batch["audio"][i, n:].abs().sum()) == 0.0
            assert batch["texts"][i] == text and tok.decode(batch["tokens"][i]) == text
            seen += 1
    assert seen == 5
