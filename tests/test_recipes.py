"""The three recipes run through their run.sh on the tiny demo corpus in its three layouts (Kaldi dirs,
LibriSpeech tree, GigaSpeech release): stages 0-2 with the full-size configs (inhouse), stages 0-6 with
the CI-sized ``conf/tiny`` configs (librispeech, gigaspeech; the inhouse chain is tests/test_pipeline.py).

The helpers below (recipe copies, output and result checks) are shared with tests/test_pipeline.py.
"""

from __future__ import annotations

import ast
import contextlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distill.config import read_config

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("inhouse", "librispeech", "gigaspeech")
SCLITE = shutil.which("sclite") or next(
    (p for p in ("/usr/lib/sctk/bin/sclite", "/usr/bin/sclite") if Path(p).is_file()), None
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def _env() -> dict:
    env = dict(os.environ)
    env["VIRTUAL_ENV"] = sys.prefix
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def recipe_copy(tmp_path: Path, name: str, vocab_size: int = 40) -> Path:
    """A copy of egs/<name> (configs may be edited) whose utils/, path.sh and ../TEMPLATE (the shared
    configs and stages.sh) lead back to this checkout. Its full-size conf/lang.yaml gets a token set the
    tiny corpus can train (conf/tiny has its own)."""
    d = tmp_path / "egs" / name
    shutil.copytree(REPO / "egs" / name, d, symlinks=True, ignore=shutil.ignore_patterns("data", "exp", "download"))
    (tmp_path / "utils").symlink_to(REPO / "utils")
    (tmp_path / "egs" / "TEMPLATE").symlink_to(REPO / "egs" / "TEMPLATE")
    lang = d / "conf" / "lang.yaml"
    cfg = yaml.safe_load(lang.read_text())
    cfg.setdefault("tokenizer", {})["vocab_size"] = vocab_size  # merged over its base's tokenizer section
    lang.write_text(yaml.safe_dump(cfg))
    return d


def run_recipe(d: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(d / "run.sh"), *args], capture_output=True, text=True, env=_env())


def run_recipes(jobs: dict[str, tuple[Path, tuple[str, ...]]]) -> dict[str, subprocess.CompletedProcess]:
    """Several recipe runs side by side (name -> recipe copy and run.sh arguments; a tuple of argument
    tuples runs run.sh once per tuple, in order, stopping at the first failure). Their processes are
    single-threaded, so on a 2-core CI machine two runs take little longer than one. Output goes to files
    (a full pipe would block a run)."""
    procs: dict[str, tuple[subprocess.Popen, list]] = {}
    try:
        for name, (d, args) in jobs.items():
            files = [open(d / f"run.{s}.txt", "w+") for s in ("stdout", "stderr")]
            calls = args if args and isinstance(args[0], tuple) else (args,)
            script = "set -e\n" + "".join(f"bash {shlex.quote(str(d / 'run.sh'))} {shlex.join(c)}\n" for c in calls)
            procs[name] = (
                subprocess.Popen(
                    ["bash", "-c", script],
                    stdout=files[0],
                    stderr=files[1],
                    text=True,
                    env=_env(),
                    start_new_session=True,
                ),
                files,
            )
        done = {}
        for name, (p, files) in procs.items():
            p.wait()
            texts = []
            for f in files:
                f.seek(0)
                texts.append(f.read())
            done[name] = subprocess.CompletedProcess(p.args, p.returncode, *texts)
        return done
    finally:
        for p, files in procs.values():
            if p.poll() is None:  # interrupted: stop this run.sh and the steps it started (its session)
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            for f in files:
                f.close()


def run_sh_default(name: str, var: str) -> list[str]:
    """The default value (a space-separated list) of ``var=...`` in egs/<name>/run.sh."""
    m = re.search(rf'^{var}="([^"]*)"', (REPO / "egs" / name / "run.sh").read_text(), re.MULTILINE)
    assert m, f"egs/{name}/run.sh sets no {var}"
    return m[1].split()


