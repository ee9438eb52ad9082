"""The three-line Python API (``distill.Recognizer``) against ``python -m distill.bin.transcribe``: the same
greedy, WFST, long-audio and streaming text; word timestamps; partial results; refusals. Tiny random
models in model directories that carry their ``tokens.txt``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from model_fixtures import tiny, write_char_lang

from distill.bin import build_decode_graph, transcribe
from distill.data.tokenizer import copy_token_files
from distill.decode.transcribe import NotStreamingError
from distill.models import W2V2Model, save_pretrained

TEXTS = ["MY DEAR SISTER", "THE FAMILY OF DASHWOOD", "HAD LONG BEEN SETTLED IN SUSSEX"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A char lang (+ HLG), an offline and a streaming model dir with tokens.txt, and a few wav files."""
    tmp = tmp_path_factory.mktemp("recognizer")
    lang = tmp / "lang"
    tok = write_char_lang(lang, TEXTS)
    dirs = {}
    for name, kw in {"offline": {}, "streaming": {"chunk_frames": 8, "causal_pos_conv": True}}.items():
        torch.manual_seed(0)
        model = W2V2Model(tiny(vocab_size=tok.vocab_size, **kw)).eval()
        save_pretrained(model, tmp / name)
        copy_token_files(lang, tmp / name)
        dirs[name] = tmp / name
    rng = np.random.default_rng(0)
    wavs = []
    for i, (sec, sr) in enumerate([(1.3, 16000), (2.1, 16000), (0.9, 22050)]):
        p = tmp / f"u{i}.wav"
        sf.write(p, (0.1 * rng.standard_normal(int(sec * sr))).astype(np.float32), sr)
        wavs.append(p)
    graph = tmp / "lang_test"
    assert build_decode_graph.main([f"lang_dir={lang}", f"out_dir={graph}", "lm_order=2", "token_graph=false"]) == 0
    return {"lang": lang, "wavs": wavs, "hlg": graph / "HLG.fst", **dirs}


def cli(capsys, *args):
    rc = transcribe.main([str(a) for a in args] + ["--num-threads", "1"])
    out, err = capsys.readouterr()
    return rc, [ln for ln in out.splitlines() if ln.strip()], err


def texts(lines):
    return [ln.split(maxsplit=1)[1] if " " in ln else "" for ln in lines]


def check_words(res, duration):
    assert " ".join(w.word for w in res.words) == res.text
    ends = 0.0
    for w in res.words:
        assert ends <= w.start_s < w.end_s <= duration + 1e-9, (w, duration)
        ends = w.end_s


def test_three_lines_equal_the_command_greedy(env, capsys):
    from distill import Recognizer  # the three lines

    r = Recognizer.from_pretrained(env["offline"], num_threads=1)
    results = [r.transcribe(w) for w in env["wavs"]]
    rc, lines, err = cli(capsys, "--model", env["offline"], *env["wavs"])
    assert rc == 0, err
    assert [x.text for x in results] == texts(lines)
    assert sum(len(x.words) for x in results) > 0  # the random model does say words
    # a list of paths and samples at another rate (resampled like the command does) give the same
    assert [x.text for x in r.transcribe(env["wavs"])] == texts(lines)
    x, sr = sf.read(env["wavs"][2], dtype="float32")
    assert sr == 22050 and r.transcribe(x, sample_rate=sr).text == results[2].text
    for res, w in zip(results, env["wavs"]):
        check_words(res, sf.info(w).duration)
        assert res.duration_s == pytest.approx(sf.info(w).duration, abs=1e-3)


def test_words_follow_the_ctc_frames(env):
    from distill import Recognizer

    r = Recognizer.from_pretrained(env["offline"])
    res = r.transcribe(env["wavs"][1])
    assert r.frame_shift_s == pytest.approx(0.02)
    for w in res.words:  # times on the 20 ms frame grid
        assert round(w.start_s / 0.02, 6) % 1 == 0 and round(w.end_s / 0.02, 6) % 1 == 0
    # shorter than one frame: no words
    short = r.transcribe(np.zeros(100, np.float32))
    assert short.text == "" and short.words == []


def test_timestamps_option_prints_the_apis_words(env, capsys):
    from distill import Recognizer

    rc, lines, err = cli(capsys, "--model", env["offline"], "--timestamps", *env["wavs"])
    assert rc == 0, err
    rows = [json.loads(ln) for ln in lines]
    assert [row["utt"] for row in rows] == [w.stem for w in env["wavs"]]
    r = Recognizer.from_pretrained(env["offline"])
    for row, w in zip(rows, env["wavs"]):
        res = r.transcribe(w)
        assert row["text"] == res.text
        assert [(x["word"], x["start"], x["end"]) for x in row["words"]] == [
            (x.word, x.start_s, x.end_s) for x in res.words
        ]


def test_graph_decoding_equals_the_command(env, capsys):
    from distill import Recognizer

    with Recognizer.from_pretrained(env["offline"], graph=env["hlg"], max_active=2000) as r:
        results = r.transcribe(env["wavs"])
    rc, lines, err = cli(capsys, "--model", env["offline"], "--graph", env["hlg"], "--max-active", 2000, *env["wavs"])
    assert rc == 0, err
    assert [x.text for x in results] == texts(lines)
    vocab = {w for t in TEXTS for w in t.split()} | {"<UNK>"}
    for res, w in zip(results, env["wavs"]):
        assert all(x.word in vocab for x in res.words)
        check_words(res, sf.info(w).duration)


