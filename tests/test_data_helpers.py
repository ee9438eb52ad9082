"""Fixture builders for the data tests (small corpora in their real layouts), and audio-probe tests.

The builders are imported by the other ``test_data*``/``test_lang*``/``test_sampler*`` files.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from distill.data import report as R
from distill.data.audio import AudioProblem, probe_command, probe_file

WORDS = "THE QUICK BROWN FOX JUMPS OVER A LAZY DOG AND THEN IT RAN AWAY FROM HOME".split()


def noise(seconds: float, sr: int = 16000, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    x = (0.05 * rng.standard_normal((n, channels))).astype(np.float32)
    return x[:, 0] if channels == 1 else x


def write_audio(path: Path, seconds: float, sr: int = 16000, channels: int = 1, seed: int = 0) -> Path:
    """A WAV/FLAC (by suffix) of noise, or Opus (``.opus``, via opusenc)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".opus":
        tmp = path.with_suffix(".tmp.wav")
        sf.write(tmp, noise(seconds, sr, channels, seed), sr, subtype="PCM_16")
        subprocess.run(["opusenc", "--quiet", str(tmp), str(path)], check=True)
        tmp.unlink()
    else:
        sf.write(path, noise(seconds, sr, channels, seed), sr)
    return path


def sentence(rng: np.random.Generator, n: int = 5) -> str:
    return " ".join(rng.choice(WORDS, n))


def make_librispeech(
    root: Path, parts: dict[str, int], nested: bool = True, seed: int = 0, speakers=("19", "32")
) -> dict[str, dict[str, tuple[float, str]]]:
    """A LibriSpeech tree: ``root/LibriSpeech/<part>/<spk>/<chap>/...`` (or ``root/<part>`` if not nested).

    Returns ``{part: {utt_id: (duration, text)}}``.
    """
    rng = np.random.default_rng(seed)
    base = root / "LibriSpeech" if nested else root
    truth: dict[str, dict[str, tuple[float, str]]] = {}
    for part, n in parts.items():
        truth[part] = {}
        for k, spk in enumerate(speakers):
            chap = f"{100 + k}"
            d = base / part / spk / chap
            lines = []
            for i in range(n // len(speakers) + (k < n % len(speakers))):
                uid = f"{spk}-{chap}-{i:04d}"
                dur = round(float(rng.uniform(1.0, 3.0)), 3)
                write_audio(d / f"{uid}.flac", dur, seed=int(rng.integers(1 << 30)))
                text = sentence(rng)
                lines.append(f"{uid} {text}")
                truth[part][uid] = (dur, text)
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return truth


def make_kaldi_dir(
    d: Path, audio_dir: Path, utts: dict[str, tuple[float, str]], pipes: bool = False, seed: int = 0
) -> None:
    """A Kaldi data dir without segments: one audio file per utterance (speaker = id prefix)."""
    d.mkdir(parents=True, exist_ok=True)
    wav, text, u2s = [], [], []
    for n, (uid, (dur, txt)) in enumerate(sorted(utts.items())):
        p = write_audio(audio_dir / f"{uid}.wav", dur, seed=seed + n)
        wav.append(f"{uid} sox {p} -t wav - |" if pipes else f"{uid} {p}")
        text.append(f"{uid} {txt}")
        u2s.append(f"{uid} {uid.split('-')[0]}")
    (d / "wav.scp").write_text("\n".join(wav) + "\n", encoding="utf-8")
    (d / "text").write_text("\n".join(text) + "\n", encoding="utf-8")
    (d / "utt2spk").write_text("\n".join(u2s) + "\n", encoding="utf-8")


def make_gigaspeech(root: Path, audios: list[dict]) -> Path:
    """A GigaSpeech release: ``root/GigaSpeech.json`` + ``root/audio/<source>/<aid>.opus``.

    Each ``audios`` item: ``{"aid", "seconds", "segments": [(sid, begin, end, text_tn, [subsets])]}``.
    """
    entries = []
    for n, a in enumerate(audios):
        rel = f"audio/podcast/P0000/{a['aid']}.opus"
        write_audio(root / rel, a["seconds"], seed=n)
        entries.append(
            {
                "aid": a["aid"],
                "path": rel,
                "duration": a["seconds"],
                "format": "opus",
                "sample_rate": 16000,
                "source": "podcast",
                "md5": "0" * 32,
                "speaker": "N/A",
                "segments": [
                    {
                        "sid": sid,
                        "speaker": "N/A",
                        "begin_time": b,
                        "end_time": e,
                        "text_tn": t,
                        "subsets": ["{" + s + "}" for s in subs],
                    }
                    for sid, b, e, t, subs in a["segments"]
                ],
            }
        )
    (root / "GigaSpeech.json").write_text(json.dumps({"dataset": "GigaSpeech", "audios": entries}), encoding="utf-8")
    return root


# ---------------------------------------------------------------- audio probe tests


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".opus"])
def test_probe_reads_header(tmp_path, suffix):
    if suffix == ".opus" and shutil.which("opusenc") is None:
        pytest.skip("opusenc (opus-tools) not installed")
    p = write_audio(tmp_path / f"a{suffix}", 1.5)
    info = probe_file(p)
    assert info.sampling_rate == 16000 and info.channels == 1
    decoded, sr = sf.read(p)
    assert sr == 16000 and info.num_samples == len(decoded)
    assert abs(info.duration - 1.5) < 0.03


