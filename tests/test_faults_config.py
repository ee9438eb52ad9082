"""Fault injection, configuration: every ``distill.bin.*`` step that takes ``--config`` refuses an unknown
key, a value of the wrong type and a missing input path with exit status 2 and a message naming the key
and the file, before it writes anything (no output directory, no log file, no partial output).

The cases run the steps' ``main`` in-process (fast); one test starts every step as ``python -m`` to check
the real command line end to end.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# step -> (a valid configuration with placeholders, {case: (edit, key named in the message)}).
# "{in}" is an existing input directory, "{nope}" a path that does not exist; outputs go to out/.
STEPS: dict[str, tuple[dict, dict[str, tuple[dict, str]]]] = {
    "prepare_manifests": (
        {"corpus": "kaldi", "corpus_dir": "{in}", "out_dir": "out/manifests"},
        {"unknown": ({"bogus_key": 1}, "bogus_key"),
         "type": ({"nj": "two"}, "nj"),
         "path": ({"corpus_dir": "{nope}"}, "corpus_dir"),
         "required": ({"corpus": None}, "corpus")},
    ),
    "prepare_lang": (
        {"manifest_dir": "{in}", "lang_dir": "out/lang"},
        {"unknown": ({"tokenizer": {"vocab_sise": 40}}, "tokenizer.vocab_sise"),
         "type": ({"tokenizer": {"vocab_size": "many"}}, "tokenizer.vocab_size"),
         "path": ({"manifest_dir": "{nope}"}, "manifest_dir")},
    ),
    "build_den_graph": (
        {"lang_dir": "{in}"},
        {"unknown": ({"smoothin": "kneser_ney"}, "smoothin"),
         "type": ({"order": 2.5}, "order"),
         "path": ({"lang_dir": "{nope}"}, "lang_dir"),
         "required": ({"lang_dir": None}, "lang_dir")},
    ),
    "build_decode_graph": (
        {"lang_dir": "{in}", "out_dir": "out/lang_test"},
        {"unknown": ({"lm_ordr": 3}, "lm_ordr"),
         "type": ({"lm_order": "three"}, "lm_order"),
         "path": ({"lm_arpa": "{nope}"}, "lm_arpa")},
    ),
    "decode": (
        {"lang_dir": "{in}", "out_dir": "out/decode", "exp_root": "out", "models": [{"name": "a", "path": "{in}"}]},
        {"unknown": ({"models": [{"name": "a", "path": "{in}", "fromat": "int8"}]}, "models[0].fromat"),
         "type": ({"beam": "wide"}, "beam"),
         "path": ({"lang_dir": "{nope}"}, "lang_dir")},
    ),
    "train": (
        {"task": "distill", "lang_dir": "{in}", "exp_dir": "out/exp", "teacher": "{in}"},
        {"unknown": ({"train": {"max_stepz": 10}}, "train.max_stepz"),
         "type": ({"train": {"max_steps": "ten"}}, "train.max_steps"),
         "path": ({"teacher": "{nope}"}, "teacher")},
    ),
    # bench_models reads no input file or directory: there is no path to be missing
    "bench_models": (
        {"output": "out/bench.json", "seconds": 1.0},
        {"unknown": ({"secnds": 1.0}, "secnds"),
         "type": ({"seconds": "ten"}, "seconds")},
    ),
}

CASES = [(step, case) for step, (_, cases) in STEPS.items() for case in cases]


def _fill(obj: Any, inp: Path, nope: Path) -> Any:
    if isinstance(obj, dict):
        return {k: _fill(v, inp, nope) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fill(v, inp, nope) for v in obj]
    if obj == "{in}":
        return str(inp)
    if obj == "{nope}":
        return str(nope)
    return obj


def _merge(base: dict, edit: dict) -> dict:
    out = dict(base)
    for k, v in edit.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def bad_config(tmp: Path, step: str, case: str) -> tuple[Path, str]:
    """Write the faulty YAML for ``step``/``case`` under ``tmp``; returns it and the key to be named."""
    base, cases = STEPS[step]
    edit, key = cases[case]
    (tmp / "in").mkdir(exist_ok=True)
    cfg = _fill(_merge(base, edit), tmp / "in", tmp / "does-not-exist")
    path = tmp / f"{step}-{case}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path, key


def tree(root: Path) -> dict[str, float]:
    """Every path under ``root`` with its modification time."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.mark.parametrize("step,case", CASES, ids=[f"{s}-{c}" for s, c in CASES])
def test_config_fault_fails_before_any_work(tmp_path: Path, monkeypatch, capsys, step: str, case: str) -> None:
    monkeypatch.chdir(tmp_path)  # relative defaults (data/..., exp/...) would land here
    cfg, key = bad_config(tmp_path, step, case)
    before = tree(tmp_path)
    mod = importlib.import_module(f"distill.bin.{step}")
    with pytest.raises(SystemExit) as e:
        rc = mod.main(["--config", str(cfg)])
        raise SystemExit(rc)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert f"'{key}'" in err and str(cfg) in err, err
    assert "Traceback" not in err
    assert tree(tmp_path) == before, "a configuration error must not write anything"


def test_overrides_are_named_as_such(tmp_path: Path, monkeypatch, capsys) -> None:
    """A bad ``key=value`` on the command line is reported with the file and '(with command-line overrides)'."""
    from distill.bin import prepare_lang
    monkeypatch.chdir(tmp_path)
    cfg, _ = bad_config(tmp_path, "prepare_lang", "path")
    with pytest.raises(SystemExit) as e:
        prepare_lang.main(["--config", str(cfg), f"manifest_dir={tmp_path / 'in'}", "filter.max_duration=long"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert "'filter.max_duration'" in err and str(cfg) in err and "command-line overrides" in err, err
    assert not (tmp_path / "out").exists()


def test_python_m_entry_points_exit_2_before_work(tmp_path: Path) -> None:
    """Each step as ``python -m distill.bin.<step> --config <file with an unknown key>`` (started together)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = {}
    for step in STEPS:
        cfg, key = bad_config(tmp_path, step, "unknown")
        procs[step] = (key, cfg, subprocess.Popen([sys.executable, "-m", f"distill.bin.{step}", "--config", str(cfg)],
                                                  cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                                  stderr=subprocess.PIPE, text=True))
    before = tree(tmp_path)
    for step, (key, cfg, p) in procs.items():
        _, err = p.communicate(timeout=300)
        assert p.returncode == 2, (step, err[-2000:])
        assert f"'{key}'" in err and str(cfg) in err and "Traceback" not in err, (step, err)
    assert tree(tmp_path) == before and not (tmp_path / "out").exists()