# ------------------------------------------------------------------------------------------ stages 0-2
def check_outputs(d: Path, splits: dict[str, int]) -> None:
    index = yaml.safe_load((d / "data" / "manifests" / "splits.yaml").read_text())
    assert set(index["splits"]) >= {"train", "dev", "test"}
    lang = d / "data" / "lang"
    files = ["tokens.txt", "words.txt", "lexicon.txt", "train_token_ids.txt", "train_text.txt", "cuts.yaml"]
    kind = yaml.safe_load((lang / "prepare_lang.yaml").read_text())["tokenizer"]["type"]
    for f in files + (["bpe.model"] if kind == "bpe" else []):
        assert (lang / f).is_file() and (lang / f).stat().st_size > 0, f
    assert (lang / "bpe.model").exists() == (kind == "bpe")
    tokens = [line.split() for line in (lang / "tokens.txt").read_text().splitlines()]
    assert tokens[0] == ["<blk>", "0"]
    summary = json.loads((lang / "summary.json").read_text())
    assert summary, "stage 1 summary is empty"
    # stage 2: the denominator graph and the token LM it came from
    assert (lang / "P.arpa").is_file() and (lang / "den.pt").is_file()
    from distill.graph import Fsa

    den = Fsa.load(lang / "den.pt")
    assert int(den.label.max()) == len(tokens) - 1 and int(den.label.min()) >= 0
    n_train = len((lang / "train_text.txt").read_text().splitlines())
    assert n_train == len((lang / "train_token_ids.txt").read_text().splitlines())
    assert n_train >= splits["train"] * 0.8


def corpus_counts(corpus: Path) -> dict[str, int]:
    return {s: len((corpus / "kaldi" / s / "text").read_text().splitlines()) for s in ("train", "dev", "test")}


# ------------------------------------------------------------------------------------------ stages 3-5
_RUNTIME_TRAIN_KEYS = {
    "exp_dir",
    "device",
    "resume",
    "seed",
    "exclude_from_checkpoint",
    "export_prefix",
    "ddp_find_unused_parameters",
}  # filled in by distill.bin.train from the top level


def check_config_used(d: Path, name: str, conf_dir: str = "conf/tiny", overrides: tuple[str, ...] = ()) -> dict:
    """exp/<name>/train.yaml (the config the run dumped) is <conf_dir>/<name>.yaml with device=cpu (and the
    ``overrides`` run.sh passed): the run used that file, not a fall-back to a full-size conf/<name>.yaml.
    Returns the dumped config."""
    from distill.bin.train import TrainStageConfig
    from distill.config import config_to_dict, load_config

    with contextlib.chdir(d):  # the config's paths are relative to the recipe directory
        want = config_to_dict(load_config(TrainStageConfig, f"{conf_dir}/{name}.yaml", ["device=cpu", *overrides]))
    got = yaml.safe_load((d / "exp" / name / "train.yaml").read_text())
    assert got["exp_dir"] == f"exp/{name}"
    for key in want:
        if key == "train":
            w = {k: v for k, v in want["train"].items() if k not in _RUNTIME_TRAIN_KEYS}
            g = {k: v for k, v in got["train"].items() if k not in _RUNTIME_TRAIN_KEYS}
            assert g == w, f"exp/{name}/train.yaml: train section differs from {conf_dir}/{name}.yaml"
        else:
            assert got[key] == want[key], f"exp/{name}/train.yaml: key '{key}' differs from {conf_dir}/{name}.yaml"
    return got


def check_trained(
    d: Path,
    name: str,
    vocab: int,
    streaming_chunk: int | None = None,
    conf_dir: str = "conf/tiny",
    overrides: tuple[str, ...] = (),
) -> int:
    """A finished training run in exp/<name>: log records, the averaged final model as a loadable Hugging
    Face directory of the lang's vocabulary that carries the lang's tokens; returns the model's parameter
    count."""
    from distill.models import load_pretrained

    exp = d / "exp" / name
    cfg = check_config_used(d, name, conf_dir, overrides)
    n_steps = cfg["train"]["max_steps"]
    recs = [json.loads(line) for line in (exp / "train_log.jsonl").read_text().splitlines() if line.strip()]
    assert max(r["step"] for r in recs) == n_steps, f"{name}: log does not reach update {n_steps}"
    valid = [r for r in recs if r.get("type") == "valid"]
    assert valid and valid[-1]["step"] == n_steps and "wer" in valid[-1], f"{name}: no final validation"
    final = json.loads((exp / "final.json").read_text())
    assert final["source"] == "avg2.pt", f"{name}: final model from {final['source']}, config says final: avg"
    assert len(list((exp / "checkpoints").glob("ckpt-*.pt"))) == 2, f"{name}: avg2.pt needs two checkpoints"
    assert (exp / "avg2.pt").is_file() and (exp / "last.pt").is_file() and (exp / "best.pt").is_file()
    model = load_pretrained(str(exp / "model"))
    assert model.config.vocab_size == vocab, f"{name}: {model.config.vocab_size} outputs, lang has {vocab}"
    assert model.config.chunk_frames == (streaming_chunk or 0), f"{name}: chunk {model.config.chunk_frames}"
    lang_tokens = (d / "data" / "lang" / "tokens.txt").read_text()
    assert (exp / "model" / "tokens.txt").read_text() == lang_tokens, f"{name}: the model does not carry its tokens"
    return int(sum(p.numel() for p in model.parameters()))


