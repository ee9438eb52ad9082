"""Stages 3–5 end to end on CPU (``distill.bin.train``): tiny lang dir + den graph + synthetic audio,
tiny models; checkpoints, the exported HF model, streaming, resume, teacher cache, config errors.

The builders at the top are also used by tests/test_tasks.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from distill.bin import train as train_cli
from distill.data.tokenizer import build_char_tokenizer, write_lang_files
from distill.graph.den import build_den_graph
from distill.models import load_pretrained, save_pretrained
from distill.models.config import W2V2Config
from distill.models.wav2vec2 import W2V2Model

TEXTS = ["A CAT", "THE DOG", "A DOG SAT", "THE CAT RAN", "DOG RAN", "CAT SAT", "THE RAT", "A RAT RAN"]
DEV = ["THE CAT SAT", "A DOG"]

TINY = dict(
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
    conv_dim=[16] * 7,
    feat_extract_norm="layer",
    conv_bias=True,
    do_stable_layer_norm=True,
)
TEACHER_ARCH = dict(TINY, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64)
STUDENT_ARCH = dict(TINY, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)


def _tone(text: str, seed: int) -> np.ndarray:
    """A waveform whose spectrum depends on the words (so that a model can learn a little)."""
    rng = np.random.default_rng(seed)
    parts = []
    for w in text.split():
        f = 200 + 60 * (sum(map(ord, w)) % 17)
        t = np.arange(int(0.25 * 16000)) / 16000
        parts.append(0.3 * np.sin(2 * np.pi * f * t) + 0.02 * rng.standard_normal(t.size))
        parts.append(0.01 * rng.standard_normal(800))
    return np.concatenate(parts).astype(np.float32)


def make_lang(root: Path) -> Path:
    """``root/lang``: char tokens, cuts_{train,dev}.jsonl.gz + cuts.yaml, den.pt (bigram P)."""
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    lang = root / "lang"
    tok = build_char_tokenizer(TEXTS + DEV)
    write_lang_files(lang, tok, {w for t in TEXTS + DEV for w in t.split()})
    for split, texts in (("train", TEXTS), ("dev", DEV)):
        recs, sups = [], []
        for i, text in enumerate(texts):
            uid = f"{split}-{i:03d}"
            p = root / "wav" / f"{uid}.wav"
            p.parent.mkdir(parents=True, exist_ok=True)
            sf.write(p, _tone(text, i + (100 if split == "dev" else 0)), 16000)
            rec = Recording.from_file(p, recording_id=uid)
            recs.append(rec)
            sups.append(SupervisionSegment(id=uid, recording_id=uid, start=0.0, duration=rec.duration, text=text))
        cuts = CutSet.from_manifests(RecordingSet.from_recordings(recs), SupervisionSet.from_segments(sups))
        cuts = CutSet.from_cuts(c.with_id(c.supervisions[0].id) for c in cuts)
        cuts.to_file(lang / f"cuts_{split}.jsonl.gz")
    (lang / "cuts.yaml").write_text(yaml.safe_dump({"train": "cuts_train.jsonl.gz", "dev": "cuts_dev.jsonl.gz"}))
    den = build_den_graph(tok.pieces, [tok.encode(t) for t in TEXTS], lang / "P.arpa", 2)
    den.save(lang / "den.pt")
    return lang


def make_teacher_hf(root: Path, vocab: int, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    cfg = W2V2Config(vocab_size=vocab, **{k: tuple(v) if isinstance(v, list) else v for k, v in TEACHER_ARCH.items()})
    return save_pretrained(W2V2Model(cfg).eval(), root / "teacher_hf")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    lang = make_lang(root)
    from distill.data.tokenizer import Tokenizer

    vocab = Tokenizer.load(lang).vocab_size
    teacher = make_teacher_hf(root, vocab)
    return root, lang, teacher, vocab


def write_cfg(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def base_train(exp: Path, steps: int = 3, **kw) -> dict:
    t = {
        "max_steps": steps,
        "log_interval": 1,
        "valid_interval": 0,
        "checkpoint_interval": 1,
        "keep_last": 3,
        "average_last": 2,
        "progress": False,
        "tensorboard": False,
        "best_metric": "wer",
        "optim": {"lr": 1e-3},
        "schedule": {"name": "constant", "warmup_steps": 0},
    }
    t.update(kw)
    return t


def stage_cfg(env, exp: Path, task: str, **kw) -> dict:
    root, lang, teacher, _ = env
    cfg = {
        "task": task,
        "lang_dir": str(lang),
        "exp_dir": str(exp),
        "device": "cpu",
        "num_workers": 0,
        "final": "avg",
        "data": {"max_duration": 2.5, "valid_max_duration": 10.0},
        "train": base_train(exp),
    }
    if task == "teacher":
        cfg["model"] = {"init": "pretrained", "path": str(teacher), "overrides": {"hidden_dropout": 0.0}}
        cfg["objective"] = {"distill_weight": 0.0, "lfmmi_weight": 1.0}
    else:
        cfg["teacher"] = str(teacher)
        cfg["student"] = {"preset": "demo-student", "overrides": STUDENT_ARCH}
    for k, v in kw.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


def run_stage(tmp: Path, cfg: dict, *overrides: str) -> int:
    path = write_cfg(tmp / f"{Path(cfg['exp_dir']).name}.yaml", cfg)
    with pytest.raises(SystemExit) as e:
        train_cli.main(["--config", str(path), *overrides])
    return e.value.code


def check_outputs(exp: Path, in_memory: W2V2Model | None = None) -> W2V2Model:
    """Checkpoints, jsonl log with loss components, model/ that loads and equals the exported weights."""
    assert sorted(p.name for p in (exp / "checkpoints").glob("ckpt-*.pt"))
    assert (exp / "last.pt").exists()
    recs = [json.loads(x) for x in (exp / "train_log.jsonl").read_text().splitlines()]
    assert any(r["type"] == "train" for r in recs) and any(r["type"] == "valid" and "wer" in r for r in recs)
    model = load_pretrained(exp / "model")
    src = json.loads((exp / "final.json").read_text())["source"]
    from distill.train.checkpoint import load_model_state

    state = load_model_state(exp / src)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    return model


def scores_equal(a: W2V2Model, b: W2V2Model, seconds: float = 1.3) -> None:
    torch.manual_seed(1)
    wave = torch.randn(2, int(seconds * 16000)) * 0.1
    lens = torch.tensor([wave.shape[1], wave.shape[1] - 3000])
    with torch.no_grad():
        oa, ob = a.eval()(wave, lens), b.eval()(wave, lens)
    torch.testing.assert_close(oa.scores, ob.scores, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ tests
def test_teacher_stage_lfmmi_with_ctc_warmup(env, tmp_path):
    exp = tmp_path / "teacher"
    cfg = stage_cfg(
        env,
        exp,
        "teacher",
        final="best",
        objective={"distill_weight": 0.0, "lfmmi_weight": 0.7, "ctc_weight": 0.3, "ctc_only_steps": 1},
        spec_augment={"time_prob": 0.05, "time_length": 2, "channel_masks": 1, "channel_width": 4},
        train=base_train(exp, freeze=[{"prefixes": ["feature_extractor."], "steps": -1}]),
    )
    assert run_stage(tmp_path, cfg) == 0
    model = check_outputs(exp)
    recs = [json.loads(x) for x in (exp / "train_log.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["type"] == "train"]
    assert "ctc" in train[0] and "lfmmi" not in train[0]  # CTC-only warm-up step
    assert "lfmmi" in train[-1] and "ctc" in train[-1]
    # the frozen CNN kept the initial teacher's weights; the encoder moved
    init = load_pretrained(env[2])
    for k, v in init.state_dict().items():
        if k.startswith("feature_extractor."):
            assert torch.equal(v, model.state_dict()[k]), k
    assert not torch.equal(init.lm_head.weight, model.lm_head.weight)
    assert model.config.mask_time_prob == 0.05  # spec-augment config survives; inactive in eval


def test_stage1_distill_exports_student(env, tmp_path):
    exp = tmp_path / "stage1"
    cfg = stage_cfg(env, exp, "distill", objective={"lfmmi_weight": 0.1})
    assert run_stage(tmp_path, cfg) == 0
    model = check_outputs(exp)
    assert model.config.hidden_size == 16 and model.config.num_hidden_layers == 2
    assert model.config.chunk_frames == 0
    last = json.loads((exp / "train_log.jsonl").read_text().splitlines()[-2])
    ckpt = torch.load(sorted((exp / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    assert not any(k.startswith("teacher.") for k in ckpt["model"])  # frozen teacher excluded
    assert any(k.startswith("objective.proj.") for k in ckpt["model"])  # projections are trained state
    recs = [json.loads(x) for x in (exp / "train_log.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["type"] == "train"]
    for key in ("hid", "out", "mmi_kd", "lfmmi"):
        assert key in train[-1] and np.isfinite(train[-1][key]), (key, last)
    # best/avg/last export variants round-trip the in-memory weights: avg2 = mean of the last 2 ckpts
    ck = sorted((exp / "checkpoints").glob("*.pt"))[-2:]
    states = [torch.load(p, weights_only=True)["model"] for p in ck]
    k = "student.lm_head.weight"
    torch.testing.assert_close(model.state_dict()["lm_head.weight"], (states[0][k] + states[1][k]) / 2)


def test_stage2_streaming_and_dynamic_chunks(env, tmp_path):
    root, lang, teacher, _ = env
    s1 = tmp_path / "s1"
    assert (
        run_stage(tmp_path, stage_cfg(env, s1, "distill", train=base_train(s1, steps=1, average_last=0), final="last"))
        == 0
    )
    exp = tmp_path / "stage2"
    cfg = stage_cfg(
        env,
        exp,
        "distill_streaming",
        teacher=str(s1 / "model"),
        student={"init_from": str(s1 / "model"), "preset": None, "overrides": {}},
        streaming={"chunk_frames": [8, 4, 0], "left_chunks": 2},
    )
    assert run_stage(tmp_path, cfg) == 0
    model = check_outputs(exp)
    assert model.config.chunk_frames == 8 and model.config.left_chunks == 2 and model.config.causal_pos_conv
    # chunk mask in effect: frames after the first chunk do not change the first chunk's scores
    torch.manual_seed(0)
    wave = torch.randn(1, 16000) * 0.1
    other = wave.clone()
    other[:, 320 * 8 + 400 :] = torch.randn(1, 16000 - 320 * 8 - 400)
    with torch.no_grad():
        a, b = model(wave).scores, model(other).scores
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])
    # the S_N starting point was non-streaming: the same change alters early frames there
    sn = load_pretrained(s1 / "model")
    with torch.no_grad():
        assert not torch.allclose(sn(wave).scores[:, :8], sn(other).scores[:, :8])
    # the chunk-wise recogniser on the exported model gives its full-utterance scores
    from distill.models.streaming import StreamingRecognizer

    rec = StreamingRecognizer(model.eval(), chunk_frames=8, left_chunks=2)
    pieces = [rec.accept_waveform(wave[0, i : i + 1234]) for i in range(0, wave.shape[1], 1234)]
    streamed = torch.cat(pieces + [rec.finalize()])
    torch.testing.assert_close(streamed, a[0], atol=1e-4, rtol=1e-4)


def test_teacher_head_is_replaced_when_the_vocabulary_differs(env, tmp_path):
    """A fine-tuned checkpoint with another output size gets a fresh head of the lang's size; the rest
    of the weights are the checkpoint's."""
    from distill.config import load_config
    from distill.train.stage_config import TrainStageConfig
    from distill.train.stage_models import build_teacher_model

    other = make_teacher_hf(tmp_path, env[3] + 7, seed=2)
    d = stage_cfg(env, tmp_path / "t", "teacher")
    d["model"] = {"init": "pretrained", "path": str(other)}
    cfg = load_config(TrainStageConfig, write_cfg(tmp_path / "t.yaml", d))
    model = build_teacher_model(cfg, env[3])
    src = load_pretrained(other)
    assert model.config.vocab_size == env[3] and model.lm_head.weight.shape[0] == env[3]
    for k, v in src.state_dict().items():
        if not k.startswith("lm_head."):
            assert torch.equal(v, model.state_dict()[k]), k
    assert model.training


