"""Fault injection, token inventories: a model directory carries its tokens, and every step that pairs a
model with a lang dir (train: teacher and ``student.init_from``; transcribe; decode) refuses a lang of the
same size but other tokens with a one-line error naming both sides, both sizes and the first differing
id. A model without tokens (an imported checkpoint, an older model dir) falls back to the size check.

The steps run through their ``main`` (one transcribe run as ``python -m`` checks the real command line).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import soundfile as sf
import yaml

from distill.bin import decode as decode_cli
from distill.bin import transcribe
from distill.data.tokenizer import (
    Tokenizer,
    TokenMismatchError,
    check_same_tokens,
    copy_token_files,
    read_token_inventory,
    train_bpe,
    write_lang_files,
)
from tests.test_train_stages import DEV, TEXTS, _tone, make_lang, make_teacher_hf, run_stage, stage_cfg

SWAP = (5, 6)  # two character tokens whose symbols the "other" lang swaps (same size, other tokens)


def _tokens(lang: Path) -> list[str]:
    return [ln.split()[0] for ln in (lang / "tokens.txt").read_text(encoding="utf-8").splitlines()]


def _variant(lang: Path, dst: Path, tokens: list[str]) -> Path:
    """A copy of ``lang`` (cuts, den.pt) whose tokens.txt lists ``tokens``; test set = the dev cuts."""
    shutil.copytree(lang, dst)
    (dst / "tokens.txt").write_text("".join(f"{t} {i}\n" for i, t in enumerate(tokens)), encoding="utf-8")
    return dst


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A char lang (with a test set), its same-size/other-tokens and one-bigger variants, a tokenless HF
    teacher, and a teacher model directory written by training (2 updates)."""
    root = tmp_path_factory.mktemp("tokens")
    lang = make_lang(root)
    index = yaml.safe_load((lang / "cuts.yaml").read_text())
    index["test"] = {"dev": index["dev"]}
    (lang / "cuts.yaml").write_text(yaml.safe_dump(index))
    toks = _tokens(lang)
    swapped = list(toks)
    swapped[SWAP[0]], swapped[SWAP[1]] = toks[SWAP[1]], toks[SWAP[0]]
    other = _variant(lang, root / "lang_other", swapped)
    bigger = _variant(lang, root / "lang_bigger", toks + ["Z"])
    hf = make_teacher_hf(root, len(toks))  # no tokens.txt: a plain imported checkpoint
    e = (root, lang, hf, len(toks))
    exp = root / "exp" / "teacher"
    assert run_stage(root, stage_cfg(e, exp, "teacher", train={"max_steps": 2})) == 0
    wav = root / "utt1.wav"
    sf.write(wav, _tone("THE CAT SAT", 7), 16000)
    return {
        "root": root,
        "lang": lang,
        "other": other,
        "bigger": bigger,
        "hf": hf,
        "model": exp / "model",
        "toks": toks,
        "wav": wav,
        "env": e,
    }


