"""distill.bin.transcribe and build_decode_graph end to end on real LibriVox clips (pocketsphinx-testdata)
with a tiny random-weight model in Hugging Face format; audio reading, resampling and wav.scp parsing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from model_fixtures import save_tiny_model, write_char_lang

from distill.bin import build_decode_graph, transcribe
from distill.data.tokenizer import build_char_tokenizer, write_lang_files
from distill.decode.audio import AudioError, read_audio, read_wav_list, read_wav_scp, resample

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
CLIPS = sorted(LIBRIVOX.glob("*.wav")) if LIBRIVOX.is_dir() else []
TEXTS = ["MY DEAR SISTER", "THE FAMILY OF DASHWOOD", "HAD LONG BEEN SETTLED IN SUSSEX", "THEIR ESTATE WAS LARGE"]

needs_clips = pytest.mark.skipif(not CLIPS, reason="pocketsphinx-testdata LibriVox clips not installed")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A char lang dir (with P.arpa and train_text.txt) and a tiny random model saved in HF format."""
    tmp = tmp_path_factory.mktemp("transcribe")
    lang = tmp / "lang"
    tok = write_char_lang(lang, TEXTS)
    save_tiny_model(tmp / "model", tok.vocab_size)
    # the same architecture trained for streaming: 16-frame chunks, causal positions
    save_tiny_model(tmp / "smodel", tok.vocab_size, chunk_frames=16, causal_pos_conv=True)
    return tmp, lang, tok


def run_cli(capsys, args):
    rc = transcribe.main([str(a) for a in args] + ["--num-threads", "1"])
    out, err = capsys.readouterr()
    lines = [ln for ln in out.splitlines() if ln.strip()]
    return rc, lines, err


@needs_clips
def test_transcribe_wav_list_greedy(setup, capsys):
    tmp, lang, _ = setup
    lst = tmp / "list.txt"
    lst.write_text("".join(f"{c}\n" for c in CLIPS[2:]))
    rc, lines, err = run_cli(capsys, ["--model", tmp / "model", "--lang-dir", lang, *CLIPS[:2], "--file-list", lst])
    assert rc == 0, err
    assert [ln.split()[0] for ln in lines] == [c.stem for c in CLIPS]
    assert f"transcribed {len(CLIPS)} utterances, skipped 0" in err


@needs_clips
def test_transcribe_wav_scp_with_pipes_resampling_and_bad_entries(setup, capsys):
    tmp, lang, _ = setup
    if shutil.which("sox") is None:
        pytest.skip("sox not installed")
    stereo = tmp / "stereo44k.wav"
    x, sr = sf.read(CLIPS[1], dtype="float32")
    sf.write(stereo, np.stack([x, 0.5 * x], axis=1)[: 3 * sr], sr)
    scp = tmp / "wav.scp"
    scp.write_text(
        f"utt-a {CLIPS[0]}\n"
        f"utt-pipe sox {CLIPS[1]} -t wav - |\n"
        f"utt-8k sox {CLIPS[2]} -r 8000 -t wav - |\n"
        f"utt-missing {tmp / 'nope.wav'}\n"
        f"utt-failing false |\n"
        f"utt-stereo {stereo}\n"
    )
    rc, lines, err = run_cli(
        capsys, ["--model", tmp / "model", "--lang-dir", lang, "--wav-scp", scp, "--batch-size", 2]
    )
    assert rc == 0
    assert [ln.split()[0] for ln in lines] == ["utt-a", "utt-pipe", "utt-8k", "utt-stereo"]
    assert "skipping utterance 'utt-missing'" in err and "skipping utterance 'utt-failing'" in err
    assert "transcribed 4 utterances, skipped 2" in err


@needs_clips
def test_pipe_output_equals_direct_read():
    direct = read_audio(str(CLIPS[0]))
    piped = read_audio(f"sox {CLIPS[0]} -t wav - |", allow_pipe=True)
    np.testing.assert_allclose(piped, direct, atol=1e-4)
    # without allow_pipe a trailing '|' is a file name, never a command
    with pytest.raises(AudioError, match="does not exist"):
        read_audio(f"sox {CLIPS[0]} -t wav - |")