# ------------------------------------------------------------------------------------------ stage 6
def expected_rows(decode_cfg: dict) -> list[tuple[str, dict, int | None]]:
    """(row name, config row, chunk) per RESULTS.md row of a decode config, computed here from the rule
    of docs/stage6.md: a row with several chunk sizes gives ``<name>-<chunk x 20>ms`` rows."""
    out = []
    for row in decode_cfg["models"]:
        chunks = row.get("chunks")
        if chunks and len(chunks) > 1:
            out += [(f"{row['name']}-{c * 20}ms" if c else f"{row['name']}-full", row, c) for c in chunks]
        else:
            out.append((row["name"], row, chunks[0] if chunks else None))
    return out


def _parse_tables(md: str) -> dict[str, list[list[str]]]:
    """RESULTS.md: per '## <test set>' section, the cells of the result table's body rows."""
    tables: dict[str, list[list[str]]] = {}
    section = None
    for line in md.splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif (
            section is not None
            and line.startswith("| ")
            and not line.startswith("| ---")
            and not line.startswith("| model")
        ):
            tables.setdefault(section, []).append([c.strip() for c in line.strip().strip("|").split("|")])
    return tables


def _num(cell: str) -> float:
    cell = cell.replace(",", "").replace(" ms", "").replace(" M", "e6")
    return float(cell)


