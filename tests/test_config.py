"""distill.config: YAML schemas validated at start-up, errors naming the key and the file."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Literal, Optional

import pytest

from distill.config import ConfigError, dump_config, load_config, path_field


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
    init: Optional[str] = None
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