def test_probe_other_rate_and_channels(tmp_path):
    info = probe_file(write_audio(tmp_path / "s.wav", 1.0, sr=8000, channels=2))
    assert (info.sampling_rate, info.channels, info.num_samples) == (8000, 2, 8000)


def _truncate(p: Path) -> Path:
    b = p.read_bytes()
    p.write_bytes(b[: len(b) // 2])
    return p


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_probe_detects_truncation(tmp_path, suffix):
    p = _truncate(write_audio(tmp_path / f"t{suffix}", 3.0))
    with pytest.raises(AudioProblem) as e:
        probe_file(p)
    assert e.value.reason == R.TRUNCATED_AUDIO and str(p) in e.value.detail
    with pytest.raises(AudioProblem):
        probe_file(p, check="full")


def test_probe_bad_files(tmp_path):
    cases = {
        tmp_path / "missing.wav": R.MISSING_AUDIO,
        tmp_path / "zero.wav": R.EMPTY_FILE,
        tmp_path / "text.wav": R.UNREADABLE_AUDIO,
    }
    (tmp_path / "zero.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("this is not audio\n" * 50)
    for p, reason in cases.items():
        with pytest.raises(AudioProblem) as e:
            probe_file(p)
        assert e.value.reason == reason, (p, e.value)
        assert str(p) in e.value.detail


def test_probe_command(tmp_path):
    p = write_audio(tmp_path / "a.flac", 1.25)
    info = probe_command(f"sox {p} -t wav -" if shutil.which("sox") else f"cat {p}")
    assert info.num_samples == 20000 and info.sampling_rate == 16000
    with pytest.raises(AudioProblem) as e:
        probe_command("false")
    assert e.value.reason == R.AUDIO_CMD_FAILED and "'false'" in e.value.detail


def test_report_summary_and_json(tmp_path):
    rep = R.PrepReport("x")
    rep.keep("train", 3)
    rep.drop("train", R.MISSING_AUDIO, "u1", "a.wav")
    rep.drop("train", R.MISSING_AUDIO, "u2", "b.wav")
    rep.drop("train", R.EMPTY_TRANSCRIPT, "u3")
    rep.note("train", R.NOTE_RESAMPLED, "r1")
    line = rep.summary_line("train")
    assert line.startswith("train: kept 3, dropped 3: missing audio file → 2, empty transcript → 1")
    assert "resampled to 16 kHz → 1" in line
    rep.write_json(tmp_path / "s.json")
    d = json.loads((tmp_path / "s.json").read_text())["splits"]["train"]
    assert d["kept"] == 3 and d["dropped_by_reason"] == {R.MISSING_AUDIO: 2, R.EMPTY_TRANSCRIPT: 1}
    assert d["examples"][R.MISSING_AUDIO] == ["u1: a.wav", "u2: b.wav"]