def _read_recogs(path: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    refs: dict[str, list[str]] = {}
    hyps: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        uid, _, rest = line.partition(":\t")
        side, _, words = rest.partition("=")
        (refs if side == "ref" else hyps)[uid] = ast.literal_eval(words)
    assert refs and set(refs) == set(hyps), f"{path}: refs and hyps differ in utterances"
    return refs, hyps


def oracle_errors(tmp: Path, refs: dict[str, list[str]], hyps: dict[str, list[str]]) -> int | None:
    """Total errors (S + D + I) counted by the sclite binary (SCTK), or None when it is not installed."""
    if SCLITE is None:
        return None
    tmp.mkdir(parents=True, exist_ok=True)
    for name, texts in (("ref.trn", refs), ("hyp.trn", hyps)):
        (tmp / name).write_text("".join(" ".join(w) + f" ({u})\n" for u, w in texts.items()), encoding="utf-8")
    out = subprocess.run(
        [
            SCLITE,
            "-r",
            str(tmp / "ref.trn"),
            "trn",
            "-h",
            str(tmp / "hyp.trn"),
            "trn",
            "-i",
            "rm",
            "-o",
            "pralign",
            "stdout",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    scores = re.findall(r"^Scores: \(#C #S #D #I\) (\d+) (\d+) (\d+) (\d+)$", out, re.MULTILINE)
    assert len(scores) == len(refs), f"sclite scored {len(scores)} of {len(refs)} utterances:\n{out[-2000:]}"
    return sum(int(s) + int(d) + int(i) for _, s, d, i in scores)


def check_results(
    d: Path, test_sets: list[str], tmp: Path, trained: set[str] | None = None, conf_dir: str = "conf/tiny"
) -> list[dict]:
    """Stage 6 outputs of the recipe copy ``d``: RESULTS.md, results.json, plots, per-model scoring files.

    Every row of the decode config the run used is in results.json in config order with complete,
    well-typed fields; rows of ``trained`` models (all when None) are scored, the others "not trained";
    RESULTS.md shows the same rows with the same numbers; each scored WER is recomputed from the recogs
    file with sclite. Returns results.json."""
    exp = d / "exp"
    dec_cfg = yaml.safe_load((exp / "decode" / "decode.yaml").read_text())
    tiny = read_config(d / conf_dir / "decode.yaml")
    assert dec_cfg["models"] == [{"form": "fp32", "chunks": None, **m} for m in tiny["models"]], (
        f"stage 6 did not use {conf_dir}/decode.yaml"
    )
    rows = expected_rows(tiny)
    own_chunk = read_config(d / conf_dir / "stage2.yaml")["streaming"]["chunk_frames"][0]
    results = json.loads((exp / "results.json").read_text())
    assert isinstance(results, list) and [r["name"] for r in results] == [n for n, _, _ in rows]
    methods = dec_cfg["methods"]
    primary = dec_cfg["primary_method"] or ("hlg" if "hlg" in methods else methods[0])
    by_name = {}
    for (name, row, chunk), r in zip(rows, results):
        by_name[name] = r
        for key in ("name", "params", "size_mb", "rtf", "latency_ms", "wer"):
            assert key in r, f"results.json row {name}: no '{key}'"
        ok = trained is None or row["path"].split("/")[1] in trained
        if not ok:
            assert r["status"] == "not trained" and r["wer"] == {} and r["params"] is None, name
            continue
        assert r["status"] == "ok", f"{name}: {r.get('status')}"
        assert isinstance(r["params"], int) and r["params"] > 0, name
        for key in ("size_mb", "rtf"):
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (name, key, r[key])
        streaming = "streaming" in name
        if streaming and chunk != 0:  # chunk 0: the streaming model at full context
            assert r["latency_ms"] == 20 * (chunk or own_chunk), (name, r["latency_ms"])
        else:
            assert r["latency_ms"] is None, name
        assert set(r["wer"]) == set(test_sets), (name, r["wer"])
        assert all(isinstance(w, float) and w >= 0 for w in r["wer"].values()), (name, r["wer"])
        assert r["form"] == row.get("form", "fp32")
        # per-model files, and the WER recomputed from the scored words by an independent scorer
        out = exp / "decode" / name
        assert json.loads((out / "result.json").read_text()) == r
        for ts in test_sets:
            for m in methods:
                for kind in ("recogs", "errs", "wer-summary"):
                    assert (out / f"{kind}-{ts}-{m}.txt").is_file(), f"{name}: no {kind}-{ts}-{m}.txt"
                refs, hyps = _read_recogs(out / f"recogs-{ts}-{m}.txt")
                e = r["errors"][ts][m]
                assert e["ref_words"] == sum(len(w) for w in refs.values()) and e["num_utts"] == len(refs)
                n_err = e["ins"] + e["del"] + e["sub"]
                assert r["wer_by_method"][ts][m] == round(100 * n_err / e["ref_words"], 2)
                want = oracle_errors(tmp / name / f"{ts}-{m}", refs, hyps)
                if want is not None:
                    assert n_err == want, f"{name} {ts} {m}: {n_err} errors, sclite counts {want}"
            assert r["wer"][ts] == r["wer_by_method"][ts][primary]
            summary = (out / f"wer-summary-{ts}-{primary}.txt").read_text().split()
            assert float(summary[summary.index(primary) + 1]) == pytest.approx(r["wer"][ts], abs=0.005)
    # RESULTS.md: the same rows in the same order, the same numbers
    md = (exp / "RESULTS.md").read_text()
    tables = _parse_tables(md)
    teacher = by_name.get(dec_cfg["teacher"])
    for ts in test_sets:
        body = tables[ts]
        assert [c[0] for c in body] == [n for n, _, _ in rows], f"RESULTS.md {ts}: rows differ from results.json"
        for cells in body:
            r = by_name[cells[0]]
            if r["status"] != "ok":
                assert cells[1] == "not trained", cells
                continue
            params, size, rtf, lat, wer_, rel = cells[1:7]
            why = f"RESULTS.md row {cells} disagrees with results.json"
            assert _num(params) == pytest.approx(r["params"], abs=0.05e6 if params.endswith("M") else 0), why
            assert _num(size) == pytest.approx(r["size_mb"], abs=0.05 if r["size_mb"] >= 1 else 0.0005), why
            assert _num(rtf) == pytest.approx(r["rtf"], abs=0.0000501), why
            assert (lat == "-") if r["latency_ms"] is None else _num(lat) == pytest.approx(r["latency_ms"]), why
            assert _num(wer_) == pytest.approx(r["wer"][ts], abs=0.005), why
            tw = teacher["wer"][ts] if teacher and teacher["status"] == "ok" else None
            if r is teacher:
                assert rel == "(teacher)"
            elif tw:
                assert rel == f"{100 * (r['wer'][ts] - tw) / tw:+.1f}%", cells
    # plots: non-trivial PNG files
    for png in (
        [f"wer_vs_latency_{ts}.png" for ts in test_sets]
        + [f"wer_vs_size_{ts}.png" for ts in test_sets]
        + ["training_curves.png"]
    ):
        data = (exp / png).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000, png
    return results


def check_stage_log(stderr: str, blocks: list[str]) -> None:
    """Every stage block ran to its end (the 'finished' line of utils/stage.sh), none was skipped."""
    for b in blocks:
        assert f"{b}: finished in" in stderr, f"'{b}' did not finish:\n{stderr[-3000:]}"
    assert "already done" not in stderr


# ------------------------------------------------------------------------------------------ the tests
@pytest.mark.parametrize("name", RECIPES)
def test_tiny_configs_cover_the_default_run(name, tmp_path, monkeypatch):
    """Every config the default run of stages 1 and 3-6 reads has a CI-sized version in conf/tiny (a missing
    one would silently fall back to the full-size conf/<name>.yaml), each a valid, small, one-thread config
    writing to exp/<its name>."""
    from distill.bin.train import TrainStageConfig, check_config
    from distill.config import ConfigError, load_config

    monkeypatch.chdir(tmp_path)  # the paths the configs name, as a recipe directory has them after stage 2
    for p in ("data/lang", "exp/teacher/model", "exp/stage1/model"):
        (tmp_path / p).mkdir(parents=True)
    tiny = REPO / "egs" / name / "conf" / "tiny"
    train = ["teacher"] + run_sh_default(name, "stage1_configs") + run_sh_default(name, "stage2_configs")
    missing = [c for c in train + ["lang", "decode"] if not (tiny / f"{c}.yaml").is_file()]
    assert not missing, f"egs/{name}/conf/tiny lacks {missing}"
    for c in train:
        cfg = load_config(TrainStageConfig, str(tiny / f"{c}.yaml"), [])
        assert cfg.exp_dir == f"exp/{c}", f"conf/tiny/{c}.yaml writes to {cfg.exp_dir}"
        assert cfg.train.max_steps <= 20 and cfg.num_threads == 1 and cfg.num_workers == 0, c
        try:
            check_config(cfg, c)
        except ConfigError as e:  # the den graph only exists after stage 2
            assert "denominator graph" in str(e), e
    decode = read_config(tiny / "decode.yaml")
    paths = {m["path"].split("/")[1] for m in decode["models"]}
    trainable = set(train) | {p.stem for p in tiny.glob("stage*.yaml")}  # + opt-in ones (inhouse: frame KL)
    assert paths <= trainable, f"conf/tiny/decode.yaml decodes models no tiny config trains: {paths - trainable}"
    assert decode["num_threads"] == 1 and decode["max_utts"] <= 50


@pytest.mark.parametrize("name", RECIPES)
def test_tiny_configs_are_the_full_ones_at_ci_size(name):
    """conf/tiny/X.yaml inherits conf/X.yaml, then a CI-size layer of egs/TEMPLATE/conf/tiny: CI runs the
    recipe's own objective, schedule, augmentation and freezing, only smaller (docs/ci_pipeline.md)."""
    for f in sorted((REPO / "egs" / name / "conf" / "tiny").glob("*.yaml")):
        bases = yaml.safe_load(f.read_text())["base"]
        assert bases[0] == f"../{f.name}", f"{f}: not on top of conf/{f.name}"
        assert all(b.startswith("../../../TEMPLATE/tiny/") for b in bases[1:]), f


# Stages 0-6 with conf/tiny; stage 4/5 train only the DistillW2V2 students (the baselines run the same
# code and are covered by tests/test_pipeline.py): their decode rows must read "not trained".
_SHORT = ("--conf-dir", "conf/tiny", "--stage1-configs", "stage1", "--stage2-configs", "stage2")
SHORT_BLOCKS = [
    "Stage 0 (data)",
    "Stage 1 (lang)",
    "Stage 2 (denominator graph)",
    "Stage 3 (teacher)",
    "Stage 4 (stage-1 distillation: stage1)",
    "Stage 5 (stage-2 (streaming) distillation: stage2)",
    "Stage 6 (decode + score)",
]


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """The recipe runs of this module's tests, started together: inhouse stages 0-2 with the full-size
    configs on the Kaldi layout, librispeech and gigaspeech stages 0-6 (short chain) on their layouts."""
    d = {n: recipe_copy(tmp_path_factory.mktemp(n), n) for n in RECIPES}
    jobs = {
        "inhouse": (d["inhouse"], ("--stop-stage", "2", "--corpus-dir", str(corpus / "kaldi"))),
        "librispeech": (
            d["librispeech"],
            ("--corpus-dir", str(corpus), "--parts", "train-clean-100 dev-clean test-clean", *_SHORT),
        ),
        "gigaspeech": (
            d["gigaspeech"],
            ("--corpus-dir", str(corpus / "GigaSpeech"), "--subsets", "XS DEV TEST", *_SHORT),
        ),
    }
    return {n: (d[n], r) for n, r in run_recipes(jobs).items()}


@needs_espeak
def test_inhouse_kaldi_dirs(runs, corpus):
    d, r = runs["inhouse"]
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Stage 0 (data): started" in r.stderr and "Stage 2 (denominator graph): finished" in r.stderr
    check_outputs(d, corpus_counts(corpus))
    # a second run skips all three stage blocks (demo corpus not generated: --corpus-dir)
    r = run_recipe(d, "--stop-stage", "2", "--corpus-dir", str(corpus / "kaldi"))
    assert r.returncode == 0 and r.stderr.count("already done") == 3


def check_short_chain(d: Path, tmp: Path) -> list[dict]:
    vocab = len((d / "data" / "lang" / "tokens.txt").read_text().splitlines())
    assert vocab == read_config(d / "conf" / "tiny" / "lang.yaml")["tokenizer"]["vocab_size"]
    n_teacher = check_trained(d, "teacher", vocab)
    n_student = check_trained(d, "stage1", vocab)
    chunk = read_config(d / "conf" / "tiny" / "stage2.yaml")["streaming"]["chunk_frames"][0]
    check_trained(d, "stage2", vocab, streaming_chunk=chunk)
    assert n_student < n_teacher
    for c in ("stage1_labels_only", "stage1_frame_kl", "stage2_labels_only"):
        assert not (d / "exp" / c).exists(), f"exp/{c} was trained although not asked for"
    test_sets = sorted(yaml.safe_load((d / "data" / "lang" / "cuts.yaml").read_text())["test"])
    return check_results(d, test_sets, tmp, trained={"teacher", "stage1", "stage2"})


@needs_espeak
def test_librispeech_tree(runs, corpus, tmp_path):
    d, r = runs["librispeech"]
    assert r.returncode == 0, r.stderr[-3000:]
    check_stage_log(r.stderr, SHORT_BLOCKS)
    check_outputs(d, corpus_counts(corpus))
    ids = {line.split()[0] for line in (corpus / "kaldi" / "test" / "text").read_text().splitlines()}
    import lhotse

    test_cuts = yaml.safe_load((d / "data" / "lang" / "cuts.yaml").read_text())["test"]
    got = set()
    for path in test_cuts.values():
        got |= {c.supervisions[0].id for c in lhotse.CutSet.from_file(d / "data" / "lang" / path)}
    assert got == ids
    check_short_chain(d, tmp_path / "sclite")


@needs_espeak
def test_gigaspeech_release(runs, corpus, tmp_path):
    d, r = runs["gigaspeech"]
    assert r.returncode == 0, r.stderr[-3000:]
    check_stage_log(r.stderr, SHORT_BLOCKS)
    check_outputs(d, corpus_counts(corpus))
    summary = json.loads((d / "data" / "manifests" / "summary.json").read_text())
    assert "garbage" in json.dumps(summary).lower(), "garbage-only segments should be dropped and counted"
    text = (d / "data" / "lang" / "train_text.txt").read_text()
    assert "<COMMA>" not in text and "<PERIOD>" not in text
    results = check_short_chain(d, tmp_path / "sclite")
    # GigaSpeech scoring: both sides normalised (no punctuation tags or fillers in the scored words)
    assert yaml.safe_load((d / "exp" / "decode" / "decode.yaml").read_text())["normalize"] == "gigaspeech"
    for ts in results[0]["wer"]:
        refs, _ = _read_recogs(d / "exp" / "decode" / "teacher" / f"recogs-{ts}-hlg.txt")
        assert refs and not any(w.startswith("<") for ws in refs.values() for w in ws)
