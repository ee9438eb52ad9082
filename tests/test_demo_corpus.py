"""Tests of the demo corpus generator (local/make_demo_corpus.py) on its ``tiny`` size.

The corpus is generated twice through the command line (in two directories, with different --nj), then
checked with independent readers: Kaldi conventions, LibriSpeech tree, GigaSpeech JSON + opus audio,
audio format, honest splits, determinism and the skip of a complete output.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "local" / "make_demo_corpus.py"
SPLITS = ("train", "dev", "test")
LS_PARTS = {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"}
GS_SUBSET = {"train": "{XS}", "dev": "{DEV}", "test": "{TEST}"}
PUNCT_TAGS = {"<COMMA>", "<PERIOD>", "<QUESTIONMARK>", "<EXCLAMATIONPOINT>"}
GARBAGE_TAGS = {"<SIL>", "<MUSIC>", "<NOISE>", "<OTHER>"}

if shutil.which("espeak-ng") is None:
    pytest.skip("espeak-ng is not installed (tools/install.sh installs it)", allow_module_level=True)

_spec = importlib.util.spec_from_file_location("make_demo_corpus", SCRIPT)
mdc = importlib.util.module_from_spec(_spec)
sys.modules["make_demo_corpus"] = mdc
_spec.loader.exec_module(mdc)


def _cli(out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--size", "tiny", "--seed", "0", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Two generations with the same seed (all layouts), in different directories and with --nj 2 / 1."""
    a, b = tmp_path_factory.mktemp("demo_a"), tmp_path_factory.mktemp("demo_b")
    _cli(a, "--layouts", "kaldi,librispeech,gigaspeech", "--nj", "2")
    _cli(b, "--layouts", "kaldi,librispeech,gigaspeech", "--nj", "1")
    return a, b


