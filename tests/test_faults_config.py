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
        {
            "unknown": ({"bogus_key": 1}, "bogus_key"),
            "type": ({"nj": "two"}, "nj"),
            "path": ({"corpus_dir": "{nope}"}, "corpus_dir"),
            "required": ({"corpus": None}, "corpus"),
        },
    ),
    "prepare_lang": (
        {"manifest_dir": "{in}", "lang_dir": "out/lang"},
        {
            "unknown": ({"tokenizer": {"vocab_sise": 40}}, "tokenizer.vocab_sise"),
            "type": ({"tokenizer": {"vocab_size": "many"}}, "tokenizer.vocab_size"),
            "path": ({"manifest_dir": "{nope}"}, "manifest_dir"),
        },
    ),
    "build_den_graph": (
        {"lang_dir": "{in}"},
        {
            "unknown": ({"smoothin": "kneser_ney"}, "smoothin"),
            "type": ({"order": 2.5}, "order"),
            "path": ({"lang_dir": "{nope}"}, "lang_dir"),
            "required": ({"lang_dir": None}, "lang_dir"),
        },
    ),
    "build_decode_graph": (
        {"lang_dir": "{in}", "out_dir": "out/lang_test"},
        {
            "unknown": ({"lm_ordr": 3}, "lm_ordr"),
            "type": ({"lm_order": "three"}, "lm_order"),
            "path": ({"lm_arpa": "{nope}"}, "lm_arpa"),
        },
    ),
    "decode": (
        {"lang_dir": "{in}", "out_dir": "out/decode", "exp_root": "out", "models": [{"name": "a", "path": "{in}"}]},
        {
            "unknown": ({"models": [{"name": "a", "path": "{in}", "fromat": "int8"}]}, "models[0].fromat"),
            "type": ({"beam": "wide"}, "beam"),
            "path": ({"lang_dir": "{nope}"}, "lang_dir"),
        },
    ),
    "train": (
        {"task": "distill", "lang_dir": "{in}", "exp_dir": "out/exp", "teacher": "{in}"},
        {
            "unknown": ({"train": {"max_stepz": 10}}, "train.max_stepz"),
            "type": ({"train": {"max_steps": "ten"}}, "train.max_steps"),
            "path": ({"teacher": "{nope}"}, "teacher"),
        },
    ),
    # bench_models reads no input file or directory: there is no path to be missing
    "bench_models": (
        {"output": "out/bench.json", "seconds": 1.0},
        {"unknown": ({"secnds": 1.0}, "secnds"), "type": ({"seconds": "ten"}, "seconds")},
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
        procs[step] = (
            key,
            cfg,
            subprocess.Popen(
                [sys.executable, "-m", f"distill.bin.{step}", "--config", str(cfg)],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
    before = tree(tmp_path)
    for step, (key, cfg, p) in procs.items():
        _, err = p.communicate(timeout=300)
        assert p.returncode == 2, (step, err[-2000:])
        assert f"'{key}'" in err and str(cfg) in err and "Traceback" not in err, (step, err)
    assert tree(tmp_path) == before and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ YAML: duplicates, numbers
def _train_yaml(tmp: Path, body: str) -> Path:
    """A train config written as raw text (duplicates cannot be dumped); ``{in}`` holds a den graph."""
    (tmp / "in").mkdir(exist_ok=True)
    (tmp / "in" / "den.pt").touch()  # check_config only asks that it exists
    path = tmp / "train.yaml"
    path.write_text(f"task: distill\nlang_dir: {tmp / 'in'}\nexp_dir: out/exp\nteacher: {tmp / 'in'}\n{body}")
    return path


def _train_main(argv: list[str], capsys) -> tuple[int, str, str]:
    from distill.bin import train

    with pytest.raises(SystemExit) as e:
        train.main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


DUPLICATES = {  # body (after 4 lines), key path, its two lines
    "section": ("train:\n  max_steps: 10\n  optim: {lr: 1.0e-3}\nfinal: last\ntrain:\n  max_steps: 5\n", "train", 5, 9),
    "nested": ("train:\n  optim:\n    lr: 1.0e-3\n    betas: [0.9, 0.98]\n    lr: 3.0e-3\n", "train.optim.lr", 7, 9),
    "in a list": (
        "train:\n  freeze:\n    - {prefixes: [encoder.], steps: 10, steps: 20}\n",
        "train.freeze[0].steps",
        7,
        7,
    ),
}


@pytest.mark.parametrize("case", list(DUPLICATES))
def test_duplicate_keys_are_refused_naming_both_lines(tmp_path: Path, monkeypatch, capsys, case: str) -> None:
    """A key given twice in one mapping (YAML keeps the second silently) exits 2 naming the file, the key
    path and both lines."""
    monkeypatch.chdir(tmp_path)
    body, key, first, second = DUPLICATES[case]
    cfg = _train_yaml(tmp_path, body)
    before = tree(tmp_path)
    code, _, err = _train_main(["--config", str(cfg)], capsys)
    assert code == 2, err
    assert f"{cfg}: duplicate key '{key}' (lines {first} and {second})" in err and "Traceback" not in err, err
    assert tree(tmp_path) == before
    # the same in an override value
    code, _, err = _train_main(["--config", str(_train_yaml(tmp_path, "")), "train.optim={lr: 1, lr: 2}"], capsys)
    assert code == 2 and "duplicate key 'train.optim.lr'" in err, err


def test_numbers_in_every_spelling_are_accepted(tmp_path: Path, monkeypatch, capsys) -> None:
    """``1e-4``, ``-1e-3``, ``5E-4``, ``.5`` (strings to YAML 1.1) are numbers, in the file and in overrides."""
    monkeypatch.chdir(tmp_path)
    cfg = _train_yaml(
        tmp_path,
        "train:\n  max_steps: 10\n  optim: {lr: 5E-4, eps: 1e-8}\n  grad_clip: -1e-3\n"
        "  schedule: {phase_ratio: [.1, 4e-1, 0.5]}\n",
    )
    code, out, err = _train_main(["--config", str(cfg), "--print-config"], capsys)
    assert code == 0, err
    t = yaml.safe_load(out)["train"]
    assert (t["optim"]["lr"], t["optim"]["eps"], t["grad_clip"], t["schedule"]["phase_ratio"]) == (
        5e-4,
        1e-8,
        -1e-3,
        [0.1, 0.4, 0.5],
    )
    for spelling in ("1e-4", "5E-4", ".5", "3.0e-5", "2e+1"):
        code, out, err = _train_main(["--config", str(cfg), f"train.optim.lr={spelling}", "--print-config"], capsys)
        assert code == 0, (spelling, err)
        assert yaml.safe_load(out)["train"]["optim"]["lr"] == float(spelling)
    code, out, err = _train_main(["--config", str(cfg), "train.grad_clip=-1e-3", "--print-config"], capsys)
    assert code == 0 and yaml.safe_load(out)["train"]["grad_clip"] == -1e-3, err


NON_FINITE = [
    ("train.optim.lr=.nan", "train.optim.lr"),
    ("train.optim.lr=.inf", "train.optim.lr"),
    ("train.grad_clip=.inf", "train.grad_clip"),
    ("train.optim.lr=1e999", "train.optim.lr"),
    ("data.max_duration=-.inf", "data.max_duration"),
    ("student.overrides={layerdrop: .nan}", "student.overrides.layerdrop"),
    ("file", "train.optim.lr"),
]


@pytest.mark.parametrize("setting,key", NON_FINITE)
def test_non_finite_floats_are_refused(tmp_path: Path, monkeypatch, capsys, setting: str, key: str) -> None:
    """nan/inf for a float option exits 2 naming the key (no option takes them), before any work."""
    monkeypatch.chdir(tmp_path)
    cfg = _train_yaml(tmp_path, "train:\n  optim: {lr: .NaN}\n" if setting == "file" else "train: {max_steps: 10}\n")
    before = tree(tmp_path)
    code, _, err = _train_main(["--config", str(cfg)] + ([] if setting == "file" else [setting]), capsys)
    assert code == 2, err
    assert f"key '{key}'" in err and "is not a finite number" in err and str(cfg) in err and "Traceback" not in err, err
    assert tree(tmp_path) == before


# ------------------------------------------------------------------------------ output directories
# step -> its output-directory key (each creates it with its parents)
OUT_KEYS = {
    "prepare_manifests": "out_dir",
    "prepare_lang": "lang_dir",
    "build_decode_graph": "out_dir",
    "decode": "out_dir",
    "train": "exp_dir",
}
OUT_CASES = [(step, kind) for step in OUT_KEYS for kind in ("file", "dangling link", "under a file")]


def _bad_out_dir(tmp: Path, kind: str) -> tuple[Path, str]:
    """An output path that cannot be a directory, and what the error must say about it."""
    if kind == "file":
        p = tmp / "a_file"
        p.write_text("x")
        return p, f"'{p}' is a file, not a directory"
    if kind == "dangling link":
        p = tmp / "dangling"
        p.symlink_to(tmp / "gone")
        return p, f"'{p}' is a dangling symbolic link (to '{tmp / 'gone'}'), not a directory"
    (tmp / "a_file").write_text("x")
    p = tmp / "a_file" / "sub"
    return p, f"'{p}' cannot be created: '{tmp / 'a_file'}' is a file"


def ltree(root: Path) -> dict[str, int]:
    """Like :func:`tree`, without following symbolic links (a dangling one has no target to stat)."""
    return {str(p.relative_to(root)): p.lstat().st_mtime_ns for p in root.rglob("*")}


@pytest.mark.parametrize("step,kind", OUT_CASES, ids=[f"{s}-{k}" for s, k in OUT_CASES])
def test_output_dir_that_is_a_file_or_dangling_link(tmp_path: Path, monkeypatch, capsys, step: str, kind: str) -> None:
    """exp_dir/out_dir/lang_dir naming a file, a dangling symbolic link or a path under a file: exit 2 with one
    line naming the key, the path and what it is, before anything is written (was a FileExistsError traceback)."""
    monkeypatch.chdir(tmp_path)
    base, _ = STEPS[step]
    out, says = _bad_out_dir(tmp_path, kind)
    (tmp_path / "in").mkdir()
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(_fill({**base, OUT_KEYS[step]: str(out)}, tmp_path / "in", tmp_path / "nope")))
    before = ltree(tmp_path)
    mod = importlib.import_module(f"distill.bin.{step}")
    with pytest.raises(SystemExit) as e:
        raise SystemExit(mod.main(["--config", str(cfg)]))
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert f"key '{OUT_KEYS[step]}': {says}" in err and str(cfg) in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert ltree(tmp_path) == before, "nothing may be written"


def test_python_m_train_config_faults(tmp_path: Path) -> None:
    """Two reported command lines as ``python -m distill.bin.train`` (started together): ``exp_dir=<a file>``
    exits 2 with one line (it was a FileExistsError traceback), ``train.optim.lr=1e-4`` is accepted."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out_file, says = _bad_out_dir(tmp_path, "file")
    cfg = _train_yaml(tmp_path, "train: {max_steps: 10}\n")
    runs = {
        "file": ([f"exp_dir={out_file}"], 2, says),
        "lr": (["train.optim.lr=1e-4", "--print-config"], 0, "lr: 0.0001"),
    }
    procs = {
        k: subprocess.Popen(
            [sys.executable, "-m", "distill.bin.train", "--config", str(cfg), *args],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k, (args, _, _) in runs.items()
    }
    for k, p in procs.items():
        out, err = p.communicate(timeout=300)
        _, code, says = runs[k]
        assert p.returncode == code, (k, err[-2000:])
        assert says in (out if code == 0 else err) and "Traceback" not in err, (k, out, err)
        if code:
            assert len(err.strip().splitlines()) == 1, (k, err)
    assert not (tmp_path / "out").exists() and out_file.read_text() == "x"
