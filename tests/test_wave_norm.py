"""Waveform scaling before the CNN (``wave_norm``): HF's per-utterance normalisation, the causal fixed
form, checkpoint import/export of the setting, students inheriting it, training-data statistics."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from model_fixtures import tiny

from distill.models import W2V2Config, build_model, load_pretrained, make_student, save_pretrained
from distill.models.streaming import StreamingRecognizer, StreamingStep
from distill.train.stage_models import estimate_fbank_cmvn, estimate_wave_stats


def test_utterance_norm_equals_hf_feature_extractor():
    transformers = pytest.importorskip("transformers")
    fe = transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    rng = np.random.default_rng(0)
    waves = [rng.normal(0.01, 0.05, n).astype(np.float32) for n in (4000, 2500, 1)]
    ref = fe(waves, sampling_rate=16000, padding=True, return_tensors="pt")
    m = build_model(tiny(wave_norm="utterance"), 7)
    padded = torch.zeros(3, 4000)
    for i, w in enumerate(waves):
        padded[i, : len(w)] = torch.from_numpy(w)
    got = m.normalize_wave(padded, torch.tensor([4000, 2500, 1]))
    assert torch.allclose(got, ref["input_values"], atol=1e-5)
    # the model's forward uses it: scaling the input changes nothing
    m.eval()
    with torch.no_grad():
        a, b = m(padded[:2], torch.tensor([4000, 2500])), m(padded[:2] * 7.0, torch.tensor([4000, 2500]))
    assert torch.allclose(a.scores, b.scores, atol=1e-4)


def test_fixed_norm_and_none():
    x = torch.randn(2, 900) * 0.1 + 0.02
    m = build_model(tiny(wave_norm="fixed", wave_mean=0.02, wave_std=0.1), 7)
    assert torch.allclose(m.normalize_wave(x), (x - 0.02) / 0.1)
    assert m.normalize_wave(x) is not x
    assert build_model(tiny(), 7).normalize_wave(x) is x


def test_bad_settings_and_streaming_refusal():
    with pytest.raises(ValueError, match="wave_norm"):
        tiny(wave_norm="global")
    with pytest.raises(ValueError, match="wave_std"):
        tiny(wave_norm="fixed", wave_std=0.0)
    with pytest.raises(ValueError, match="cannot stream"):
        tiny(wave_norm="utterance", chunk_frames=4)
    m = build_model(tiny(wave_norm="utterance"), 7).eval()
    with pytest.raises(ValueError, match="cannot stream"):
        m.set_streaming(4)
    with pytest.raises(ValueError, match="cannot stream"):
        StreamingStep(m, 4)
    fixed = build_model(tiny(wave_norm="fixed", wave_std=0.05), 7).eval()
    fixed.set_streaming(4, 1)
    StreamingRecognizer(fixed, 4, 1)  # the causal form streams (equality: test_streaming / test_export)


def test_save_load_keeps_the_setting(tmp_path):
    for kw, do_norm in (
        (dict(wave_norm="fixed", wave_mean=0.001, wave_std=0.07), False),
        (dict(wave_norm="utterance"), True),
        ({}, False),
    ):
        m = build_model(tiny(**kw), 7)
        out = save_pretrained(m, tmp_path / str(len(kw)))
        assert json.loads((out / "preprocessor_config.json").read_text())["do_normalize"] is do_norm
        back = load_pretrained(out)
        assert (back.config.wave_norm, back.config.wave_mean, back.config.wave_std) == (
            m.config.wave_norm,
            m.config.wave_mean,
            m.config.wave_std,
        )


def test_hf_directory_without_our_keys_takes_do_normalize(tmp_path):
    m = build_model(tiny(), 7)
    out = save_pretrained(m, tmp_path)
    cfg = json.loads((out / "config.json").read_text())
    del cfg["distill"]  # a checkpoint written by transformers
    (out / "config.json").write_text(json.dumps(cfg))
    pre = json.loads((out / "preprocessor_config.json").read_text())
    for do_norm, expect in ((True, "utterance"), (False, "none")):
        pre["do_normalize"] = do_norm
        (out / "preprocessor_config.json").write_text(json.dumps(pre))
        assert load_pretrained(out).config.wave_norm == expect
    (out / "preprocessor_config.json").unlink()
    assert load_pretrained(out).config.wave_norm == "none"
    (out / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(Exception, match="preprocessor_config.json"):
        load_pretrained(out)


@pytest.mark.parametrize("where", ["top", "w2v_args"])
def test_fairseq_task_normalize(tmp_path, where):
    pytest.importorskip("transformers")
    from test_models_import import fairseq_model_cfg, hf_tiny

    from distill.models.checkpoint import hf_to_fairseq_state_dict

    hf = hf_tiny(True)
    inner = dict(fairseq_model_cfg(hf))
    outer = dict(arch="wav2vec_ctc")
    (outer if where == "top" else inner)["normalize"] = True
    args = argparse.Namespace(w2v_args=argparse.Namespace(**inner), **outer)
    torch.save(
        {"args": args, "model": hf_to_fairseq_state_dict(hf.state_dict()), "optimizer_history": []}, tmp_path / "ft.pt"
    )
    assert load_pretrained(tmp_path / "ft.pt").config.wave_norm == "utterance"


def test_student_inherits_the_teachers_scaling():
    teacher = build_model(tiny(wave_norm="fixed", wave_mean=0.0, wave_std=0.06), 7)
    s = make_student(teacher, tiny(num_hidden_layers=1))
    assert (s.config.wave_norm, s.config.wave_std) == ("fixed", 0.06)
    assert "feature_extractor" in s.init_report
    own = make_student(teacher, tiny(num_hidden_layers=1, wave_norm="fixed", wave_std=0.5))
    assert own.config.wave_std == 0.5  # a student config that sets its own keeps it
    fb = make_student(teacher, tiny(num_hidden_layers=1, frontend="fbank"))
    assert fb.config.wave_norm == "none"  # the Fbank front-end has its own CMVN


def test_estimate_wave_stats_matches_numpy():
    rng = np.random.default_rng(0)
    batches, valid = [], []
    for _ in range(3):
        lens = torch.tensor([1200, 700])
        audio = torch.from_numpy(rng.normal(0.003, 0.07, (2, 1200)).astype(np.float32))
        audio[1, 700:] = 5.0  # padding must not count
        batches.append({"audio": audio, "audio_lens": lens})
        valid += [audio[0].numpy(), audio[1, :700].numpy()]
    allv = np.concatenate(valid).astype(np.float64)
    mean, std = estimate_wave_stats(batches, max_batches=3)
    assert mean == pytest.approx(allv.mean(), rel=1e-9) and std == pytest.approx(allv.std(), rel=1e-9)
    m1, _ = estimate_wave_stats(batches, max_batches=1)
    assert m1 != pytest.approx(mean, rel=1e-9)
    with pytest.raises(ValueError, match="no samples"):
        estimate_wave_stats([], 5)


def test_estimate_fbank_cmvn_matches_numpy():
    """The Fbank twin: per-bin statistics of the valid frames only, written into the CMVN buffers."""
    torch.manual_seed(0)
    model = build_model(tiny(frontend="fbank"), 10)
    fe = model.fbank_frontend
    audio = 0.05 * torch.randn(2, 3200)
    audio[1, 2000:] = 3.0  # padding must not count
    batch = {"audio": audio, "audio_lens": torch.tensor([3200, 2000])}
    with torch.no_grad():
        rows = (
            torch.cat([fe.compute_fbank(audio[:1]).squeeze(0), fe.compute_fbank(audio[1:, :2000]).squeeze(0)])
            .double()
            .numpy()
        )
    mean, std = estimate_fbank_cmvn(model, [batch, batch], max_batches=1)
    np.testing.assert_allclose(mean.numpy(), rows.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std.numpy(), rows.std(0), rtol=1e-4, atol=1e-5)
    assert torch.equal(fe.mean, mean) and torch.equal(fe.std, std)
    with pytest.raises(ValueError, match="estimate_fbank_cmvn: no samples"):
        estimate_fbank_cmvn(model, [], 5)


def test_config_round_trip():
    c = tiny(wave_norm="fixed", wave_std=0.1)
    assert W2V2Config.from_dict(c.to_dict()) == c


# ------------------------------------------------------------------ causal running normalisation
def test_running_norm_equals_numpy_oracle():
    """``running``: block b scaled by the statistics of blocks < b plus the prior (the independent numpy
    version of the measurement, distill.bench.wave_norm), padding set to 0."""
    from distill.bench.wave_norm import prefix_norm
    from distill.models.wave_norm import running_norm

    rng = np.random.default_rng(3)
    lens = [5000, 3333, 1]
    x = torch.zeros(3, 5000)
    for i, n in enumerate(lens):
        x[i, :n] = torch.from_numpy(rng.normal(0.01, 0.2 * (i + 1), n).astype(np.float32))
    x[1, 3333:] = 9.0  # padding must not count
    got, state = running_norm(x, 0.005, 0.07, 0.1, 320, torch.tensor(lens))
    for i, n in enumerate(lens):
        want = prefix_norm(x[i, :n].double().numpy(), 0.005, 0.07**2, 0.1)
        np.testing.assert_allclose(got[i, :n].numpy(), want, rtol=1e-4, atol=1e-4)
        assert not bool(got[i, n:].any())
        assert state[i].tolist() == pytest.approx(
            [float(x[i, :n].double().sum()), float(x[i, :n].double().pow(2).sum()), n]
        )
    # the model uses it: a louder copy of an utterance gives nearly the same input after the first blocks
    m = build_model(tiny(wave_norm="running", wave_mean=0.0, wave_std=0.05, wave_prior_s=0.01), 7)
    a, b = m.normalize_wave(x[:1]), m.normalize_wave(x[:1] * 4.0)
    assert (a[0, 1600:] - b[0, 1600:]).abs().max() < 0.05


def test_student_of_a_per_utterance_teacher_streams():
    """lv60-style teachers normalise each utterance; their students get causal running normalisation
    (unless asked for an offline-only student), stream, and keep it through save/load."""
    teacher = build_model(tiny(wave_norm="utterance"), 7)
    s = make_student(teacher, tiny(num_hidden_layers=1))
    assert s.config.wave_norm == "running" and "feature_extractor" in s.init_report
    assert make_student(teacher, tiny(num_hidden_layers=1), streamable=False).config.wave_norm == "utterance"
    s.eval().set_streaming(4, 1)
    StreamingRecognizer(s, 4, 1)
    cfg = s.config.replace(wave_mean=0.01, wave_std=0.2, wave_prior_s=0.3)
    assert W2V2Config.from_dict(cfg.to_dict()) == cfg


def test_stage4_refuses_a_student_that_cannot_stream(tmp_path):
    """A config whose student could not stream in stage 2 stops at start-up of stage 4, saying what to set."""
    from distill.bin.train import TrainStageConfig, check_config
    from distill.config import ConfigError, load_config

    (tmp_path / "t").mkdir()
    ov = [
        f"teacher={tmp_path / 't'}",
        "lang_dir=" + str(tmp_path),
        "student.preset=demo-student",
        "objective.alpha=0.0",
        "train.max_steps=1",
        "student.overrides={wave_norm: utterance}",
    ]
    cfg = load_config(TrainStageConfig, None, ov)
    with pytest.raises(ConfigError, match=r"student.overrides.*streamable: false"):
        check_config(cfg, "stage1.yaml")
    check_config(load_config(TrainStageConfig, None, ov + ["student.streamable=false"]), "stage1.yaml")