def _kv(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        assert key not in out, f"{path}: duplicate key {key}"
        out[key] = value
    return out


def _tsv(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def _speakers(root: Path) -> dict[str, dict]:
    """spk -> row of speakers.tsv (spk, kaldi id, split, engine, voice, variant, pitch, rate)."""
    keys = ("spk", "kaldi_id", "split", "engine", "voice", "variant", "pitch", "rate")
    return {r[0]: dict(zip(keys, r)) for r in _tsv(root / "speakers.tsv")}


# ---- pure functions and the committed sentence pool ------------------------------------------------
def test_sentence_pool_is_large_clean_and_normalised():
    pool = mdc.load_sentences(mdc.DEFAULT_SENTENCES)
    texts = [mdc.transcript(s) for s in pool]
    vocab = {w for t in texts for w in t.split()}
    assert len(set(texts)) == len(pool) >= 3000
    assert len(vocab) >= 3000
    for t in texts:
        assert 4 <= len(t.split()) <= 20, t
        assert re.fullmatch(r"[A-Z]+(?:'[A-Z]+)*(?: [A-Z]+(?:'[A-Z]+)*)*", t), t
    assert mdc.DEFAULT_SENTENCES.stat().st_size < 1_000_000


def test_transcript_and_gigaspeech_text():
    s = "Well, Mister Knightley's opinion is this; it will never do!"
    assert mdc.transcript(s) == "WELL MISTER KNIGHTLEY'S OPINION IS THIS IT WILL NEVER DO"
    assert mdc.gigaspeech_text(s) == (
        "WELL <COMMA> MISTER KNIGHTLEY'S OPINION IS THIS IT WILL NEVER DO <EXCLAMATIONPOINT>"
    )
    assert mdc.gigaspeech_text("Is it so? Yes.") == "IS IT SO <QUESTIONMARK> YES <PERIOD>"


def test_bad_sentence_file_names_the_line(tmp_path):
    f = tmp_path / "pool.txt"
    f.write_text("This is a fine sentence.\nThere were 3 of them.\n")
    with pytest.raises(mdc.CorpusError, match=r"pool.txt:2"):
        mdc.load_sentences(f)


def test_select_sentences_is_disjoint_and_covered():
    pool = mdc.load_sentences(mdc.DEFAULT_SENTENCES)
    sel = mdc.select_sentences(pool, seed=3, train_hours=0.2, train_utts=None, dev_utts=40, test_utts=40, max_oov=0)
    train_words = {w for s in sel["train"] for w in mdc.transcript(s).split()}
    assert not set(sel["train"]) & set(sel["test"]) and not set(sel["train"]) & set(sel["dev"])
    assert not set(sel["dev"]) & set(sel["test"])
    assert len(sel["test"]) == len(sel["dev"]) == 40
    for s in sel["test"] + sel["dev"]:
        assert set(mdc.transcript(s).split()) <= train_words
    est = sum(mdc.estimated_seconds(s) for s in sel["train"])
    assert 0.2 * 3600 <= est < 0.2 * 3600 + 15
    sel1 = mdc.select_sentences(pool, 3, None, 50, 10, 10, max_oov=2)
    oov = [
        sum(w not in {x for t in sel1["train"] for x in mdc.transcript(t).split()} for w in mdc.transcript(s).split())
        for s in sel1["test"]
    ]
    assert max(oov) <= 2
    with pytest.raises(mdc.CorpusError, match="test sentences"):
        mdc.select_sentences(pool, 3, None, 5, 10, 5000, max_oov=0)


def test_split_at_breaks_on_a_synthetic_stream():
    rng = np.random.default_rng(0)
    sr = 16000

    def speech(sec):  # loud bursts with a short (0.3 s) sentence-internal pause
        x = (3000 * rng.standard_normal(int(sec * sr))).astype(np.int16)
        x[int(0.4 * sr) : int(0.7 * sr)] = rng.integers(-1, 2, int(0.3 * sr))
        return x

    silence = lambda sec: rng.integers(-1, 2, int(sec * sr)).astype(np.int16)  # noqa: E731
    lengths = (1.0, 2.5, 0.8)
    stream = np.concatenate([silence(1.0)] + [np.concatenate([speech(d), silence(2.0)]) for d in lengths])
    pieces = mdc.split_at_breaks(stream, 3, pad=0.25)
    assert pieces is not None
    for piece, d in zip(pieces, lengths):
        assert abs(len(piece) / sr - (d + 0.5)) <= 0.02  # the speech plus 0.25 s on each side
        assert np.abs(piece[: int(0.2 * sr)]).max() <= 1 and np.abs(piece[-int(0.2 * sr) :]).max() <= 1
    assert mdc.split_at_breaks(stream, 4) is None and mdc.split_at_breaks(stream, 2) is None


def test_espeak_falls_back_to_one_call_per_sentence(tmp_path, monkeypatch):
    spk = mdc.Speaker("1001", "train", "espeak-ng", "en-us", "m3", 50, 170)
    utts = [
        mdc.Utterance(f"1001-10010-000{i}", "train", spk, s)
        for i, s in enumerate(["I do not know.", "She was the youngest of the two daughters."])
    ]
    (tmp_path / "train" / "1001").mkdir(parents=True)
    monkeypatch.setattr(mdc, "split_at_breaks", lambda x, n, **kw: None)
    mdc.synth_espeak(utts, tmp_path)
    n = mdc.check_audio(utts, tmp_path)
    assert n[utts[1].utt] > n[utts[0].utt] > 0.3 * 16000


def test_bad_layout_is_a_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--size", "tiny", "--layouts", "kaldi,timit"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "timit" in proc.stderr


# ---- the generated corpus --------------------------------------------------------------------------
def test_kaldi_dirs_follow_conventions(corpora):
    root = corpora[0]
    for split in SPLITS:
        d = root / "kaldi" / split
        for name in ("wav.scp", "text", "utt2spk", "spk2utt", "utt2dur"):
            raw = (d / name).read_bytes()
            lines = raw.splitlines()
            assert raw.endswith(b"\n") and lines == sorted(lines), f"{d / name} not sorted in C order"
        wav, text, utt2spk = _kv(d / "wav.scp"), _kv(d / "text"), _kv(d / "utt2spk")
        assert wav.keys() == text.keys() == utt2spk.keys() and len(text) > 0
        spk2utt = {k: v.split() for k, v in _kv(d / "spk2utt").items()}
        assert sorted(u for us in spk2utt.values() for u in us) == sorted(utt2spk)
        for utt, spk in utt2spk.items():
            assert utt.startswith(spk + "-") and utt in spk2utt[spk]
            assert re.fullmatch(r"\d+-\d+-\d{4}", utt)
            assert Path(wav[utt]).is_absolute() and Path(wav[utt]).is_file()
            assert re.fullmatch(r"[A-Z']+(?: [A-Z']+)*", text[utt])
        dur = {k: float(v) for k, v in _kv(d / "utt2dur").items()}
        for utt, path in wav.items():
            assert dur[utt] == sf.info(path).frames / 16000
    n = sum(len(_kv(root / "kaldi" / s / "text")) for s in SPLITS)
    assert 24 <= n <= 40  # tiny: ~30 utterances


def test_audio_is_16k_mono_16bit(corpora):
    root = corpora[0]
    for split in SPLITS:
        for utt, path in _kv(root / "kaldi" / split / "wav.scp").items():
            info = sf.info(path)
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16"), (utt, info)
            x, _ = sf.read(path, dtype="int16")
            assert np.abs(x.astype(np.int32)).max() > 1000, f"{utt} is (nearly) silent"
            assert info.duration > 0.5


def test_librispeech_tree_matches_kaldi(corpora):
    root = corpora[0]
    for split in SPLITS:
        text = _kv(root / "kaldi" / split / "text")
        wav = _kv(root / "kaldi" / split / "wav.scp")
        part = root / "LibriSpeech" / LS_PARTS[split]
        trans: dict[str, str] = {}
        for t in part.glob("*/*/*.trans.txt"):
            spk, chapter = t.parent.parent.name, t.parent.name
            assert t.name == f"{spk}-{chapter}.trans.txt"
            for utt, words in _kv(t).items():
                assert utt.startswith(f"{spk}-{chapter}-")
                trans[utt] = words
        assert trans == text
        flacs = sorted(p.stem for p in part.glob("*/*/*.flac"))
        assert flacs == sorted(text)
        for utt in text:
            spk, chapter, _ = utt.split("-")
            flac = part / spk / chapter / f"{utt}.flac"
            a, sr = sf.read(str(flac), dtype="int16")
            b, _ = sf.read(wav[utt], dtype="int16")
            assert sr == 16000 and sf.info(str(flac)).channels == 1 and np.array_equal(a, b), utt
    assert (root / "LibriSpeech" / "SPEAKERS.TXT").is_file()


def test_gigaspeech_release_matches_kaldi(corpora):
    root = corpora[0]
    meta = json.loads((root / "GigaSpeech" / "GigaSpeech.json").read_text())
    assert meta["dataset"] == "GigaSpeech" and meta["language"] == "EN"
    audio_keys = {
        "title",
        "url",
        "path",
        "aid",
        "source",
        "format",
        "sample_rate",
        "codec",
        "channels",
        "md5",
        "duration",
        "size",
        "speaker",
        "category",
        "subsets",
        "segments",
    }
    seg_keys = {"sid", "speaker", "begin_time", "end_time", "text_raw", "text_tn", "subsets"}
    utt_of = {r[3]: (r[0], r[1]) for r in _tsv(root / "utterances.tsv")}
    kaldi = {s: _kv(root / "kaldi" / s / "text") for s in SPLITS}
    wavs = {s: _kv(root / "kaldi" / s / "wav.scp") for s in SPLITS}
    seen, tags, garbage = set(), set(), 0
    for audio in meta["audios"]:
        assert set(audio) == audio_keys
        assert re.fullmatch(r"POD\d{10}", audio["aid"]) and audio["format"] == "opus"
        path = root / "GigaSpeech" / audio["path"]
        assert path.suffix == ".opus" and hashlib.md5(path.read_bytes()).hexdigest() == audio["md5"]
        assert audio["size"] == path.stat().st_size
        x, sr = sf.read(str(path), dtype="float32")
        assert sr == audio["sample_rate"] == 16000 and x.ndim == 1
        assert abs(len(x) / sr - audio["duration"]) < 0.01
        prev_end = 0.0
        for seg in audio["segments"]:
            assert set(seg) == seg_keys and seg["sid"].startswith(audio["aid"] + "_S")
            assert seg["subsets"] == audio["subsets"] and prev_end <= seg["begin_time"] < seg["end_time"]
            prev_end = seg["end_time"]
            words = seg["text_tn"].split()
            tags |= set(words) & PUNCT_TAGS
            if words[0] in GARBAGE_TAGS:  # a garbage-only segment, to be dropped by the recipe
                assert len(words) == 1 and seg["sid"] not in utt_of
                garbage += 1
                continue
            utt, split = utt_of[seg["sid"]]
            assert GS_SUBSET[split] in seg["subsets"]
            assert " ".join(w for w in words if w not in PUNCT_TAGS) == kaldi[split][utt]
            ref, _ = sf.read(wavs[split][utt], dtype="float32")
            begin = round(seg["begin_time"] * sr)
            assert seg["end_time"] - seg["begin_time"] >= len(ref) / sr - 1e-6
            corr = np.corrcoef(x[begin : begin + len(ref)], ref)[0, 1]
            assert corr > 0.95, f"{seg['sid']}: opus audio does not match {utt} (corr {corr:.3f})"
            seen.add(utt)
    assert seen == {u for s in SPLITS for u in kaldi[s]}
    assert garbage >= 2 and {"<COMMA>", "<PERIOD>"} <= tags


def test_splits_are_honest(corpora):
    root = corpora[0]
    spk = _speakers(root)

    def setting(r: dict) -> tuple:
        return (r["engine"], r["voice"], r["variant"], r["pitch"], r["rate"])

    by_split = {s: [r for r in spk.values() if r["split"] == s] for s in SPLITS}
    for s in SPLITS:  # the speakers really used by each split's data
        used = {v for v in _kv(root / "kaldi" / s / "utt2spk").values()}
        assert used == {r["kaldi_id"] for r in by_split[s]}
    train_settings = {setting(r) for r in by_split["train"]}
    train_variants = {r["variant"] for r in by_split["train"] if r["engine"] == "espeak-ng"}
    train_engines = {r["engine"] for r in by_split["train"]}
    for s in ("dev", "test"):
        assert not {setting(r) for r in by_split[s]} & train_settings
        assert not {r["variant"] for r in by_split[s] if r["engine"] == "espeak-ng"} & train_variants
        assert {r["engine"] for r in by_split[s]} <= train_engines
    assert {"espeak-ng", "festival"} <= train_engines
    text = {s: set(_kv(root / "kaldi" / s / "text").values()) for s in SPLITS}
    assert not text["test"] & text["train"] and not text["dev"] & text["train"]
    train_words = {w for t in text["train"] for w in t.split()}
    assert {w for t in text["test"] for w in t.split()} <= train_words  # --max-test-oov 0
    summary = json.loads((root / "summary.json").read_text())
    assert summary["test_oov_rate"] == 0.0
    for s in SPLITS:
        assert summary["splits"][s]["utterances"] == len(_kv(root / "kaldi" / s / "text"))
        assert summary["splits"][s]["speakers"] == len(by_split[s])


def test_same_seed_same_corpus(corpora):
    a, b = corpora
    for split in SPLITS:
        for name in ("text", "utt2spk", "spk2utt", "utt2dur"):
            assert (a / "kaldi" / split / name).read_bytes() == (b / "kaldi" / split / name).read_bytes()
        wa, wb = _kv(a / "kaldi" / split / "wav.scp"), _kv(b / "kaldi" / split / "wav.scp")
        assert wa.keys() == wb.keys()
        for utt in wa:
            xa, _ = sf.read(wa[utt], dtype="int16")
            xb, _ = sf.read(wb[utt], dtype="int16")
            assert hashlib.sha1(xa.tobytes()).digest() == hashlib.sha1(xb.tobytes()).digest(), utt
    assert (a / "GigaSpeech" / "GigaSpeech.json").read_bytes() == (b / "GigaSpeech" / "GigaSpeech.json").read_bytes()
    assert (a / "speakers.tsv").read_bytes() == (b / "speakers.tsv").read_bytes()


def test_rerun_is_skipped_and_layout_change_reuses_audio(corpora, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(corpora[1], root)  # keeps mtimes
    utt = next(iter(_kv(root / "kaldi" / "train" / "text")))
    wav = root / "wav" / "train" / utt.split("-")[0] / f"{utt}.wav"
    mtime = wav.stat().st_mtime_ns
    t0 = time.time()
    proc = _cli(root, "--layouts", "gigaspeech,librispeech,kaldi")  # same set, other order
    assert "nothing to do" in proc.stderr and time.time() - t0 < 10
    assert wav.stat().st_mtime_ns == mtime
    proc = _cli(root, "--layouts", "kaldi")
    assert "re-writing the layouts only" in proc.stderr and "synthesising" not in proc.stderr
    assert wav.stat().st_mtime_ns == mtime
    assert not (root / "GigaSpeech").exists() and (root / "kaldi" / "test" / "text").is_file()
    assert str(wav) in (root / "kaldi" / "train" / "wav.scp").read_text()  # paths point into the copy


def test_splits_option_gives_the_same_test_split(corpora, tmp_path):
    """``--splits test`` (used to score a shipped model) synthesises the very test split of the corpus.

    Audio is compared to 8 LSB: festival's HTS voice now and then differs by 1-4 LSB between runs.
    """
    full, only = corpora[0], tmp_path / "only_test"
    proc = _cli(only, "--splits", "test")
    assert sorted(p.name for p in (only / "kaldi").iterdir()) == ["test"]
    assert not (only / "wav" / "train").exists()
    for name in ("text", "utt2spk", "spk2utt", "utt2dur"):
        assert (only / "kaldi" / "test" / name).read_bytes() == (full / "kaldi" / "test" / name).read_bytes()
    wa, wb = _kv(full / "kaldi" / "test" / "wav.scp"), _kv(only / "kaldi" / "test" / "wav.scp")
    assert wa.keys() == wb.keys()
    for utt in wa:
        xa, _ = sf.read(wa[utt], dtype="int16")
        xb, _ = sf.read(wb[utt], dtype="int16")
        assert len(xa) == len(xb) and int(abs(xa.astype(int) - xb.astype(int)).max()) <= 8, utt
    summary = json.loads((only / "summary.json").read_text())
    assert list(summary["splits"]) == ["test"] and summary["test_oov_rate"] == 0.0
    assert "test" in proc.stdout and "train" not in proc.stdout.split("test OOV")[0].split("\n", 1)[1]
    bad = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "bad"), "--splits", "tset"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "unknown split" in bad.stderr