def _train_err(capsys, env, tmp_path: Path, lang: Path, task: str = "distill", **kw) -> tuple[int, str]:
    """Run a training stage that must fail; its exit status and the last line on stderr."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = stage_cfg(env["env"], tmp_path / "exp", task, lang_dir=str(lang), **kw)
    rc = run_stage(tmp_path, cfg)
    return rc, capsys.readouterr().err.strip().splitlines()[-1]


def _mismatch(a_label: str, a: Path, b: Path, env, i: int = SWAP[0]) -> str:
    t, o = env["toks"], _tokens(b)
    return (
        f"{a_label} '{a}' ({len(t)} tokens) and lang dir '{b}' ({len(o)} tokens) have different tokens: "
        f"id {i} is {t[i]!r} in the {a_label} but {o[i]!r} in the lang dir"
    )


# ------------------------------------------------------------------------------------------ the functions
def test_check_same_tokens_message_and_fallbacks(env, tmp_path):
    lang, other, model, hf = env["lang"], env["other"], env["model"], env["hf"]
    v = len(env["toks"])
    check_same_tokens(model, "model", lang, "lang dir", a_size=v, b_size=v)
    with pytest.raises(TokenMismatchError) as e:
        check_same_tokens(model, "teacher", other, "lang dir", a_size=v, b_size=v)
    assert str(e.value) == _mismatch("teacher", model, other, env)
    assert isinstance(e.value, ValueError)
    # one side without tokens: only the sizes count
    assert read_token_inventory(hf) is None and read_token_inventory(tmp_path / "nope.pt") is None
    check_same_tokens(hf, "model", other, "lang dir", a_size=v, b_size=v)
    with pytest.raises(TokenMismatchError, match=rf"model '{hf}' has {v} outputs but lang dir '.*' has {v + 1} tokens"):
        check_same_tokens(hf, "model", env["bigger"], "lang dir", a_size=v, b_size=v + 1)
    # a model whose outputs do not match the tokens it carries
    with pytest.raises(TokenMismatchError, match=rf"has {v + 1} outputs but its token files list {v} tokens"):
        check_same_tokens(model, "model", lang, "lang dir", a_size=v + 1)


def test_copy_token_files_replaces_a_stale_bpe_model(env, tmp_path):
    (tmp_path / "bpe.model").write_bytes(b"stale")
    assert copy_token_files(env["lang"], tmp_path) == ["tokens.txt"]
    assert not (tmp_path / "bpe.model").exists()
    assert read_token_inventory(tmp_path) == env["toks"]


# ------------------------------------------------------------------------------------------ training
def test_trained_model_dir_carries_the_lang_tokens(env):
    model = env["model"]
    assert (model / "tokens.txt").read_bytes() == (env["lang"] / "tokens.txt").read_bytes()
    assert not (model / "bpe.model").exists()


def test_trained_model_dir_carries_the_bpe_model(env, tmp_path):
    lang = tmp_path / "lang_bpe"
    shutil.copytree(env["lang"], lang)
    for f in ("tokens.txt", "den.pt"):
        (lang / f).unlink()
    text = tmp_path / "text.txt"
    text.write_text("".join(t + "\n" for t in TEXTS + DEV))
    tok = train_bpe(text, lang, vocab_size=20)
    write_lang_files(lang, tok, {w for t in TEXTS + DEV for w in t.split()})
    exp = tmp_path / "exp"
    cfg = stage_cfg(
        env["env"],
        exp,
        "teacher",
        lang_dir=str(lang),
        train={"max_steps": 2},
        objective={"distill_weight": 0.0, "lfmmi_weight": 0.0, "ctc_weight": 1.0},
    )
    assert run_stage(tmp_path, cfg) == 0  # the char-vocabulary checkpoint gets a new head
    for f in ("bpe.model", "tokens.txt"):
        assert (exp / "model" / f).read_bytes() == (lang / f).read_bytes(), f
    assert Tokenizer.load(exp / "model").pieces == tok.pieces


def test_train_refuses_a_teacher_with_other_tokens(env, tmp_path, capsys):
    rc, err = _train_err(capsys, env, tmp_path, env["other"], teacher=str(env["model"]))
    assert rc == 2
    assert err.startswith("error: ")
    assert err.endswith(f"key 'teacher': {_mismatch('teacher', env['model'], env['other'], env)}")


def test_train_refuses_a_student_init_from_with_other_tokens(env, tmp_path, capsys):
    # the tokenless teacher of the same size passes (size fallback); the student model does not
    rc, err = _train_err(
        capsys,
        env,
        tmp_path,
        env["other"],
        task="distill_streaming",
        teacher=str(env["hf"]),
        student={"init_from": str(env["model"]), "preset": None},
    )
    assert rc == 2
    assert err.endswith(f"key 'student.init_from': {_mismatch('model', env['model'], env['other'], env)}")


def test_train_refuses_a_size_mismatch(env, tmp_path, capsys):
    v, bigger = len(env["toks"]), env["bigger"]
    rc, err = _train_err(capsys, env, tmp_path / "a", bigger, teacher=str(env["hf"]))
    assert rc == 2
    assert err.endswith(
        f"key 'teacher': teacher '{env['hf']}' has {v} outputs but lang dir '{bigger}' has {v + 1} tokens"
    )
    rc, err = _train_err(capsys, env, tmp_path / "b", bigger, teacher=str(env["model"]))
    assert rc == 2
    assert err.endswith(
        f"key 'teacher': teacher '{env['model']}' ({v} tokens) and lang dir '{bigger}' ({v + 1} "
        f"tokens) have different tokens: id {v} is absent in the teacher but 'Z' in the lang dir"
    )


# ------------------------------------------------------------------------------------------ transcribe
def _transcribe(capsys, *args) -> tuple[int, list[str], str]:
    rc = transcribe.main([str(a) for a in args] + ["--num-threads", "1"])
    out, err = capsys.readouterr()
    return rc, out.splitlines(), err.strip()


def test_transcribe_uses_the_tokens_of_a_trained_model_dir(env, capsys):
    rc, lines, err = _transcribe(capsys, "--model", env["model"], env["wav"])
    assert rc == 0, err
    assert len(lines) == 1 and lines[0].split()[0] == "utt1"
    rc, lines2, err = _transcribe(capsys, "--model", env["model"], "--lang-dir", env["lang"], env["wav"])
    assert rc == 0 and lines2 == lines, err


def test_transcribe_refuses_other_tokens_and_sizes(env, capsys):
    rc, _, err = _transcribe(capsys, "--model", env["model"], "--lang-dir", env["other"], env["wav"])
    assert rc == 2 and err == f"error: {_mismatch('model', env['model'], env['other'], env)}"
    v = len(env["toks"])
    rc, _, err = _transcribe(capsys, "--model", env["hf"], "--lang-dir", env["bigger"], env["wav"])
    assert rc == 2
    assert err == f"error: model '{env['hf']}' has {v} outputs but lang dir '{env['bigger']}' has {v + 1} tokens"


def test_transcribe_model_without_tokens(env, capsys):
    rc, lines, err = _transcribe(capsys, "--model", env["hf"], "--lang-dir", env["other"], env["wav"])
    assert rc == 0 and len(lines) == 1, err  # size fallback
    rc, _, err = _transcribe(capsys, "--model", env["hf"], env["wav"])
    assert rc == 2 and "carries no tokens" in err and "pass --lang-dir" in err and "stage 1" not in err


def test_transcribe_cli_error_is_one_line(env):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "distill.bin.transcribe",
            "--model",
            str(env["model"]),
            "--lang-dir",
            str(env["other"]),
            str(env["wav"]),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == f"error: {_mismatch('model', env['model'], env['other'], env)}"


# ------------------------------------------------------------------------------------------ decode (stage 6)
def _decode(env, tmp_path: Path, lang: Path, models: list[dict]) -> tuple[int, str]:
    cfg = {
        "lang_dir": str(lang),
        "exp_root": str(tmp_path),
        "out_dir": str(tmp_path / "decode"),
        "methods": ["greedy"],
        "speed_max_utts": 1,
        "max_utts": 1,
        "models": models,
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    conf = tmp_path / "decode.yaml"
    conf.write_text(yaml.safe_dump(cfg, sort_keys=False))
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stderr", err)
        rc = decode_cli.main(["--config", str(conf)])
    return rc, err.getvalue().strip()


def test_decode_checks_each_model_against_the_lang(env, tmp_path):
    rows = [{"name": "trained", "path": str(env["model"])}, {"name": "tokenless", "path": str(env["hf"])}]
    rc, err = _decode(env, tmp_path / "ok", env["lang"], rows)
    assert rc == 0, err
    results = (tmp_path / "ok" / "RESULTS.md").read_text()
    assert "| trained" in results and "| tokenless" in results
    rc, err = _decode(env, tmp_path / "bad", env["other"], rows)
    assert rc == 1
    line = err.splitlines()[-1]
    assert line.startswith(f"error: model 'trained' ({env['model']}, fp32): ")
    assert line.endswith(_mismatch("model", env["model"], env["other"], env))