def test_dynamic_chunk_draws_from_the_list(env):
    from distill.losses.objective import DistillObjective, ObjectiveConfig
    from distill.train.tasks import DistillTask

    vocab = env[3]
    student = W2V2Model(
        W2V2Config(vocab_size=vocab, **{k: tuple(v) if isinstance(v, list) else v for k, v in STUDENT_ARCH.items()})
    )
    obj = DistillObjective(ObjectiveConfig(distill_weight=0.0, ctc_weight=1.0), None, (2, 16, 16))
    task = DistillTask(student, None, obj, chunks=[8, 16, 0], left_chunks=1)
    assert student.config.chunk_frames == 8
    torch.manual_seed(3)
    draws = [task.draw_chunk() for _ in range(300)]
    counts = {c: draws.count(c) for c in (8, 16, 0)}
    assert set(draws) == {8, 16, 0} and min(counts.values()) > 60
    torch.manual_seed(3)
    assert [task.draw_chunk() for _ in range(300)] == draws  # the global RNG (checkpointed) decides
    batch = {
        "audio": torch.randn(1, 8000) * 0.1,
        "audio_lens": torch.tensor([8000]),
        "tokens": [[3, 4]],
        "cut_ids": ["x"],
    }
    task.train()
    seen = set()
    for _ in range(20):
        task(batch)
        seen.add(student.config.chunk_frames)
        if student.config.chunk_frames:
            assert student.config.left_chunks == 1 and student.config.causal_pos_conv
    assert seen == {8, 16, 0}
    task.eval()
    task.run(batch)
    assert student.config.chunk_frames == 8