@needs_clips
def test_transcribe_graphs_and_streaming(setup, capsys):
    tmp, lang, tok = setup
    out_dir = tmp / "lang_test"
    assert build_decode_graph.main([f"lang_dir={lang}", f"out_dir={out_dir}", "lm_order=2"]) == 0
    summary = capsys.readouterr().out
    assert summary.startswith(f"built {out_dir / 'HLG.fst'}") and "HP.fst" in summary
    for f in ("HLG.fst", "HLG.fst.json", "HP.fst", "words.txt", "lexicon.txt", "G.arpa"):
        assert (out_dir / f).is_file(), f
    info = json.loads((out_dir / "HLG.fst.json").read_text())
    assert info["kind"] == "word" and info["num_tokens"] == tok.vocab_size

    vocab = {w for t in TEXTS for w in t.split()}
    base = ["--model", tmp / "model", "--lang-dir", lang, *CLIPS[:3]]
    rc, lines, err = run_cli(capsys, [*base, "--graph", out_dir / "HLG.fst", "--nj", 2])
    assert rc == 0, err
    assert [ln.split()[0] for ln in lines] == [c.stem for c in CLIPS[:3]]
    assert all(w in vocab | {"<UNK>"} for ln in lines for w in ln.split()[1:])
    rc, lines, err = run_cli(capsys, [*base, "--graph", out_dir / "HP.fst"])
    assert rc == 0 and len(lines) == 3
    lat = tmp / "lat.json"
    short = sorted(CLIPS, key=lambda c: c.stat().st_size)[:2]
    base = ["--model", tmp / "smodel", "--lang-dir", lang, *short]
    rc, lines, err = run_cli(capsys, [*base, "--streaming", "--piece-ms", 100, "--latency-json", lat])
    assert rc == 0, err
    assert [ln.split()[0] for ln in lines] == [c.stem for c in short]
    rep = json.loads(lat.read_text())
    assert set(rep["utts"]) == {c.stem for c in short} and rep["summary"]["chunk_ms"] == 320  # the model's chunk
    rc, lines, err = run_cli(capsys, [*base, "--streaming", "--graph", out_dir / "HLG.fst"])
    assert rc == 0 and len(lines) == 2
    rc, lines, err = run_cli(capsys, [*base, "--streaming", "--chunk-frames", 8, "--latency-json", lat])
    assert rc == 0 and len(lines) == 2 and json.loads(lat.read_text())["summary"]["chunk_ms"] == 160


def test_transcribe_clear_errors(setup, capsys, tmp_path):
    tmp, lang, _ = setup
    wav = tmp_path / "x.wav"
    sf.write(wav, np.zeros(8000, np.float32), 16000)
    rc, _, err = run_cli(capsys, ["--model", tmp / "model", "--lang-dir", lang, wav, "--graph", tmp_path / "no.fst"])
    assert rc == 2 and "no.fst" in err and "does not exist" in err
    other = tmp_path / "lang2"
    write_lang_files(other, build_char_tokenizer(["XYZ"]), {"XYZ"})
    rc, _, err = run_cli(capsys, ["--model", tmp / "model", "--lang-dir", other, wav])
    assert rc == 2 and "tokens" in err
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....garbage")
    rc, lines, err = run_cli(capsys, ["--model", tmp / "model", "--lang-dir", lang, bad])
    assert rc == 1 and lines == [] and "skipping utterance 'bad'" in err


def test_cli_entry_point(setup, tmp_path):
    tmp, lang, _ = setup
    wav = tmp_path / "short one.wav"  # a space in the name: must never reach a shell
    sf.write(wav, (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32), 16000)
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "distill.bin.transcribe",
            "--model",
            str(tmp / "model"),
            "--lang-dir",
            str(lang),
            str(wav),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0].split()[0] == "short_one"
    assert "transcribed 1 utterances, skipped 0" in p.stderr


def test_help_shows_every_default(capsys):
    ap = transcribe.build_parser()
    for a in ap._actions:
        if a.option_strings and a.dest != "help":
            assert "default" in a.help or "required" in a.help, f"{a.option_strings[0]}: {a.help!r}"
    with pytest.raises(SystemExit):
        ap.parse_args(["--help"])
    h = " ".join(capsys.readouterr().out.split())
    for text in ("(default: 7000)", "(default: 16)", "(default: 4)", "(default: the model's own)", '"start"'):
        assert text in h, text


