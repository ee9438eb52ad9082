"""Fault injection, hostile inputs (issue 16): each reaches a real entry point and must give a clear error
naming the file, line, key or utterance and the real cause, or a counted skip, without losing the other
utterances.

* ``transcribe --wav-scp``: a UTF-8 byte-order mark before the first id, a directory, a FIFO and a symlink
  loop given as audio, a ``cmd |`` pipe that hangs with a child process (``--pipe-timeout``), a line that is
  not UTF-8; a truncated ``model.safetensors`` and a corrupt ``bpe.model`` (also through train and decode).
* stage 0 (``prepare_manifests``) on Kaldi dirs with the same audio faults, byte-order marks in ``wav.scp``,
  ``text``, ``segments`` and ``utt2spk``, ``nan`` segment times and a hanging pipe (``pipe_timeout``).
* the recipes' ``run.sh`` given a relative ``--corpus-dir`` from another directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import test_train_stages as stages  # noqa: E402  (tests/ is on sys.path under pytest)
import yaml
from model_fixtures import save_tiny_model, write_char_lang
from test_recipes import RECIPES, recipe_copy  # noqa: E402

from distill.data import report as R

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["THE DOG RAN", "A CAT SAT", "THE SUN IS UP"]
BOM = b"\xef\xbb\xbf"
PIPE_TIMEOUT = 2


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["VIRTUAL_ENV"] = sys.prefix
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def _python(*args: str, cwd: Path | None = None, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, env=_env(), cwd=cwd, timeout=timeout
    )
    return r, time.monotonic() - t0


def _noise(path: Path, seconds: float, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.1 * np.random.default_rng(seed).standard_normal(int(16000 * seconds)).astype(np.float32), 16000)
    return path


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie waiting for a reaper counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _hostile_audio(d: Path) -> dict[str, str]:
    """A directory, a FIFO and a symlink loop where audio files are expected, and a pipe command that hangs
    in a child process which writes its pid to ``<d>/hang.pid`` (utterance id -> wav.scp value)."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "adir.wav").mkdir()
    os.mkfifo(d / "fifo.wav")
    os.symlink(d / "loop_b.wav", d / "loop_a.wav")
    os.symlink(d / "loop_a.wav", d / "loop_b.wav")
    return {
        "u-dir": str(d / "adir.wav"),
        "u-fifo": str(d / "fifo.wav"),
        "u-loop": str(d / "loop_a.wav"),
        "u-hang": f"sh -c 'echo $$ > {d / 'hang.pid'}; exec sleep 30' | cat |",
    }


def _write_bytes_lines(path: Path, lines: list[str], bom: bool = False) -> None:
    path.write_bytes((BOM if bom else b"") + "".join(x + "\n" for x in lines).encode("utf-8"))