def test_stage2_teacher_chunk_and_delay(env, tmp_path):
    """streaming.teacher_chunk_frames puts the stage-2 teacher under the chunk mask (its positional conv
    as trained), streaming.teacher_delay_frames shifts the targets the objective sees by that many frames."""
    from distill.config import load_config
    from distill.data.tokenizer import Tokenizer
    from distill.train.stage import build_task
    from distill.train.stage_config import TrainStageConfig

    root, lang, teacher, _ = env
    d = stage_cfg(
        env,
        tmp_path / "s2",
        "distill_streaming",
        student={"init_from": str(teacher), "preset": None, "overrides": {}},
        streaming={"chunk_frames": [8], "teacher_chunk_frames": 16, "teacher_delay_frames": 3},
    )
    cfg = load_config(TrainStageConfig, write_cfg(tmp_path / "s2.yaml", d))
    task = build_task(cfg, Tokenizer.load(lang))
    pos_conv = load_pretrained(teacher).config.causal_pos_conv
    assert task.teacher.config.chunk_frames == 16 and task.teacher.config.causal_pos_conv == pos_conv
    assert task.student.config.chunk_frames == 8 and task.teacher_delay == 3
    batch = {"audio": torch.randn(1, 16000) * 0.1, "audio_lens": torch.tensor([16000])}
    plain = task._teacher_forward(batch["audio"], batch["audio_lens"], False)
    seen, forward = {}, task.objective.forward

    def spy(*a, **k):  # what the objective is given
        seen["t"] = k["teacher"]
        return forward(*a, **k)

    task.objective.forward = spy
    task.eval()
    res, _ = task.run(dict(batch, tokens=[[3, 4]], cut_ids=["x"]))
    assert torch.isfinite(res.loss)
    got = seen["t"]
    torch.testing.assert_close(got.scores[:, 3:], plain.scores[:, :-3])
    torch.testing.assert_close(got.scores[:, :3], plain.scores[:, :1].expand(-1, 3, -1))
    for i, h in plain.hidden.items():
        torch.testing.assert_close(got.hidden[i][:, 5:], h[:, 2:-3])
    # the targets are the teacher's under a 16-frame chunk mask, not its full-context outputs
    ref = load_pretrained(teacher).eval()
    with torch.no_grad():
        assert not torch.allclose(ref(batch["audio"]).scores, plain.scores)
        ref.set_streaming(16, None, pos_conv)
        torch.testing.assert_close(ref(batch["audio"]).scores, plain.scores)


