"""utils/parse_options.sh (Kaldi semantics), utils/stage.sh (markers, timing, skipping) and the recipes'
layout (run.sh with stage 0, egs/TEMPLATE/stages.sh with stages 1-6)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """#!/usr/bin/env bash
set -euo pipefail
stage=0
stop_stage=6
train_set=train
use_gpu=false
empty=
help_message="Usage: demo.sh [options] <dir>"
. {utils}/parse_options.sh
echo "stage=$stage stop_stage=$stop_stage train_set=$train_set use_gpu=$use_gpu empty=$empty rest=$*"
"""


@pytest.fixture()
def script(tmp_path: Path) -> Path:
    p = tmp_path / "demo.sh"
    p.write_text(SCRIPT.format(utils=REPO / "utils"))
    p.chmod(0o755)
    return p


def run(script: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True)


def test_sets_variables_dash_to_underscore(script):
    r = run(script, "--stage", "2", "--stop-stage", "4", "--train_set", "tr960", "pos1", "pos2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "stage=2 stop_stage=4 train_set=tr960 use_gpu=false empty= rest=pos1 pos2"


def test_values_with_spaces_and_empty(script):
    r = run(script, "--train-set", "a b  c", "--empty", "x y")
    assert r.returncode == 0, r.stderr
    assert "train_set=a b  c" in r.stdout and "empty=x y" in r.stdout


def test_help_lists_variables_with_defaults(script):
    r = run(script, "--help")
    assert r.returncode == 0
    assert "Usage: demo.sh" in r.stdout
    for opt, default in [("--stage", "0"), ("--stop-stage", "6"), ("--train-set", "train"), ("--use-gpu", "false")]:
        line = next(line for line in r.stdout.splitlines() if line.strip().startswith(opt + " "))
        assert line.split()[1] == default
    assert "--help-message" not in r.stdout


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--nonexistent", "1"], "invalid option --nonexistent"),
        (["--stage"], "needs a value"),
        (["--stage", "--stop-stage", "3"], "needs a value"),
        (["--use-gpu", "yes"], "takes true or false"),
        (["--stage=3"], "--name value"),
        (["--bad;rm", "1"], "invalid option"),
    ],
)
def test_errors(script, args, msg):
    r = run(script, *args)
    assert r.returncode != 0
    assert msg in r.stderr


def test_boolean_accepts_true(script):
    r = run(script, "--use-gpu", "true")
    assert r.returncode == 0 and "use_gpu=true" in r.stdout


STAGES = """#!/usr/bin/env bash
set -euo pipefail
cd "$(dirname "$0")"
stage=0
stop_stage=2
force=false
conf=conf.yaml
. {utils}/parse_options.sh
. {utils}/stage.sh
if [ $stage -le 0 ] && [ $stop_stage -ge 0 ] && stage_begin 0 "first" out0 "$conf"; then
  echo ran0 >> runs.txt
  stage_end
fi
if [ $stage -le 1 ] && [ $stop_stage -ge 1 ] && stage_begin 1 "second" out1 out0/.done.stage0; then
  echo ran1 >> runs.txt
  stage_end
fi
if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then stage_unavailable 2 "later"; fi
"""


def test_stage_markers_skip_and_force(tmp_path: Path):
    p = tmp_path / "run.sh"
    p.write_text(STAGES.format(utils=REPO / "utils"))
    (tmp_path / "conf.yaml").write_text("a: 1\n")
    runs = tmp_path / "runs.txt"

    r = run(p, "--stop-stage", "1")
    assert r.returncode == 0, r.stderr
    assert runs.read_text().split() == ["ran0", "ran1"]
    assert "Stage 0 (first): started" in r.stderr and "finished in" in r.stderr
    assert (tmp_path / "exp" / "run.log").is_file()

    r = run(p, "--stop-stage", "1")  # both skipped
    assert r.returncode == 0 and runs.read_text().split() == ["ran0", "ran1"]
    assert "already done" in r.stderr

    r = run(p, "--stop-stage", "1", "--force", "true")
    assert runs.read_text().split() == ["ran0", "ran1"] * 2

    # a changed config re-runs stage 0, and therefore stage 1 (its marker input changed)
    (tmp_path / "conf.yaml").write_text("a: 2\n")
    r = run(p, "--stop-stage", "1")
    assert runs.read_text().split() == ["ran0", "ran1"] * 3

    # only stage 1 selected
    r = run(p, "--stage", "1", "--stop-stage", "1", "--force", "true")
    assert runs.read_text().split()[-1] == "ran1" and len(runs.read_text().split()) == 7


def test_unimplemented_stage_fails_clearly(tmp_path: Path):
    p = tmp_path / "run.sh"
    p.write_text(STAGES.format(utils=REPO / "utils"))
    (tmp_path / "conf.yaml").write_text("a: 1\n")
    r = run(p, "--stop-stage", "2")
    assert r.returncode != 0
    assert "Stage 2 (later) is not implemented" in r.stderr


@pytest.mark.parametrize("recipe", ["librispeech", "gigaspeech", "inhouse"])
def test_recipe_layout(recipe):
    """A recipe: its run.sh (options, stage 0) sources the shared stages 1-6 of egs/TEMPLATE/stages.sh."""
    d = REPO / "egs" / recipe
    assert (d / "run.sh").stat().st_mode & 0o111
    assert (d / "utils").resolve() == (REPO / "utils").resolve()
    assert (d / "path.sh").is_file() and (d / "conf").is_dir() and (d / "local").is_dir()
    text = (d / "run.sh").read_text()
    assert "$stage -le 0 ] && [ $stop_stage -ge 0 ]" in text
    assert text.rstrip().splitlines()[-1].startswith(". ../TEMPLATE/stages.sh")
    assert (d / "../TEMPLATE/stages.sh").resolve() == REPO / "egs" / "TEMPLATE" / "stages.sh"
    shared = (REPO / "egs" / "TEMPLATE" / "stages.sh").read_text()
    for n in range(1, 7):
        assert f"$stage -le {n} ] && [ $stop_stage -ge {n} ]" in shared and f"-le {n} ]" not in text
    r = subprocess.run(["bash", str(d / "run.sh"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--stop-stage" in r.stdout