# ------------------------------------------------------------------------------------------ transcribe
@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A char lang dir and a tiny random wav2vec 2.0 model in Hugging Face format."""
    tmp = tmp_path_factory.mktemp("inputs_model")
    tok = write_char_lang(tmp / "lang", TEXTS)
    save_tiny_model(tmp / "model", tok.vocab_size, num_hidden_layers=1)
    return tmp, tmp / "lang", tmp / "model"


def _transcribe(model_dir: Path, lang: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    return _python(
        "distill.bin.transcribe", "--model", str(model_dir), "--lang-dir", str(lang), "--num-threads", "1", *args
    )


@pytest.fixture(scope="module")
def hostile_scp(model, tmp_path_factory):
    """``transcribe --wav-scp`` over a wav.scp that starts with a byte-order mark and lists, between two good
    files, a directory, a FIFO, a symlink loop and a pipe that hangs (``--pipe-timeout 2``)."""
    _, lang, model_dir = model
    d = tmp_path_factory.mktemp("hostile_scp")
    bad = _hostile_audio(d / "audio")
    lines = [
        f"u-first {_noise(d / 'a.wav', 0.6, 1)}",
        *(f"{u} {v}" for u, v in bad.items()),
        f"u-last {_noise(d / 'b.wav', 0.6, 2)}",
    ]
    scp = d / "wav.scp"
    _write_bytes_lines(scp, lines, bom=True)
    r, seconds = _transcribe(model_dir, lang, "--wav-scp", str(scp), "--pipe-timeout", str(PIPE_TIMEOUT))
    return r, seconds, d, scp


def test_transcribe_strips_a_bom_and_says_so(hostile_scp):
    r, _, _, scp = hostile_scp
    assert r.returncode == 0, r.stderr[-3000:]
    ids = [ln.split()[0] for ln in r.stdout.splitlines() if ln.strip()]
    assert ids == ["u-first", "u-last"], r.stdout
    assert f"{scp}: removed the UTF-8 byte-order mark" in r.stderr


def test_transcribe_names_a_directory_fifo_and_symlink_loop(hostile_scp):
    r, seconds, d, _ = hostile_scp
    a = d / "audio"
    assert f"skipping utterance 'u-dir': audio file '{a / 'adir.wav'}' is a directory" in r.stderr
    assert f"skipping utterance 'u-fifo': audio file '{a / 'fifo.wav'}' is a FIFO" in r.stderr
    assert f"skipping utterance 'u-loop': audio file '{a / 'loop_a.wav'}' is a symlink loop" in r.stderr
    assert "does not exist" not in r.stderr
    assert "transcribed 2 utterances, skipped 4" in r.stderr  # the utterance after them is not lost
    assert seconds < 60  # the FIFO was never opened (opening it would block with no writer)


def test_transcribe_pipe_timeout_kills_the_pipe_and_its_children(hostile_scp):
    r, seconds, d, _ = hostile_scp
    assert (
        f"skipping utterance 'u-hang': command \"sh -c 'echo $$ ...\" did not finish within the pipe "
        f"timeout of {PIPE_TIMEOUT} s; it was killed with its child processes"
    ) in r.stderr, r.stderr
    pid = int((d / "audio" / "hang.pid").read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid), "the pipe's child process survived the timeout"
    assert seconds < 25
    h = _python("distill.bin.transcribe", "--help")[0]
    assert "--pipe-timeout" in h.stdout and "(default: 600)" in " ".join(h.stdout.split())


def test_transcribe_non_utf8_wav_scp_names_file_and_line(model, tmp_path):
    _, lang, model_dir = model
    scp = tmp_path / "wav.scp"
    wav = _noise(tmp_path / "a.wav", 0.5, 3)
    scp.write_bytes(f"u1 {wav}\n".encode() + b"u2 /data/caf\xe9.wav\n")
    r, _ = _transcribe(model_dir, lang, "--wav-scp", str(scp))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"error: {scp}:2: line of 'u2' is not valid UTF-8 (invalid continuation byte at byte 12)" in r.stderr


def test_transcribe_truncated_weights_and_corrupt_bpe_model(model, tmp_path):
    _, lang, model_dir = model
    wav = str(_noise(tmp_path / "a.wav", 0.5, 4))
    trunc = tmp_path / "model"
    shutil.copytree(model_dir, trunc)
    st = trunc / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    r, _ = _transcribe(trunc, lang, wav)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1, r.stderr[-3000:]
    assert err[0].startswith(f"error: {st}: cannot read the weights (truncated or not a safetensors file?)")

    bad_lang = tmp_path / "lang"
    shutil.copytree(lang, bad_lang)
    (bad_lang / "bpe.model").write_bytes(b"\x0a\x05not a sentencepiece model" * 4)
    r, _ = _transcribe(model_dir, bad_lang, wav)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1, r.stderr[-3000:]
    assert err[0].startswith(f"error: {bad_lang / 'bpe.model'}: not a valid sentencepiece model")


@pytest.fixture(scope="module")
def train_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs_train")
    lang = stages.make_lang(root)
    from distill.data.tokenizer import Tokenizer

    vocab = Tokenizer.load(lang).vocab_size
    return root, lang, stages.make_teacher_hf(root, vocab), vocab


def _train(env, tmp: Path, capsys, task: str, **cfg_kw) -> tuple[int, str]:
    from distill.bin import train as train_cli

    exp = tmp / "exp"
    cfg = stages.stage_cfg(env, exp, task, **cfg_kw)
    cfg["train"] = stages.base_train(exp, steps=1)
    tmp.mkdir(parents=True, exist_ok=True)
    with pytest.raises(SystemExit) as e:
        train_cli.main(["--config", str(stages.write_cfg(tmp / "cfg.yaml", cfg))])
    return e.value.code, capsys.readouterr().err


def test_train_and_decode_name_truncated_weights_and_corrupt_bpe_model(train_env, tmp_path, capsys):
    from distill.bin import decode

    root, lang, teacher, _ = train_env
    trunc = tmp_path / "teacher"
    shutil.copytree(teacher, trunc)
    st = trunc / "model.safetensors"
    st.write_bytes(st.read_bytes()[:100])
    code, err = _train(train_env, tmp_path / "a", capsys, "teacher", model={"path": str(trunc)})
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert "key 'model.path'" in err and f"{st}: cannot read the weights" in err, err[-3000:]

    bad_lang = tmp_path / "lang"
    shutil.copytree(lang, bad_lang)
    (bad_lang / "bpe.model").write_bytes(b"garbage" * 8)
    code, err = _train(train_env, tmp_path / "b", capsys, "teacher", lang_dir=str(bad_lang))
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 1 and "Traceback" not in err, err[-3000:]
    assert len(lines) == 1 and f"{bad_lang / 'bpe.model'}: not a valid sentencepiece model" in lines[0], err

    rc = decode.main([f"lang_dir={bad_lang}", f"out_dir={tmp_path / 'dec'}", f"exp_root={tmp_path / 'exp'}"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == 1 and "Traceback" not in err, err[-3000:]
    assert len(lines) == 1 and f"{bad_lang / 'bpe.model'}: not a valid sentencepiece model" in lines[0], err


# ------------------------------------------------------------------------------------------ stage 0
@pytest.fixture(scope="module")
def stage0(tmp_path_factory):
    """prepare_manifests on a Kaldi corpus: train (byte-order marks in wav.scp, text and utt2spk, each before a
    different id; a directory, a FIFO, a symlink loop and a hanging pipe as audio) and dev (a segments file
    with a byte-order mark and nan start/end times), with ``pipe_timeout: 2``."""
    root = tmp_path_factory.mktemp("inputs_stage0")
    corpus = root / "corpus"
    train, dev = corpus / "train", corpus / "dev"
    train.mkdir(parents=True)
    dev.mkdir()
    good = {f"g{i}": str(_noise(root / "audio" / f"g{i}.wav", 0.8, 10 + i)) for i in range(3)}
    bad = _hostile_audio(root / "hostile")
    wav = {**good, **bad}
    ids = list(wav)
    _write_bytes_lines(train / "wav.scp", [f"{u} {wav[u]}" for u in ids], bom=True)
    _write_bytes_lines(train / "text", [f"{u} {TEXTS[0]}" for u in ids[1:] + ids[:1]], bom=True)
    _write_bytes_lines(train / "utt2spk", [f"{u} spk" for u in ids[2:] + ids[:2]], bom=True)
    rec = _noise(root / "audio" / "long.wav", 3.0, 20)
    _write_bytes_lines(dev / "wav.scp", [f"rec {rec}"])
    segs = [("d-ok", "0.0", "1.0"), ("d-nanstart", "nan", "2.0"), ("d-nanend", "1.0", "NaN"), ("d-ok2", "2.0", "3.0")]
    _write_bytes_lines(dev / "segments", [f"{u} rec {s} {e}" for u, s, e in segs], bom=True)
    _write_bytes_lines(dev / "text", [f"{u} {TEXTS[1]}" for u, _, _ in segs])
    _write_bytes_lines(dev / "utt2spk", [f"{u} spk" for u, _, _ in segs])
    conf = root / "data.yaml"
    conf.write_text(
        yaml.safe_dump(
            {"corpus": "kaldi", "splits": {"train": ["train"], "dev": ["dev"]}, "nj": 2, "pipe_timeout": PIPE_TIMEOUT}
        )
    )
    r, seconds = _python(
        "distill.bin.prepare_manifests", "--config", str(conf), f"corpus_dir={corpus}", f"out_dir={root / 'out'}"
    )
    summary = json.loads((root / "out" / "summary.json").read_text()) if r.returncode == 0 else {}
    return r, seconds, root, summary


def _stage0_ok(stage0) -> tuple:
    r, seconds, root, summary = stage0
    assert r.returncode == 0, r.stderr[-3000:]
    return r, seconds, root, summary["splits"]


def test_stage0_counts_nan_segment_times_with_their_line(stage0):
    _, _, root, s = _stage0_ok(stage0)
    dev = s["dev"]
    assert dev["dropped_by_reason"] == {R.BAD_SEGMENT_TIME: 2} and dev["kept"] == 2, dev
    ex = dev["examples"][R.BAD_SEGMENT_TIME]
    seg = root / "corpus" / "dev" / "segments"
    assert f"d-nanstart: {seg}:2: start 'nan', end '2.0'" in ex and f"d-nanend: {seg}:3: start '1.0', end 'NaN'" in ex


def test_stage0_strips_a_bom_in_every_kaldi_file(stage0):
    r, _, root, s = _stage0_ok(stage0)
    # every first id matched its lines in the other files: no unmatched ids, no missing speaker
    assert set(s["train"]["dropped_by_reason"]) == {R.NOT_REGULAR_FILE, R.AUDIO_CMD_FAILED}
    assert s["train"]["kept"] == 3 and not s["train"]["notes"]
    from lhotse import CutSet

    cuts = CutSet.from_file(root / "out" / "kaldi_cuts_train.jsonl.gz")
    assert sorted(c.id for c in cuts) == ["g0", "g1", "g2"]
    assert {c.supervisions[0].speaker for c in cuts} == {"spk"}
    for name in ("train/wav.scp", "train/text", "train/utt2spk", "dev/segments"):
        assert f"{root / 'corpus' / name}: removed the UTF-8 byte-order mark" in r.stderr, name


def test_stage0_names_a_directory_fifo_and_symlink_loop(stage0):
    _, seconds, root, s = _stage0_ok(stage0)
    train = s["train"]
    assert train["dropped_by_reason"][R.NOT_REGULAR_FILE] == 3
    h = root / "hostile"
    assert sorted(train["examples"][R.NOT_REGULAR_FILE]) == [
        f"u-dir: '{h / 'adir.wav'}' is a directory, not a regular file",
        f"u-fifo: '{h / 'fifo.wav'}' is a FIFO (named pipe), not a regular file",
        f"u-loop: '{h / 'loop_a.wav'}' is a symlink loop",
    ]
    assert seconds < 60


def test_stage0_pipe_timeout_kills_the_pipe_and_its_children(stage0):
    _, seconds, root, s = _stage0_ok(stage0)
    assert s["train"]["dropped_by_reason"][R.AUDIO_CMD_FAILED] == 1
    (ex,) = s["train"]["examples"][R.AUDIO_CMD_FAILED]
    assert ex.startswith('u-hang: command "sh -c \'echo $$ ..." did not finish within the pipe timeout of 2 s')
    pid = int((root / "hostile" / "hang.pid").read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid), "the pipe's child process survived the timeout"
    assert seconds < 40


@pytest.mark.parametrize("value", ["0", "-5", ".nan", "abc"])
def test_stage0_pipe_timeout_is_validated(tmp_path, capsys, value):
    from distill.bin import prepare_manifests

    (tmp_path / "c").mkdir()
    with pytest.raises(SystemExit) as e:
        prepare_manifests.main(
            ["corpus=kaldi", f"corpus_dir={tmp_path / 'c'}", f"out_dir={tmp_path / 'out'}", f"pipe_timeout={value}"]
        )
    err = capsys.readouterr().err
    assert e.value.code == 2 and "key 'pipe_timeout': " in err and "unknown key" not in err, err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ run.sh paths
def _kaldi_corpus(root: Path) -> None:
    for part in ("train", "dev", "test"):
        d = root / part
        d.mkdir(parents=True)
        ids = [f"{part}-{i}" for i in range(2)]
        _write_bytes_lines(
            d / "wav.scp", [f"{u} {_noise(root / 'audio' / f'{u}.wav', 0.8, i)}" for i, u in enumerate(ids)]
        )
        _write_bytes_lines(d / "text", [f"{u} {TEXTS[0]}" for u in ids])
        _write_bytes_lines(d / "utt2spk", [f"{u} spk" for u in ids])


def test_run_sh_takes_a_relative_corpus_dir_from_where_it_was_started(tmp_path):
    d = recipe_copy(tmp_path / "r", "inhouse")
    caller = tmp_path / "work"
    _kaldi_corpus(caller / "data" / "LS")
    r = subprocess.run(
        ["bash", str(d / "run.sh"), "--stop-stage", "0", "--corpus-dir", "data/LS"],
        cwd=caller,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    index = yaml.safe_load((d / "data" / "manifests" / "splits.yaml").read_text())
    assert json.dumps(index).count("num_utterances") >= 3
    assert not (caller / "data" / "manifests").exists()  # outputs stay in the recipe directory


@pytest.mark.parametrize("recipe", RECIPES)
def test_run_sh_missing_relative_path_names_both_places(tmp_path, recipe):
    d = recipe_copy(tmp_path / "r", recipe)
    caller = tmp_path / "work"
    caller.mkdir()
    r = subprocess.run(
        ["bash", str(d / "run.sh"), "--stop-stage", "0", "--corpus-dir", "data/nothere"],
        cwd=caller,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert r.returncode != 0
    assert f"--corpus-dir 'data/nothere' exists neither in {caller} (where" in r.stderr, r.stderr[-3000:]
    assert f"key 'corpus_dir': path '{caller / 'data' / 'nothere'}' does not exist" in r.stderr, r.stderr[-3000:]


SCRIPT = """#!/usr/bin/env bash
set -euo pipefail
run_dir=$PWD
cd "$(dirname "$0")"
corpus_dir=download
teacher_model=
conf_dir=conf
parts=
. {utils}/parse_options.sh
echo "corpus_dir=$corpus_dir teacher_model=$teacher_model conf_dir=$conf_dir parts=$parts"
"""


def test_parse_options_resolves_path_options_from_the_start_directory(tmp_path):
    """Only options named *_dir/*_file/*_model/*_path and given on the command line change; a path that exists
    only in the script's directory keeps its old meaning; from the script's own directory nothing changes."""
    rdir, caller = tmp_path / "recipe", tmp_path / "work"
    (rdir / "conf" / "tiny").mkdir(parents=True)
    (caller / "data").mkdir(parents=True)
    (caller / "m.pt").write_text("")
    script = rdir / "run.sh"
    script.write_text(SCRIPT.format(utils=REPO / "utils"))
    args = ["--teacher-model", "m.pt", "--conf-dir", "conf/tiny", "--parts", "data"]
    r = subprocess.run(["bash", str(script), *args], cwd=caller, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"corpus_dir=download teacher_model={caller}/m.pt conf_dir=conf/tiny parts=data"
    r = subprocess.run(
        ["bash", "run.sh", "--conf-dir", "conf/tiny", "--corpus-dir", "x"], cwd=rdir, capture_output=True, text=True
    )
    assert r.returncode == 0 and r.stdout.strip() == "corpus_dir=x teacher_model= conf_dir=conf/tiny parts=", r.stderr
    assert (
        "invalid option"
        in subprocess.run(["bash", str(script), "--run-dir", "/"], capture_output=True, text=True).stderr
    )