def test_teacher_targets_delayed():
    from distill.losses.objective import TeacherTargets

    x = torch.arange(2 * 5, dtype=torch.float32).view(2, 5, 1)
    t = TeacherTargets(lengths=torch.tensor([5, 4]), scores=x, hidden={2: x * 10}, features=x + 1)
    assert t.delayed(0) is t
    d = t.delayed(2)
    assert d.scores[0, :, 0].tolist() == [0, 0, 0, 1, 2] and d.scores[1, :, 0].tolist() == [5, 5, 5, 6, 7]
    assert torch.equal(d.hidden[2], d.scores * 10) and d.features is t.features and d.lengths is t.lengths
    assert d.delayed(0).scores is d.scores and t.delayed(9).scores[0, :, 0].tolist() == [0] * 5


def test_teacher_cache_equals_on_the_fly(env, tmp_path):
    """The cached loss equals the on-the-fly loss (fp32 cache exactly, fp16 closely), and epoch 2 reads it."""
    from distill.config import load_config
    from distill.data import Tokenizer, load_cuts, make_dataloader
    from distill.train.stage import build_task
    from distill.train.stage_config import TrainStageConfig

    root, lang, teacher, _ = env
    tok = Tokenizer.load(lang)
    dl = make_dataloader(load_cuts(lang, "train"), tok, 2.5, shuffle=False)
    batches = list(dl)[:2]
    losses = {}
    for mode in ("none", "float32", "float16"):
        exp = tmp_path / mode
        d = stage_cfg(
            env, exp, "distill", teacher_cache=mode != "none", teacher_cache_dtype=mode if mode != "none" else "float16"
        )
        cfg = load_config(TrainStageConfig, write_cfg(tmp_path / f"{mode}.yaml", d))
        torch.manual_seed(0)
        task = build_task(cfg, tok).train()
        task.student.eval()  # no dropout: compare the same function
        out = []
        for _epoch in range(2):
            for b in batches:
                with torch.no_grad():
                    out.append(float(task(b)["loss"]))
        if mode != "none":
            assert task.cache.misses == sum(len(b["cut_ids"]) for b in batches)
            assert task.cache.hits == task.cache.misses  # the second epoch came from disk
        losses[mode] = out
    assert losses["none"][:2] == losses["none"][2:]
    assert losses["float32"] == pytest.approx(losses["none"], rel=1e-6, abs=1e-6)
    assert losses["float16"] == pytest.approx(losses["none"], rel=2e-2)
    # a cache of another teacher is refused, naming the fix
    other = make_teacher_hf(tmp_path / "other", env[3], seed=5)
    d = stage_cfg(
        env, tmp_path / "float32", "distill", teacher=str(other), teacher_cache=True, teacher_cache_dtype="float32"
    )
    cfg = load_config(TrainStageConfig, write_cfg(tmp_path / "o.yaml", d))
    from distill.train.tasks import TeacherCacheError

    with pytest.raises(TeacherCacheError, match="another teacher.*delete it"):
        build_task(cfg, tok)


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from distill.bin import train
    from distill.train import Trainer
    orig = Trainer._after_update
    def hook(self, iv):
        out = orig(self, iv)
        if self.step == int(os.environ["KILL_AT"]):
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    Trainer._after_update = hook
    train.main(sys.argv[1:])
