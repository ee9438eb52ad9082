"""The path real users take: a pretrained checkpoint through egs/librispeech and egs/gigaspeech, stages 0-6,
with the recipes' OWN stage configs.

Each recipe runs the README's two commands ("LibriSpeech or GigaSpeech with a real teacher"):
``./run.sh --corpus-dir C --stop-stage 2`` then ``./run.sh --stage 3 --teacher-model M``, on the tiny demo
corpus in the corpus's release layout (LibriSpeech FLAC tree with ``*.trans.txt``; GigaSpeech
``GigaSpeech.json`` + opus with punctuation and garbage tags and subset labels), importing

* an lv60-architecture Hugging Face pretraining checkpoint (layer-norm CNN, stable layer norm, quantizer
  weights, no CTC head, ``do_normalize: true``): its students must stream although the teacher
  normalises each utterance, and
* a fairseq checkpoint laid out as ``libri960_big.pt`` (``args`` namespace, fairseq names, group-norm CNN,
  post-LN, pretraining-only modules),

both made in the test (tests/pretrained_fixtures.py). The configs are ``conf/ci/``, *generated* from the
recipe's ``conf/*.yaml`` (merged over their bases) by :func:`make_ci_conf`, which changes only sizes, step
counts, device, threads and workers: everything else (objective, schedule, SpecAugment, speed perturbation,
freezing, final averaging, decode rows and methods) is what a user runs.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_recipes import (
    REPO,
    SHORT_BLOCKS,
    check_outputs,
    check_results,
    check_stage_log,
    check_trained,
    corpus_counts,
    needs_espeak,
    recipe_copy,
    run_recipes,
)

from distill.config import read_config

pytest.importorskip("transformers")
from pretrained_fixtures import write_fairseq_libri960, write_lv60_hf  # noqa: E402

CI = "conf/ci"
# every model: 2 x 16 dims, 16-channel CNN (the layer counts, kernels and strides of the preset stay)
TINY_MODEL = dict(
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    conv_dim=[16] * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
    fbank_channels=8,
)
STEPS = {"teacher": 6, "distill": 6, "distill_streaming": 4}


def _ci_train(cfg: dict[str, Any]) -> dict[str, Any]:
    """A stage 3-5 config at CI size: tiny models, a few updates (two checkpoints, averaged), small batches,
    one CPU thread, no workers, validation once at the end."""
    cfg = copy.deepcopy(cfg)
    cfg.update(device="cpu", num_workers=0, num_threads=1)
    if cfg.get("task") != "teacher" and (cfg.get("student") or {}).get("preset"):
        st = cfg["student"]
        st["overrides"] = {**(st.get("overrides") or {}), **TINY_MODEL}
    data = cfg.setdefault("data", {})
    data.update(max_duration=20, valid_max_batches=2)
    steps = STEPS[cfg.get("task", "distill")]
    tr = cfg.setdefault("train", {})
    tr.update(
        max_steps=steps,
        checkpoint_interval=steps // 2,
        keep_last=2,
        average_last=2,
        log_interval=2,
        valid_interval=0,
        valid_at_epoch_end=False,
        checkpoint_every_epoch=False,
        tensorboard=False,
    )
    tr.pop("max_epochs", None)
    for fr in tr.get("freeze") or []:
        if fr.get("steps", -1) > 0:
            fr["steps"] = 2
    return cfg


def make_ci_conf(d: Path) -> Path:
    """``<recipe>/conf/ci/``: every ``conf/*.yaml``, merged over its bases, at CI size (see the module
    docstring); the files written stand alone (no ``base:``)."""
    out = d / CI
    out.mkdir(parents=True, exist_ok=True)
    tiny_vocab = read_config(d / "conf" / "tiny" / "lang.yaml")["tokenizer"]["vocab_size"]
    for f in sorted((d / "conf").glob("*.yaml")):
        cfg = read_config(f)
        if "task" in cfg:
            cfg = _ci_train(cfg)
        elif f.stem == "lang":
            cfg["tokenizer"]["vocab_size"] = tiny_vocab
            cfg["nj"] = 2
        elif f.stem == "decode":
            cfg.update(
                device="cpu",
                num_threads=1,
                nj=1,
                max_utts=20,
                batch_seconds=30,
                beam=8.0,
                max_active=500,
                speed_max_utts=2,
                speed_max_seconds=10,
            )
        elif "nj" in cfg:
            cfg["nj"] = 2
        (out / f.name).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def test_ci_conf_changes_only_sizes(tmp_path):
    """The generated configs differ from the recipe's only in the keys make_ci_conf is allowed to touch."""
    allowed = {
        "device",
        "num_workers",
        "num_threads",
        "nj",
        "student.overrides",
        "data.max_duration",
        "data.valid_max_batches",
        "tokenizer.vocab_size",
        "max_utts",
        "batch_seconds",
        "beam",
        "max_active",
        "speed_max_utts",
        "speed_max_seconds",
        "train.freeze",
    } | {
        f"train.{k}"
        for k in (
            "max_steps",
            "max_epochs",
            "checkpoint_interval",
            "keep_last",
            "average_last",
            "log_interval",
            "valid_interval",
            "valid_at_epoch_end",
            "checkpoint_every_epoch",
            "tensorboard",
        )
    }

    def flat(x: Any, pre: str = "") -> dict[str, Any]:
        if isinstance(x, dict) and pre.count(".") < 2:  # section.key (student.overrides as a whole)
            out = {}
            for k, v in x.items():
                out.update(flat(v, f"{pre}{k}."))
            return out
        return {pre.rstrip("."): x}

    for name in ("librispeech", "gigaspeech"):
        d = recipe_copy(tmp_path / name, name)
        ci = make_ci_conf(d)
        for f in (d / "conf").glob("*.yaml"):
            a, b = flat(read_config(f)), flat(yaml.safe_load((ci / f.name).read_text()))
            changed = {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
            assert changed <= allowed, f"{name} {f.name}: {sorted(changed - allowed)} changed"


# ------------------------------------------------------------------------------------------ the runs
JOBS = {  # name -> (recipe, pretrained checkpoint kind)
    "librispeech-hf": ("librispeech", "hf"),
    "gigaspeech-fairseq": ("gigaspeech", "fairseq"),
    "librispeech-fairseq": ("librispeech", "fairseq"),
    "gigaspeech-hf": ("gigaspeech", "hf"),
}
# the short chain of the recipe tests, then stage 7 (run.sh's default stop stage)
BLOCKS = SHORT_BLOCKS + [f"Stage 7 (export: {m})" for m in ("stage1", "stage2")]


@pytest.fixture(scope="module")
def real_runs(corpus, tmp_path_factory) -> dict[str, tuple[Path, Path, Any]]:
    """All four recipe x checkpoint runs side by side (single-threaded processes)."""
    ckpts = tmp_path_factory.mktemp("pretrained")
    models = {
        "hf": write_lv60_hf(ckpts / "wav2vec2-large-lv60"),
        "fairseq": write_fairseq_libri960(ckpts / "libri960_big.pt"),
    }
    source = {
        "librispeech": (str(corpus), "train-clean-100 dev-clean test-clean"),
        "gigaspeech": (str(corpus / "GigaSpeech"), "XS DEV TEST"),
    }
    jobs, dirs = {}, {}
    for job, (recipe, kind) in JOBS.items():
        d = recipe_copy(tmp_path_factory.mktemp(job), recipe)
        make_ci_conf(d)
        corpus_dir, parts = source[recipe]
        sel = ("--parts" if recipe == "librispeech" else "--subsets", parts)
        # the README's commands: data, lang and den graph; then the teacher and everything after it
        jobs[job] = (
            d,
            (
                ("--corpus-dir", corpus_dir, *sel, "--conf-dir", CI, "--nj", "2", "--stop-stage", "2"),
                (
                    "--stage",
                    "3",
                    "--teacher-model",
                    str(models[kind]),
                    "--conf-dir",
                    CI,
                    "--device",
                    "cpu",
                    "--nj",
                    "1",
                    "--stage1-configs",
                    "stage1",
                    "--stage2-configs",
                    "stage2",
                ),
            ),
        )
        dirs[job] = (d, models[kind])
    done = run_recipes(jobs)
    return {job: (*dirs[job], done[job]) for job in JOBS}


def _model_config(d: Path, name: str) -> dict:
    return json.loads((d / "exp" / name / "model" / "config.json").read_text())


@needs_espeak
@pytest.mark.parametrize("job", list(JOBS))
def test_pretrained_teacher_through_the_recipe(real_runs, corpus, tmp_path, job):
    d, model, r = real_runs[job]
    recipe, kind = JOBS[job]
    assert r.returncode == 0, r.stderr[-4000:]
    check_stage_log(r.stderr, BLOCKS)
    check_outputs(d, corpus_counts(corpus))
    vocab = len((d / "data" / "lang" / "tokens.txt").read_text().splitlines())
    n_teacher = check_trained(d, "teacher", vocab, conf_dir=CI, overrides=(f"model.path={model}",))
    n_student = check_trained(d, "stage1", vocab, conf_dir=CI)
    chunk = yaml.safe_load((d / CI / "stage2.yaml").read_text())["streaming"]["chunk_frames"][0]
    assert chunk == read_config(REPO / "egs" / recipe / "conf" / "stage2.yaml")["streaming"]["chunk_frames"][0]
    check_trained(d, "stage2", vocab, streaming_chunk=chunk, conf_dir=CI)
    assert n_student < n_teacher
    # the teacher is the imported checkpoint (its architecture, a new output layer for the lang's tokens)
    t = _model_config(d, "teacher")
    assert (t["hidden_size"], t["num_hidden_layers"]) == (32, 4)
    log = (d / "exp" / "teacher" / "train.log").read_text()
    assert "pretrained-only checkpoint (no CTC head): a new output layer" in log, log[-2000:]
    if kind == "hf":  # lv60: the teacher normalises each utterance; the students stream with running stats
        assert (t["feat_extract_norm"], t["do_stable_layer_norm"], t["distill"]["wave_norm"]) == (
            "layer",
            True,
            "utterance",
        )
        for name in ("stage1", "stage2"):
            s = _model_config(d, name)["distill"]
            assert s["wave_norm"] == "running" and s["wave_std"] != 1.0, (name, s)
    else:  # libri960_big: group-norm CNN, post-LN, raw samples
        assert (t["feat_extract_norm"], t["do_stable_layer_norm"], t["distill"]["wave_norm"]) == (
            "group",
            False,
            "none",
        )
        assert _model_config(d, "stage2")["distill"]["wave_norm"] == "none"
    assert _model_config(d, "stage2")["distill"]["chunk_frames"] == chunk
    # stage 6: a results row for every model of the recipe's decode config, the trained ones scored
    test_sets = sorted(yaml.safe_load((d / "data" / "lang" / "cuts.yaml").read_text())["test"])
    results = check_results(d, test_sets, tmp_path / "sclite", trained={"teacher", "stage1", "stage2"}, conf_dir=CI)
    ok = {r["name"] for r in results if r["status"] == "ok"}
    assert {"teacher", "student", "student-int8", "streaming", "streaming-int8-onnx"} <= ok, ok
    streaming = next(r for r in results if r["name"] == "streaming")
    assert streaming["latency_ms"] == 20 * chunk
    # stage 7: both students exported, the streaming one also as a chunk step, with the WERs of stage 6
    for m, streams in (("stage1", False), ("stage2", True)):
        out = d / "exp" / "export" / m
        for f in ("offline.onnx", "offline.int8.onnx", "tokens.txt", "HLG.fst", "README.md"):
            assert (out / f).is_file(), f"{job}: {out / f} missing"
        assert (out / "streaming.onnx").is_file() == streams
    card = (d / "exp" / "export" / "stage2" / "README.md").read_text()
    assert f"| streaming | fp32 | {20 * chunk} ms |" in card and "WERs: not given" not in card, card[:2000]