def test_long_audio_equals_the_command(env, capsys):
    from distill import Recognizer

    long = dict(max_whole_seconds=1.0, window_seconds=0.8, window_overlap_seconds=0.2)
    r = Recognizer.from_pretrained(env["offline"], **long)
    res = r.transcribe(env["wavs"][1])
    flags = [a for k, v in long.items() for a in (f"--{k.replace('_', '-')}", v)]
    rc, lines, err = cli(capsys, "--model", env["offline"], *flags, env["wavs"][1])
    assert rc == 0 and "decoded in 0.8 s windows" in err
    assert texts(lines) == [res.text]
    check_words(res, sf.info(env["wavs"][1]).duration)


def test_stream_equals_transcribe_streaming(env, capsys):
    from distill import Recognizer

    r = Recognizer.from_pretrained(env["streaming"])
    assert r.streaming
    rc, lines, err = cli(capsys, "--model", env["streaming"], "--streaming", "--partial", *env["wavs"][:2])
    assert rc == 0, err
    for k, w in enumerate(env["wavs"][:2]):
        x, _ = sf.read(w, dtype="float32")
        # pieces of 40 ms, as the command feeds them: the same partial results
        s = r.stream()
        events = [ev for i in range(0, len(x), 640) for ev in s.accept(x[i : i + 640])]
        final = s.finish()
        assert final.final and not any(ev.final for ev in events)
        assert final.text == texts(lines)[k]
        cli_partials = [ln.split(" [partial] ", 1)[1] if " [partial] " in ln else "" for ln in err.splitlines()]
        cli_partials = [p for ln, p in zip(err.splitlines(), cli_partials) if ln.startswith(f"{w.stem} [partial]")]
        assert [ev.text for ev in events] == cli_partials
        # greedy partials only grow: each is a prefix of the next, ending in the final text
        seq = [ev.text for ev in events] + [final.text]
        assert all(b.startswith(a) for a, b in zip(seq, seq[1:]))
        check_words(final, len(x) / 16000)
        # any piece sizes: the same final text
        s = r.stream()
        rng = np.random.default_rng(k)
        i = 0
        while i < len(x):
            n = int(rng.integers(1, 3000))
            s.accept(x[i : i + n])
            i += n
        assert s.finish().text == final.text


def test_stream_with_a_graph(env, capsys):
    from distill import Recognizer

    with Recognizer.from_pretrained(env["streaming"], graph=env["hlg"]) as r:
        x, _ = sf.read(env["wavs"][0], dtype="float32")
        s = r.stream()
        events = [ev for i in range(0, len(x), 640) for ev in s.accept(x[i : i + 640])]
        final = s.finish()
    rc, lines, err = cli(capsys, "--model", env["streaming"], "--streaming", "--graph", env["hlg"], env["wavs"][0])
    assert rc == 0, err
    assert final.text == texts(lines)[0]
    assert all(not ev.final for ev in events)
    check_words(final, len(x) / 16000)


def test_refusals(env, capsys, tmp_path):
    from distill import Recognizer

    r = Recognizer.from_pretrained(env["offline"])
    assert not r.streaming
    with pytest.raises(NotStreamingError, match="not trained for streaming") as e:
        r.stream()
    assert str(env["offline"]) in str(e.value)
    rc, lines, err = cli(capsys, "--model", env["offline"], "--streaming", env["wavs"][0])
    assert rc == 2 and lines == []
    assert f"error: model '{env['offline']}' was not trained for streaming" in err
    s = Recognizer.from_pretrained(env["streaming"]).stream()
    s.finish()
    with pytest.raises(RuntimeError, match="already finished"):
        s.accept(np.zeros(10, np.float32))
    # a model directory without tokens: say what to pass
    bare = tmp_path / "bare"
    save_pretrained(W2V2Model(tiny(vocab_size=len(r._lo.tok.pieces))).eval(), bare)
    with pytest.raises(ValueError, match="carries no tokens") as e:
        Recognizer.from_pretrained(bare)
    assert "lang_dir=" in str(e.value) and "stage 1" not in str(e.value)
    rc, _, err = cli(capsys, "--model", bare, env["wavs"][0])
    assert rc == 2 and "pass --lang-dir" in err and "tokens.txt" in err and "stage 1" not in err
    assert Recognizer.from_pretrained(bare, lang_dir=env["lang"]).transcribe(env["wavs"][0]).text is not None
    with pytest.raises(TypeError, match="unknown option"):
        Recognizer.from_pretrained(env["offline"], streaming=True)
    with pytest.raises(ValueError, match="mono"):
        r.transcribe(np.zeros((2, 3, 4), np.float32))


def test_import_distill_stays_light():
    code = "import sys, distill; assert 'torch' not in sys.modules, 'torch'; print(distill.Recognizer.__name__)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "Recognizer", p.stderr