""")


def test_killed_and_resumed_stage1_gives_the_same_parameters(env, tmp_path):
    def cfg_for(name: str) -> Path:
        exp = tmp_path / name
        # a prefetching worker: the resume position must count the batches trained on, not those read
        d = stage_cfg(
            env,
            exp,
            "distill",
            final="last",
            num_workers=1,
            train=base_train(exp, steps=5, average_last=0, checkpoint_interval=2),
        )
        return write_cfg(tmp_path / f"{name}.yaml", d)

    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    envv = dict(os.environ, OMP_NUM_THREADS="1")
    full = subprocess.run(
        [sys.executable, str(script), "--config", str(cfg_for("full"))],
        env=dict(envv, KILL_AT="999"),
        capture_output=True,
        text=True,
    )
    assert full.returncode == 0, full.stderr[-2000:]
    killed = subprocess.run(
        [sys.executable, str(script), "--config", str(cfg_for("resumed"))],
        env=dict(envv, KILL_AT="3"),
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "resumed" / "model").exists()
    again = subprocess.run(
        [sys.executable, str(script), "--config", str(cfg_for("resumed"))],
        env=dict(envv, KILL_AT="999"),
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert re.search(
        r"resumed from .*ckpt-0*2\.pt: update 2, epoch 0, batch [1-9]\d* of the epoch",
        (tmp_path / "resumed" / "train.log").read_text(),
    )  # mid-epoch
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize(
    "case",
    [
        "missing_teacher",
        "bad_teacher_path",
        "unknown_key",
        "cache_speed",
        "teacher_with_kd",
        "bad_den",
        "bad_weight",
        "chunks",
        "teacher_chunk",
        "teacher_delay",
        "preset",
    ],
)
def test_config_errors_name_the_key(env, tmp_path, capsys, case):
    exp = tmp_path / "x"
    d = stage_cfg(env, exp, "distill")
    expect = {
        "missing_teacher": "key 'teacher'",
        "bad_teacher_path": "key 'teacher'",
        "unknown_key": "unknown key 'objective.gamma'",
        "cache_speed": "key 'data.speed_perturb'",
        "teacher_with_kd": "key 'objective'",
        "bad_den": "key 'den'",
        "bad_weight": "key 'alpha'",
        "chunks": "key 'streaming.chunk_frames'",
        "teacher_chunk": "key 'streaming.teacher_chunk_frames'",
        "teacher_delay": "key 'streaming.teacher_delay_frames'",
        "preset": "key 'student.preset'",
    }[case]
    if case == "missing_teacher":
        del d["teacher"]
    elif case == "bad_teacher_path":
        d["teacher"] = str(tmp_path / "nope")
    elif case == "unknown_key":
        d["objective"] = {"gamma": 1}
    elif case == "cache_speed":
        d.update(teacher_cache=True, data={"speed_perturb": [0.9, 1.0, 1.1]})
    elif case == "teacher_with_kd":
        d = stage_cfg(env, exp, "teacher")
        d["objective"] = {"distill_weight": 1.0, "lfmmi_weight": 1.0}
    elif case == "bad_den":
        d["den"] = str(tmp_path / "none.pt")
    elif case == "bad_weight":
        d["objective"] = {"alpha": 1.5}
    elif case == "chunks":
        d.update(task="distill_streaming", streaming={"chunk_frames": []})
    elif case == "teacher_chunk":
        d.update(task="distill_streaming", streaming={"teacher_chunk_frames": 0})
    elif case == "teacher_delay":
        d.update(task="distill_streaming", streaming={"teacher_delay_frames": -1})
    elif case == "preset":
        d["student"] = {"preset": "no-such-model"}
    path = write_cfg(tmp_path / "bad.yaml", d)
    with pytest.raises(SystemExit) as e:
        train_cli.main(["--config", str(path)])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert expect in err and "bad.yaml" in err, err
    assert not exp.exists() or not (exp / "checkpoints").exists()


def test_input_distillation_fbank_two_phases(env, tmp_path):
    """Phase 1 (feature_only_steps) trains only the Fbank front-end on the teacher's CNN output; then
    the whole student trains with the distillation loss."""
    exp = tmp_path / "fbank"
    arch = dict(STUDENT_ARCH, frontend="fbank", fbank_channels=8)
    cfg = stage_cfg(
        env,
        exp,
        "distill",
        student={"preset": "student-10x384-fbank", "overrides": arch, "fbank_cmvn_batches": 2},
        objective={"feature_only_steps": 2},
        final="last",
        train=base_train(exp, steps=3, average_last=0, ddp_find_unused_parameters=False),
    )
    assert run_stage(tmp_path, cfg) == 0
    recs = [json.loads(x) for x in (exp / "train_log.jsonl").read_text().splitlines() if '"train"' in x]
    assert [sorted(k for k in ("feat", "hid", "mmi_kd", "out") if k in r) for r in recs] == [
        ["feat"],
        ["feat"],
        ["hid", "mmi_kd", "out"],
    ]
    ck = {
        int(p.stem.split("-")[1]): torch.load(p, weights_only=True)["model"] for p in (exp / "checkpoints").glob("*.pt")
    }
    for k in ck[1]:
        same12, same23 = torch.equal(ck[1][k], ck[2][k]), torch.equal(ck[2][k], ck[3][k])
        if k.startswith("student.fbank_frontend.") and k.split(".")[-1] not in ("mean", "std"):
            assert not same12, k
        elif k.startswith(("student.encoder.layers", "student.lm_head")):
            assert same12 and not same23, k
    model = check_outputs(exp)
    assert model.config.frontend == "fbank"
    assert not torch.equal(model.fbank_frontend.std, torch.ones_like(model.fbank_frontend.std))  # CMVN estimated
    # the exported model computes what the trained weights compute
    from distill.train.checkpoint import load_model_state

    ref = W2V2Model(model.config)
    ref.load_state_dict(load_model_state(exp / "last.pt"))
    scores_equal(model, ref)


REPO = Path(__file__).resolve().parents[1]
STAGE_CONFS = sorted(p for p in REPO.glob("egs/*/conf/**/*.yaml") if p.name.startswith(("teacher", "stage1", "stage2")))


def _existing_paths(env, raw: dict) -> list[str]:
    """Overrides pointing every path key of a recipe config at something that exists here."""
    root, lang, teacher, _ = env
    ov = [f"lang_dir={lang}"]
    if raw.get("teacher"):
        ov.append(f"teacher={teacher}")
    if (raw.get("model") or {}).get("path"):
        ov.append(f"model.path={teacher}")
    if (raw.get("student") or {}).get("init_from"):
        ov.append(f"student.init_from={teacher}")
    return ov


@pytest.mark.parametrize("conf", STAGE_CONFS, ids=lambda p: str(p.relative_to(REPO / "egs")))
def test_recipe_configs_are_valid(env, conf):
    from distill.bin.train import TrainStageConfig, check_config
    from distill.config import load_config, read_config

    raw = read_config(conf)
    cfg = load_config(TrainStageConfig, conf, _existing_paths(env, raw))
    check_config(cfg, str(conf))
    assert cfg.task in ("teacher", "distill", "distill_streaming")
    if cfg.task == "distill_streaming":
        assert cfg.student.init_from and cfg.streaming.chunk_frames


def test_tiny_recipe_chain_runs(env, tmp_path, monkeypatch):
    """egs/inhouse/conf/tiny: teacher -> stage 1 -> stage 2 as run.sh would call them (2 updates each)."""
    root, lang, _, _ = env
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "lang").symlink_to(lang)
    for stage in ("teacher", "stage1", "stage2"):
        with pytest.raises(SystemExit) as e:
            train_cli.main(
                [
                    "--config",
                    str(REPO / "egs/inhouse/conf/tiny" / f"{stage}.yaml"),
                    "train.max_steps=2",
                    "train.progress=false",
                ]
            )
        assert e.value.code == 0, stage
        assert (tmp_path / "exp" / stage / "model" / "config.json").exists()
    s2 = load_pretrained(tmp_path / "exp/stage2/model")
    assert s2.config.chunk_frames == 16 and s2.config.causal_pos_conv


def test_teacher_head_is_replaced_when_the_shipped_tokens_differ(env, tmp_path):
    """A packaged model ships its tokens.txt: same size but other tokens than the lang → a new head;
    the same tokens → the checkpoint's head is kept."""
    from distill.config import load_config
    from distill.train.stage_config import TrainStageConfig
    from distill.train.stage_models import build_teacher_model

    ckpt = make_teacher_hf(tmp_path, env[3], seed=3)
    src = load_pretrained(ckpt)
    d = stage_cfg(env, tmp_path / "t", "teacher")
    d["model"] = {"init": "pretrained", "path": str(ckpt)}
    cfg = load_config(TrainStageConfig, write_cfg(tmp_path / "t.yaml", d))
    lang_tokens = (Path(cfg.lang_dir) / "tokens.txt").read_text()
    (ckpt / "tokens.txt").write_text(lang_tokens)
    assert torch.equal(build_teacher_model(cfg, env[3]).lm_head.weight, src.lm_head.weight)
    lines = lang_tokens.splitlines()
    lines[3], lines[4] = (
        lines[4].split()[0] + " " + lines[3].split()[1],
        lines[3].split()[0] + " " + lines[4].split()[1],
    )
    (ckpt / "tokens.txt").write_text("\n".join(lines) + "\n")
    model = build_teacher_model(cfg, env[3])
    assert model.lm_head.weight.shape == src.lm_head.weight.shape
    assert not torch.equal(model.lm_head.weight, src.lm_head.weight)
    for k, v in src.state_dict().items():
        if not k.startswith("lm_head."):
            assert torch.equal(v, model.state_dict()[k]), k