@needs_clips
def test_timestamps_and_partial_results(setup, capsys):
    tmp, lang, _ = setup
    base = ["--model", tmp / "smodel", "--lang-dir", lang, *CLIPS[:2], "--streaming"]
    rc, plain, err = run_cli(capsys, base)
    assert rc == 0 and "[partial]" not in err
    rc, lines, err = run_cli(capsys, [*base, "--timestamps", "--partial"])
    assert rc == 0, err
    rows = [json.loads(ln) for ln in lines]  # one JSON object per utterance
    assert [f"{r['utt']} {r['text']}".rstrip() for r in rows] == plain  # the same text as without the options
    for row, clip in zip(rows, CLIPS):
        duration = sf.info(clip).duration
        assert " ".join(w["word"] for w in row["words"]) == row["text"]
        end = 0.0
        for w in row["words"]:
            assert end <= w["start"] < w["end"] <= duration
            end = w["end"]
        mark = f"{row['utt']} [partial] "
        partials = [ln[len(mark) :] for ln in err.splitlines() if ln.startswith(mark)]
        assert partials  # greedy partial results only grow, and grow into the final text
        seq = [*partials, row["text"]]
        assert all(b.startswith(a) for a, b in zip(seq, seq[1:]))
        assert all(a != b for a, b in zip(partials, partials[1:]))
    rc, lines, err = run_cli(capsys, ["--model", tmp / "model", "--lang-dir", lang, CLIPS[0], "--timestamps"])
    assert rc == 0 and set(json.loads(lines[0])) == {"utt", "text", "words"}


def test_streaming_needs_a_streaming_model(setup, capsys, tmp_path):
    tmp, lang, _ = setup
    wav = tmp_path / "x.wav"
    sf.write(wav, np.zeros(8000, np.float32), 16000)
    rc, lines, err = run_cli(capsys, ["--model", tmp / "model", "--lang-dir", lang, wav, "--streaming"])
    assert rc == 2 and lines == []
    assert err.strip() == (
        f"error: model '{tmp / 'model'}' was not trained for streaming: it is a full-context model "
        "(chunk_frames 0 in its config); transcribe it whole (no --streaming), or use a streaming student (stage 5)"
    )
    with pytest.raises(SystemExit) as e:
        transcribe.main(["--model", str(tmp / "smodel"), str(wav), "--partial"])
    assert e.value.code == 2 and "--partial needs --streaming" in capsys.readouterr().err
    # without --lang-dir, a model directory without tokens.txt: say what to pass
    rc, _, err = run_cli(capsys, ["--model", tmp / "model", wav])
    assert rc == 2 and "pass --lang-dir" in err and "tokens.txt" in err and "stage 1" not in err


# ------------------------------------------------------------------------------------------------ audio
@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
def test_resample_sine(sr):
    t = np.arange(sr) / sr
    for f in (440.0, 3000.0):
        y = resample(np.sin(2 * np.pi * f * t).astype(np.float32), sr, 16000)
        assert len(y) == 16000
        ref = np.sin(2 * np.pi * f * np.arange(16000) / 16000)
        assert np.abs(y - ref)[400:-400].max() < 2e-3
    # content above the new Nyquist frequency is removed
    if sr > 16000:
        y = resample(np.sin(2 * np.pi * 10000 * t).astype(np.float32), sr, 16000)
        assert np.abs(y[400:-400]).max() < 0.01


def test_read_audio_downmix_and_resample(tmp_path):
    sr = 22050
    t = np.arange(sr // 2) / sr
    left = np.sin(2 * np.pi * 300 * t).astype(np.float32)
    sf.write(tmp_path / "s.wav", np.stack([left, 0 * left], 1), sr, subtype="FLOAT")
    y = read_audio(str(tmp_path / "s.wav"))
    assert len(y) == 8000
    ref = 0.5 * np.sin(2 * np.pi * 300 * np.arange(8000) / 16000)
    assert np.abs(y - ref)[200:-200].max() < 2e-3


def test_wav_scp_and_list_errors(tmp_path):
    scp = tmp_path / "wav.scp"
    scp.write_text("a x.wav\nb\n")
    with pytest.raises(AudioError, match=r"wav.scp:2"):
        read_wav_scp(scp)
    scp.write_text("a x.wav\na y.wav\n")
    with pytest.raises(AudioError, match="'a' already used on line 1"):
        read_wav_scp(scp)
    scp.write_text("a  sox x.wav -t wav - |\n")
    assert read_wav_scp(scp) == [("a", "sox x.wav -t wav - |")]
    with pytest.raises(AudioError, match="same utterance id 'x'"):
        read_wav_list(["d1/x.wav", "d2/x.flac"])
    with pytest.raises(AudioError, match="does not exist"):
        read_wav_list([], tmp_path / "nolist")
