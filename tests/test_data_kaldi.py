"""Stage 0 + 1 on Kaldi data dirs (the in-house path), including every kind of bad input.

A messy corpus is built with one utterance per failure mode; stages 0 and 1 must finish, keep every
good utterance, and count each bad one under its reason in the printed summary and summary.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet
from test_data_helpers import sentence, write_audio

from distill.bin import prepare_lang, prepare_manifests
from distill.data import Tokenizer, load_cuts, make_dataloader
from distill.data import report as R

pytestmark = pytest.mark.skipif(shutil.which("sox") is None, reason="needs sox for the wav.scp pipe entries")

DATA_YAML = """corpus: kaldi
splits:
  train: [train]
  dev: [dev]
  test: [test]
"""
LANG_YAML = """tokenizer:
  type: {tok}
  vocab_size: 40
filter:
  min_duration: 0.5
  max_duration: 30.0
"""


def _write(path: Path, lines: list[str | bytes]) -> None:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode("utf-8")) + b"\n" for x in lines))


def build_messy_corpus(root: Path) -> dict:
    """Kaldi dirs train/dev/test; returns what the stages should report."""
    rng = np.random.default_rng(0)
    audio = root / "audio"
    good = {}
    wav, text = [], []
    for i in range(12):
        uid = f"spk{i % 3}-good{i:02d}"
        p = write_audio(audio / f"{uid}.wav", float(rng.uniform(1.0, 2.5)), seed=i)
        good[uid] = sentence(rng)
        wav.append(f"{uid} {p}")
        text.append(f"{uid} {good[uid]}")
    # a pipe entry, an 8 kHz stereo file, a 30-minute file, a transcript of only punctuation,
    # a too-short file, a file whose transcript cannot fit the CTC frames
    p = write_audio(audio / "pipe.flac", 1.5, seed=50)
    wav.append(f"spk0-pipe sox {p} -t wav - |")
    text.append("spk0-pipe THE DOG RAN")
    good["spk0-pipe"] = "THE DOG RAN"
    t = np.arange(16000) / 8000
    tone = np.sin(2 * np.pi * 300 * t)
    p = audio / "stereo8k.wav"
    sf.write(p, np.stack([0.8 * tone, 0.4 * tone], axis=1).astype(np.float32), 8000)
    wav.append(f"spk1-stereo {p}")
    text.append("spk1-stereo A LAZY FOX")
    good["spk1-stereo"] = "A LAZY FOX"
    long = audio / "long.flac"
    with sf.SoundFile(long, "w", 16000, 1, "PCM_16") as f:
        for _ in range(30):
            f.write(np.zeros(16000 * 60, dtype=np.int16))
    wav.append(f"spk2-long {long}")
    text.append("spk2-long THE END")
    p = write_audio(audio / "punct.wav", 1.0, seed=52)
    wav.append(f"spk0-punct {p}")
    text.append("spk0-punct ?! ... , -- '")
    p = write_audio(audio / "short.wav", 0.3, seed=53)
    wav.append(f"spk0-short {p}")
    text.append("spk0-short A DOG")
    p = write_audio(audio / "nofit.wav", 0.6, seed=54)
    wav.append(f"spk0-nofit {p}")
    text.append("spk0-nofit " + " ".join(["THE QUICK BROWN FOX"] * 6))
    # bad audio
    wav.append(f"spk0-missing {audio / 'does_not_exist.wav'}")
    text.append("spk0-missing THE DOG")
    (audio / "zero.wav").write_bytes(b"")
    wav.append(f"spk0-zero {audio / 'zero.wav'}")
    text.append("spk0-zero THE DOG")
    (audio / "notaudio.wav").write_text("<html>certainly not audio</html>\n" * 20)
    wav.append(f"spk0-notaudio {audio / 'notaudio.wav'}")
    text.append("spk0-notaudio THE DOG")
    p = write_audio(audio / "trunc.flac", 3.0, seed=55)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    wav.append(f"spk0-trunc {p}")
    text.append("spk0-trunc THE DOG")
    wav.append("spk0-badpipe false |")
    text.append("spk0-badpipe THE DOG")
    # bad text / ids
    p = write_audio(audio / "empty.wav", 1.0, seed=56)
    wav.append(f"spk0-empty {p}")
    text.append("spk0-empty")
    text.append("spk0-onlytext THE DOG")  # no wav.scp entry
    p = write_audio(audio / "onlywav.wav", 1.0, seed=57)
    wav.append(f"spk0-onlywav {p}")  # no transcript
    text.append("spk0-good00 A DIFFERENT TRANSCRIPT")  # duplicate id: the first line wins
    p = write_audio(audio / "latin1.wav", 1.0, seed=58)
    wav.append(f"spk0-latin1 {p}")
    text.append(b"spk0-latin1 CAF\xe9 AU LAIT")
    d = root / "train"
    d.mkdir(parents=True)
    _write(d / "wav.scp", wav)
    _write(d / "text", text)
    _write(d / "utt2spk", [f"{line.split()[0]} {line.split()[0].split('-')[0]}" for line in wav])

    # dev: one long recording cut by a segments file, with a segment past its end and one for an unknown recording
    d = root / "dev"
    d.mkdir()
    p = write_audio(audio / "devrec.wav", 10.0, seed=60)
    _write(d / "wav.scp", [f"devrec {p}"])
    segs = [("dev-a", 0.0, 3.0), ("dev-b", 3.0, 6.5), ("dev-c", 6.5, -1), ("dev-past", 8.0, 12.0)]
    _write(d / "segments", [f"{u} devrec {s} {e}" for u, s, e in segs] + ["dev-norec otherrec 0 1"])
    _write(d / "text", [f"{u} THE DOG RAN AWAY" for u, _, _ in segs] + ["dev-norec THE DOG"])
    _write(d / "utt2spk", [f"{u} dev" for u, _, _ in segs] + ["dev-norec dev"])

    # test: a character that the training text does not have (É), and a file longer than max_duration
    d = root / "test"
    d.mkdir()
    p1 = write_audio(audio / "t1.wav", 1.5, seed=70)
    p2 = write_audio(audio / "t2.wav", 31.0, seed=71)
    _write(d / "wav.scp", [f"t1 {p1}", f"t2 {p2}"])
    _write(d / "text", ["t1 CAFÉ THE DOG", "t2 THE QUICK FOX"])
    _write(d / "utt2spk", ["t1 t", "t2 t"])
    return {"good": good}


EXPECTED_STAGE0_TRAIN = {
    R.MISSING_AUDIO: 1,
    R.EMPTY_FILE: 1,
    R.UNREADABLE_AUDIO: 1,
    R.TRUNCATED_AUDIO: 1,
    R.AUDIO_CMD_FAILED: 1,
    R.EMPTY_TRANSCRIPT: 1,
    R.NO_AUDIO_ENTRY: 1,
    R.NO_TRANSCRIPT: 1,
    R.DUPLICATE_ID: 1,
    R.NOT_UTF8: 1,
}


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    root = tmp_path_factory.mktemp("inhouse")
    info = build_messy_corpus(root / "corpus")
    (root / "conf").mkdir()
    (root / "conf" / "data.yaml").write_text(DATA_YAML)
    return root, info


@pytest.mark.parametrize("tok", ["bpe", "char"])
def test_messy_corpus(messy, monkeypatch, caplog, tok):
    root, info = messy
    monkeypatch.chdir(root)
    (root / "conf" / "lang.yaml").write_text(LANG_YAML.format(tok=tok))
    assert prepare_manifests.main(["--config", "conf/data.yaml", "corpus_dir=corpus", "nj=2"]) == 0
    s0 = json.loads(Path("data/manifests/summary.json").read_text())["splits"]
    train = s0["train"]
    assert train["dropped_by_reason"] == EXPECTED_STAGE0_TRAIN
    # 12 good + pipe + stereo + long + punct + short + nofit
    assert train["kept"] == 18
    assert train["notes"] == {R.NOTE_RESAMPLED: 1, R.NOTE_DOWNMIXED: 1}
    # each message names the offending id and the file
    ex = train["examples"]
    assert any("spk0-missing" in e and "does_not_exist.wav" in e for e in ex[R.MISSING_AUDIO])
    assert any("spk0-latin1" in e and "text:" in e for e in ex[R.NOT_UTF8])
    assert any("spk0-good00" in e for e in ex[R.DUPLICATE_ID])
    assert "train: kept 18, dropped 10" in caplog.text
    assert s0["dev"]["dropped_by_reason"] == {R.BAD_SEGMENT: 1, R.NO_AUDIO_ENTRY: 1}
    assert s0["dev"]["kept"] == 3

    cuts0 = {c.id: c for c in CutSet.from_file("data/manifests/kaldi_cuts_train.jsonl.gz")}
    assert cuts0["spk0-good00"].supervisions[0].text == info["good"]["spk0-good00"]  # first line kept
    assert cuts0["spk0-pipe"].duration == pytest.approx(1.5)
    assert cuts0["spk1-stereo"].duration == pytest.approx(2.0) and cuts0["spk1-stereo"].sampling_rate == 16000
    assert cuts0["spk2-long"].duration == pytest.approx(1800.0)
    assert cuts0["spk1-good01"].supervisions[0].speaker == "spk1"
    dev = {c.id: c for c in CutSet.from_file("data/manifests/kaldi_cuts_dev.jsonl.gz")}
    assert dev["dev-b"].start == pytest.approx(3.0) and dev["dev-b"].duration == pytest.approx(3.5)
    assert dev["dev-c"].duration == pytest.approx(3.5)  # end -1 = end of recording

    caplog.clear()
    assert prepare_lang.main(["--config", "conf/lang.yaml"]) == 0
    s1 = json.loads(Path("data/lang/summary.json").read_text())["splits"]
    assert s1["train"]["dropped_by_reason"] == {
        R.TOO_LONG: 1,
        R.TOO_SHORT: 1,
        R.EMPTY_AFTER_NORM: 1,
        R.CTC_NO_FIT: 1,
    }
    assert s1["train"]["kept"] == 14
    assert R.CTC_NO_FIT in caplog.text and "kept 14, dropped 4" in caplog.text
    # test sets are not length-filtered; É is not in the training text → <unk>, counted
    assert s1["test"]["kept"] == 2 and s1["test"]["notes"] == {R.NOTE_UNK: 1}
    assert s1["test"]["unk_chars"] == {"É": 1}
    tokz = Tokenizer.load("data/lang")
    assert tokz.kind == tok
    assert tokz.unk_id in tokz.encode("CAFÉ")

    train = {c.id: c for c in load_cuts("data/lang", "train")}
    assert set(train) == set(info["good"])
    # the 8 kHz stereo recording loads as 16 kHz mono of the right length, equal to the resampled channel mean
    dl = make_dataloader(CutSet.from_cuts([train["spk1-stereo"], train["spk0-pipe"]]), tokz, 100.0, shuffle=False)
    batch = next(iter(dl))
    got = dict(zip(batch["cut_ids"], batch["audio_lens"].tolist()))
    assert got == {"spk1-stereo": 32000, "spk0-pipe": 24000}
    i = batch["cut_ids"].index("spk1-stereo")
    x = batch["audio"][i, :32000].numpy()
    want = 0.6 * np.sin(2 * np.pi * 300 * np.arange(32000) / 16000)  # channel mean, analytically at 16 kHz
    assert np.abs(x[200:-200] - want[200:-200]).max() < 0.01
    j = batch["cut_ids"].index("spk0-pipe")
    pipe_src, _ = sf.read(root / "corpus/audio/pipe.flac", dtype="float32")
    np.testing.assert_allclose(batch["audio"][j, :24000].numpy(), pipe_src, atol=1e-4)


def test_missing_kaldi_files_are_clear_errors(tmp_path, monkeypatch, caplog):
    (tmp_path / "corpus" / "train").mkdir(parents=True)
    (tmp_path / "corpus" / "train" / "wav.scp").write_text("a /x.wav\n")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "data.yaml").write_text("corpus: kaldi\nsplits:\n  train: [train]\n  dev: [dev]\n")
    monkeypatch.chdir(tmp_path)
    assert prepare_manifests.main(["--config", "conf/data.yaml", "corpus_dir=corpus"]) == 1
    assert "corpus/train/text not found" in caplog.text
    (tmp_path / "corpus" / "train" / "text").write_text("a A\n")
    caplog.clear()
    assert prepare_manifests.main(["--config", "conf/data.yaml", "corpus_dir=corpus"]) == 1
    assert "Kaldi data dir 'corpus/dev' not found" in caplog.text and "train" in caplog.text
