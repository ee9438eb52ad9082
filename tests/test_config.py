"""distill.config: YAML schemas validated at start-up, errors naming the key and the file; config
inheritance (``base:``) with the source of every value."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest

from distill.config import ConfigError, config_files, dump_config, load_config, path_field, read_config


@dataclasses.dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)


@dataclasses.dataclass
class Schema:
    data_dir: str = path_field()
    steps: int = 10
    name: str = "x"
    use_amp: bool = False
    chunks: list[int] = dataclasses.field(default_factory=lambda: [24])
    scheduler: Literal["tri_stage", "noam", "cosine"] = "tri_stage"
    init: str | None = None
    optim: Optim = dataclasses.field(default_factory=Optim)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_valid_and_overrides(tmp_path):
    p = write(tmp_path, f"data_dir: {tmp_path}\nsteps: 5\noptim:\n  lr: 2\n")
    cfg = load_config(Schema, p, ["optim.betas=[0.8, 0.9]", "chunks=[16,24]", "use_amp=true", "init=null"])
    assert cfg.steps == 5 and cfg.optim.lr == 2.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.8, 0.9) and cfg.chunks == [16, 24] and cfg.use_amp is True
    out = tmp_path / "out.yaml"
    dump_config(cfg, out)
    assert load_config(Schema, out) == cfg


@pytest.mark.parametrize(
    "text,override,needle",
    [
        ("stepz: 3\n", [], "unknown key 'stepz'"),
        ("optim:\n  lrr: 3\n", [], "unknown key 'optim.lrr'"),
        ("steps: three\n", [], "key 'steps': expected an integer"),
        ("steps: 3.5\n", [], "key 'steps': expected an integer"),
        ("use_amp: yes_please\n", [], "key 'use_amp': expected true/false"),
        ("scheduler: linear\n", [], "key 'scheduler'"),
        ("chunks: 5\n", [], "key 'chunks': expected a list"),
        ("chunks: [1, x]\n", [], "key 'chunks[1]'"),
        ("", ["steps=abc"], "key 'steps'"),
        ("- a\n- b\n", [], "top level must be a mapping"),
    ],
)
def test_errors_name_key_and_file(tmp_path, text, override, needle):
    p = write(tmp_path, f"data_dir: {tmp_path}\n" + text if not text.startswith("-") else text)
    with pytest.raises(ConfigError) as e:
        load_config(Schema, p, override)
    assert needle in str(e.value)
    assert str(p) in str(e.value)


def test_missing_required_and_missing_path(tmp_path):
    p = write(tmp_path, "steps: 1\n")
    with pytest.raises(ConfigError, match="missing required key 'data_dir'"):
        load_config(Schema, p)
    p = write(tmp_path, "data_dir: /nonexistent/dir\n")
    with pytest.raises(ConfigError, match="key 'data_dir': path '/nonexistent/dir' does not exist"):
        load_config(Schema, p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Schema, tmp_path / "nope.yaml")


def test_bad_yaml(tmp_path):
    p = write(tmp_path, "a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Schema, p)


def test_cli_exits_2_with_message(tmp_path):
    p = write(tmp_path, "data_dir: /x\nbogus: 1\n")
    code = (
        "import dataclasses, sys\n"
        "from distill.config import parse_cli\n"
        "@dataclasses.dataclass\n"
        "class S:\n    data_dir: str = '.'\n"
        "parse_cli(S, sys.argv[1:])\n"
    )
    r = subprocess.run([sys.executable, "-c", code, "--config", str(p)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "unknown key 'bogus'" in r.stderr and str(p) in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------------------------------ inheritance
def _files(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_base_merges_mappings_and_replaces_scalars_and_lists(tmp_path):
    _files(
        tmp_path,
        {
            "t/base.yaml": f"data_dir: {tmp_path}\nsteps: 3\nchunks: [1, 2]\noptim: {{lr: 0.5, betas: [0.8, 0.9]}}\n",
            "r/x.yaml": "base: ../t/base.yaml\nsteps: 4\nchunks: [7]\noptim: {lr: 0.25}\n",
        },
    )
    cfg = load_config(Schema, tmp_path / "r" / "x.yaml")
    assert (cfg.steps, cfg.chunks, cfg.optim.lr, cfg.optim.betas) == (4, [7], 0.25, (0.8, 0.9))
    assert cfg.name == "x"  # neither file says it: the schema's default
    assert read_config(tmp_path / "r" / "x.yaml") == {
        "data_dir": str(tmp_path),
        "steps": 4,
        "chunks": [7],
        "optim": {"lr": 0.25, "betas": [0.8, 0.9]},
    }


def test_chains_and_lists_of_bases(tmp_path):
    """tiny -> recipe -> template, each relative to the file that names it; a list merges in order."""
    _files(
        tmp_path,
        {
            "TEMPLATE/conf/s.yaml": f"data_dir: {tmp_path}\nsteps: 100\nname: template\n",
            "rec/conf/s.yaml": "base: ../../TEMPLATE/conf/s.yaml\nname: recipe\n",
            "TEMPLATE/conf/tiny/s.yaml": "steps: 2\nuse_amp: true\n",
            "rec/conf/tiny/s.yaml": "base: [../s.yaml, ../../../TEMPLATE/conf/tiny/s.yaml]\ninit: tiny\n",
        },
    )
    top = tmp_path / "rec" / "conf" / "tiny" / "s.yaml"
    cfg = load_config(Schema, top)
    assert (cfg.steps, cfg.name, cfg.use_amp, cfg.init) == (2, "recipe", True, "tiny")
    want = [tmp_path / p for p in ("TEMPLATE/conf/s.yaml", "rec/conf/s.yaml", "TEMPLATE/conf/tiny/s.yaml")] + [top]
    assert [p.resolve() for p in config_files(top)] == want
    # a later base wins over an earlier one; the file itself over both
    _files(
        tmp_path,
        {
            "a.yaml": f"data_dir: {tmp_path}\nsteps: 1\nname: a\n",
            "b.yaml": "steps: 2\n",
            "c.yaml": "base: [a.yaml, b.yaml]\nname: c\n",
        },
    )
    assert (load_config(Schema, tmp_path / "c.yaml").steps, load_config(Schema, tmp_path / "c.yaml").name) == (2, "c")
    # python -m distill.config FILE prints the chain, one file per line
    r = subprocess.run(
        [sys.executable, "-m", "distill.config", "rec/conf/tiny/s.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert r.returncode == 0 and r.stdout.split() == [
        "TEMPLATE/conf/s.yaml",
        "rec/conf/s.yaml",
        "TEMPLATE/conf/tiny/s.yaml",
        "rec/conf/tiny/s.yaml",
    ], r


@pytest.mark.parametrize(
    "files,needles",
    [
        (
            {"a.yaml": "base: b.yaml\n", "b.yaml": "base: [c.yaml]\n", "c.yaml": "base: a.yaml\n"},
            ["config base cycle:", "a.yaml -> ", "b.yaml -> ", "c.yaml -> "],
        ),
        ({"a.yaml": "base: a.yaml\n"}, ["config base cycle:"]),
        (
            {"a.yaml": "base: sub/b.yaml\n", "sub/b.yaml": "base: ../nope.yaml\n"},
            ["sub/b.yaml: base '../nope.yaml' does not exist", "nope.yaml'"],
        ),
        ({"a.yaml": "base: {x: 1}\n"}, ["a.yaml: key 'base': expected a file name"]),
    ],
)
def test_bad_chains_are_one_line_errors_naming_the_files(tmp_path, files, needles):
    _files(tmp_path, files)
    with pytest.raises(ConfigError) as e:
        load_config(Schema, tmp_path / "a.yaml")
    msg = str(e.value)
    assert all(n in msg for n in needles) and "\n" not in msg, msg
    r = subprocess.run(
        [sys.executable, "-m", "distill.config", str(tmp_path / "a.yaml")], capture_output=True, text=True
    )
    assert r.returncode == 2 and needles[0] in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "base_text,needle",
    [
        ("steps: three\n", "key 'steps': expected an integer"),
        ("optim: {lrr: 1}\n", "unknown key 'optim.lrr'"),
        ("chunks: [1, x]\n", "key 'chunks[1]'"),
        ("data_dir: /nonexistent/dir\n", "key 'data_dir': path '/nonexistent/dir' does not exist"),
        ("steps: 1\nsteps: 2\n", "duplicate key 'steps' (lines 1 and 2)"),
    ],
)
def test_errors_name_the_file_that_set_the_key(tmp_path, base_text, needle):
    _files(
        tmp_path,
        {
            "t/base.yaml": base_text,
            "x.yaml": f"base: t/base.yaml\ndata_dir: {tmp_path}\n"
            if "data_dir" not in base_text
            else "base: t/base.yaml\n",
        },
    )
    with pytest.raises(ConfigError) as e:
        load_config(Schema, tmp_path / "x.yaml")
    msg = str(e.value)
    assert needle in msg and msg.startswith(str(tmp_path / "t" / "base.yaml")), msg
    # the same key set by the file itself, or by an override, names the file (as without bases)
    if base_text.startswith("steps: three"):
        _files(tmp_path, {"y.yaml": f"base: t/base.yaml\ndata_dir: {tmp_path}\nsteps: four\n"})
        with pytest.raises(ConfigError, match=rf"^{tmp_path / 'y.yaml'}: key 'steps'"):
            load_config(Schema, tmp_path / "y.yaml")
        with pytest.raises(ConfigError, match=rf"^{tmp_path / 'x.yaml'} \(with command-line overrides\): key 'steps'"):
            load_config(Schema, tmp_path / "x.yaml", ["steps=five"])


def test_overrides_on_top_of_bases(tmp_path):
    _files(
        tmp_path,
        {
            "b.yaml": f"data_dir: {tmp_path}\nsteps: 3\noptim: {{lr: 0.5, betas: [0.8, 0.9]}}\n",
            "x.yaml": "base: b.yaml\nsteps: 4\n",
        },
    )
    cfg = load_config(Schema, tmp_path / "x.yaml", ["steps=9", "optim.lr=1e-4"])
    assert (cfg.steps, cfg.optim.lr, cfg.optim.betas) == (9, 1e-4, (0.8, 0.9))
    # an override of a whole section replaces it (as without bases): betas back to the default
    assert load_config(Schema, tmp_path / "x.yaml", ["optim={lr: 2}"]).optim.betas == (0.9, 0.98)


def _cli(cfg: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    code = (
        f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\nfrom test_config import Schema\n"
        "from distill.config import parse_cli\nparse_cli(Schema, sys.argv[1:])\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, "--config", str(cfg), *args], capture_output=True, text=True, cwd=cwd
    )


def test_print_config_shows_where_each_value_was_set(tmp_path):
    import yaml

    _files(
        tmp_path,
        {
            "TEMPLATE/s.yaml": f"data_dir: {tmp_path}\nsteps: 3\noptim: {{lr: 0.5}}\n",
            "rec/s.yaml": "base: ../TEMPLATE/s.yaml\nchunks: [8, 16]\n",
        },
    )
    r = _cli(Path("rec/s.yaml"), "--print-config", "name=y", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = {line.split(":")[0].strip(): line for line in r.stdout.splitlines() if not line.startswith("#")}
    assert lines["steps"].endswith("# TEMPLATE/s.yaml") and lines["data_dir"].endswith("# TEMPLATE/s.yaml")
    assert lines["chunks"] == "chunks: [8, 16]  # rec/s.yaml"
    assert lines["name"] == "name: y  # override"
    assert lines["use_amp"] == "use_amp: false  # default" and lines["init"] == "init: null  # default"
    assert lines["lr"] == "  lr: 0.5  # TEMPLATE/s.yaml" and lines["betas"].endswith("# default")
    # still YAML: the effective values
    assert yaml.safe_load(r.stdout) == {
        "data_dir": str(tmp_path),
        "steps": 3,
        "name": "y",
        "use_amp": False,
        "chunks": [8, 16],
        "scheduler": "tri_stage",
        "init": None,
        "optim": {"lr": 0.5, "betas": [0.9, 0.98]},
    }
    # a bad value in the base: exit 2, one line naming the base (and the file built from it)
    (tmp_path / "TEMPLATE" / "s.yaml").write_text(f"data_dir: {tmp_path}\nsteps: 3.5\n")
    r = _cli(Path("rec/s.yaml"), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "error: TEMPLATE/s.yaml (base of rec/s.yaml): key 'steps': expected an integer, got 3.5"


def test_print_config_before_the_inputs_exist(tmp_path):
    """A config can be read before the data it names is made: --print-config prints it, then the error
    (exit 2) that the step itself would stop with."""
    import yaml

    missing = tmp_path / "not_yet"
    _files(tmp_path, {"s.yaml": f"data_dir: {missing}\nsteps: 3\n"})
    r = _cli(Path("s.yaml"), "--print-config", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert yaml.safe_load(r.stdout)["data_dir"] == str(missing) and "data_dir: " in r.stdout
    assert r.stderr.strip() == f"error: s.yaml: key 'data_dir': path '{missing}' does not exist"
    missing.mkdir()
    r = _cli(Path("s.yaml"), "--print-config", cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == "" and yaml.safe_load(r.stdout)["steps"] == 3
    # a wrong type is still refused before anything is printed
    _files(tmp_path, {"s.yaml": f"data_dir: {missing}\nsteps: many\n"})
    r = _cli(Path("s.yaml"), "--print-config", cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == "" and "key 'steps'" in r.stderr


STAGE = """#!/usr/bin/env bash
set -euo pipefail
cd "$(dirname "$0")"
stage=0
stop_stage=0
force=false
. {utils}/parse_options.sh
. {utils}/stage.sh
if [ $stage -le 0 ] && [ $stop_stage -ge 0 ] && stage_begin 0 "only" out0 conf/tiny/x.yaml; then
  echo ran >> runs.txt
  stage_end
fi
"""


def test_stage_reruns_when_only_a_base_changed(tmp_path):
    """utils/stage.sh's done-marker hashes a config's whole base chain (python -m distill.config FILE)."""
    import os

    repo = Path(__file__).resolve().parents[1]
    rec = tmp_path / "recipe"
    _files(
        tmp_path,
        {
            "TEMPLATE/t.yaml": "a: 1\n",
            "recipe/conf/x.yaml": "base: ../../TEMPLATE/t.yaml\nb: 1\n",
            "recipe/conf/tiny/x.yaml": "base: ../x.yaml\nc: 1\n",
            "recipe/run.sh": STAGE.format(utils=repo / "utils"),
        },
    )
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    def runs() -> int:
        r = subprocess.run(["bash", str(rec / "run.sh")], capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr
        return len((rec / "runs.txt").read_text().split())

    assert runs() == 1
    assert runs() == 1  # nothing changed: skipped
    (tmp_path / "TEMPLATE" / "t.yaml").write_text("a: 2\n")  # the base of the base
    assert runs() == 2
    (rec / "conf" / "x.yaml").write_text("base: ../../TEMPLATE/t.yaml\nb: 2\n")
    assert runs() == 3
    assert runs() == 3
