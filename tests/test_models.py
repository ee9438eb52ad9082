"""wav2vec 2.0 model family: presets, shapes, padding invariance, bad input, students."""

from __future__ import annotations

import math

import pytest
import torch
from model_fixtures import tiny

from distill.models import PRESETS, W2V2Config, build_model, conv_output_length
from distill.models.student import make_student, teacher_layer_for


def test_preset_sizes():
    n = {name: build_model(name, 32).num_parameters() for name in PRESETS if not name.startswith("w2v2-base")}
    # W2V2-Large is the 317 M model of the papers (315.5 M without quantizer, with a 32-unit head)
    assert 310e6 < n["w2v2-large"] < 320e6
    assert 26e6 < n["student-12x384"] < 28e6  # ~11.7x smaller: the paper's "12x"
    assert n["w2v2-large"] / n["student-10x384-rcnn"] >= 12
    assert n["demo-teacher"] / n["demo-student"] >= 8
    assert 3e6 < n["demo-teacher"] < 10e6
    s = build_model("student-12x384", 32).config
    assert (s.num_hidden_layers, s.hidden_size, s.intermediate_size, s.num_attention_heads) == (12, 384, 1536, 6)
    assert s.feat_extract_norm == "layer" and PRESETS["w2v2-large"].do_stable_layer_norm
    assert PRESETS["student-10x384-rcnn"].conv_dim[0] < PRESETS["w2v2-large"].conv_dim[0]
    assert PRESETS["student-10x384-fbank"].frontend == "fbank"
    # the recipes' default stage-1 student: the paper's 12 x 384, >= 12x smaller, on a lighter CNN that streams
    d = PRESETS["student-12x384-cnn128-256"]
    assert n["w2v2-large"] / n["student-12x384-cnn128-256"] >= 12
    assert (d.num_hidden_layers, d.hidden_size, d.intermediate_size) == (12, 384, 1536) and max(d.conv_dim) < 512
    assert d.feat_extract_norm == "layer" and d.conv_bias and d.do_stable_layer_norm


def test_default_student_is_the_recipes_and_the_benchmarked_one():
    from pathlib import Path

    from distill.bench.models import BenchConfig
    from distill.config import read_config
    from distill.train.stage_config import StudentSection

    name = StudentSection().preset
    assert name in PRESETS and name in BenchConfig().models
    conf = Path(__file__).resolve().parents[1] / "egs"
    for corpus in ("librispeech", "gigaspeech"):
        for c in ("stage1", "stage1_labels_only", "stage1_frame_kl", "stage1_hidden_only"):
            assert read_config(conf / corpus / "conf" / f"{c}.yaml")["student"]["preset"] == name


def test_unknown_preset_and_bad_config():
    with pytest.raises(KeyError, match="unknown model preset"):
        build_model("nope", 5)
    with pytest.raises(ValueError, match="divisible"):
        W2V2Config(hidden_size=30, num_attention_heads=4)


@pytest.mark.parametrize("stable,norm", [(True, "layer"), (False, "group")])
def test_forward_shapes_and_lengths(stable, norm):
    torch.manual_seed(0)
    m = build_model(tiny(do_stable_layer_norm=stable, feat_extract_norm=norm, conv_bias=stable), 7).eval()
    wave = torch.randn(2, 8000)
    out = m(wave, torch.tensor([8000, 5000]))
    t = (8000 - 400) // 320 + 1
    assert out.scores.shape == (2, t, 7)
    assert out.lengths.tolist() == [t, (5000 - 400) // 320 + 1]
    assert len(out.hidden_states) == 3 and all(h.shape == (2, t, 32) for h in out.hidden_states)
    assert out.features.shape == (2, t, 16)
    # scores are log-posteriors
    assert torch.allclose(out.scores.exp().sum(-1), torch.ones(2, t), atol=1e-5)
    assert conv_output_length(torch.tensor([399, 400, 719, 720]), m.config).tolist() == [0, 1, 1, 2]


@pytest.mark.parametrize(
    "stable,norm,frontend", [(True, "layer", "cnn"), (False, "group", "cnn"), (True, "layer", "fbank")]
)
def test_padding_does_not_change_valid_outputs(stable, norm, frontend):
    """A padded batch gives, on valid frames, the outputs of each utterance alone (group norm masked)."""
    torch.manual_seed(1)
    m = build_model(tiny(do_stable_layer_norm=stable, feat_extract_norm=norm, frontend=frontend), 7).eval()
    a, b = torch.randn(9000), torch.randn(6100)
    batch = torch.zeros(2, 9000)
    batch[0], batch[1, :6100] = a, b
    batch[1, 6100:] = 5.0  # garbage in the padding must not leak
    with torch.no_grad():
        out = m(batch, torch.tensor([9000, 6100]))
        alone = [m(a[None]), m(b[None])]
    for i, ref in enumerate(alone):
        n = int(out.lengths[i])
        assert n == ref.scores.shape[1]
        assert torch.allclose(out.scores[i, :n], ref.scores[0], atol=1e-5)
        for h, hr in zip(out.hidden_states, ref.hidden_states):
            assert torch.allclose(h[i, :n], hr[0], atol=1e-5)


def test_short_audio_gives_empty_output():
    m = build_model(tiny(), 7).eval()
    out = m(torch.randn(2, 300))
    assert out.scores.shape == (2, 0, 7) and out.lengths.tolist() == [0, 0]
    assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (2, 0, 32)
    # a short utterance in a batch with a long one gets length 0 and no NaN elsewhere
    wave = torch.randn(2, 4000)
    out = m(wave, torch.tensor([4000, 100]))
    assert out.lengths.tolist() == [12, 0]
    assert torch.isfinite(out.scores).all()


def test_bad_waveform_raises():
    m = build_model(tiny(), 7).eval()
    w = torch.randn(2, 4000)
    w[1, 10] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf.*\[1\]"):
        m(w)
    w[1, 10] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        m(w)
    with pytest.raises(ValueError, match=r"\[B, S\]"):
        m(torch.randn(4000))
    with pytest.raises(ValueError, match="exceeds"):
        m(torch.randn(1, 4000), torch.tensor([5000]))


def test_training_mode_backward_and_time_mask():
    torch.manual_seed(0)
    m = build_model(tiny(mask_time_prob=0.5, mask_time_length=2, layerdrop=0.0), 7).train()
    out = m(torch.randn(2, 8000), torch.tensor([8000, 6000]))
    loss = -out.scores[0, :5].mean() + sum(h.pow(2).mean() for h in out.hidden_states)
    loss.backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert m.masked_spec_embed.grad is not None and m.masked_spec_embed.grad.abs().sum() > 0


def test_fbank_frontend_frame_count_matches_cnn():
    m = build_model(tiny(frontend="fbank"), 7).eval()
    for s in (400, 719, 720, 16000, 16123):
        out = m(torch.randn(1, s) * 0.1)
        assert out.scores.shape[1] == conv_output_length(s, m.config) == (s - 400) // 320 + 1
    assert "fbank_frontend.conv1.weight" in m.state_dict()
    assert not any("_fb" in k for k in m.state_dict())  # lhotse's filterbank is not a parameter


def test_chunk_mask_blocks_future_chunks():
    """In streaming mode, frames of chunk c do not depend on audio after chunk c."""
    torch.manual_seed(0)
    m = build_model(tiny(), 7).eval()
    m.set_streaming(4, None)
    w = torch.randn(1, 16000)
    w2 = w.clone()
    cut = 8 * 320 + 80  # frames 0..7 (chunks 0 and 1) only see samples < cut
    w2[0, cut:] = torch.randn(16000 - cut)
    with torch.no_grad():
        a, b = m(w).scores, m(w2).scores
    assert torch.allclose(a[0, :8], b[0, :8], atol=1e-6)
    assert not torch.allclose(a[0, 8:], b[0, 8:], atol=1e-3)
    m.set_streaming(0)
    with torch.no_grad():
        c = m(w2).scores
    assert not torch.allclose(c[0, :8], b[0, :8], atol=1e-3)  # full attention sees the future


def test_teacher_layer_mapping():
    assert [teacher_layer_for(i, 12, 24) for i in range(12)] == list(range(1, 24, 2))
    assert [teacher_layer_for(i, 4, 6, "first_k") for i in range(4)] == [0, 1, 2, 3]
    assert teacher_layer_for(2, 3, 24) == 23
    with pytest.raises(ValueError):
        teacher_layer_for(0, 2, 4, "last")


def test_make_student_copies_matching_parts():
    torch.manual_seed(0)
    teacher = build_model(tiny(num_hidden_layers=4), 7).eval()
    s = make_student(teacher, tiny(num_hidden_layers=2), layer_init="every_k")
    sd_s, sd_t = s.state_dict(), teacher.state_dict()
    for k in sd_s:
        if k.startswith("encoder.layers.0."):
            assert torch.equal(sd_s[k], sd_t[k.replace("layers.0.", "layers.1.")])
        elif k.startswith("encoder.layers.1."):
            assert torch.equal(sd_s[k], sd_t[k.replace("layers.1.", "layers.3.")])
        else:
            assert torch.equal(sd_s[k], sd_t[k]), k
    assert "lm_head" in s.init_report
    s2 = make_student(teacher, tiny(num_hidden_layers=2), layer_init="first_k", vocab_size=9)
    assert torch.equal(
        s2.state_dict()["encoder.layers.1.attention.q_proj.weight"], sd_t["encoder.layers.1.attention.q_proj.weight"]
    )
    assert s2.lm_head.out_features == 9 and "lm_head" not in s2.init_report
    # a student of the same shape with all layers equals the teacher
    same = make_student(teacher, tiny(num_hidden_layers=4)).eval()
    w = torch.randn(1, 6000)
    with torch.no_grad():
        assert torch.allclose(same(w).scores, teacher(w).scores, atol=1e-6)


def test_make_student_narrow_gets_fresh_layers_but_cnn_copied():
    torch.manual_seed(0)
    teacher = build_model(tiny(num_hidden_layers=4), 7)
    s = make_student(teacher, tiny(hidden_size=16, intermediate_size=32, num_attention_heads=2))
    assert "feature_extractor" in s.init_report
    assert "feature_projection.layer_norm" in s.init_report
    assert not any(r.startswith("encoder.layers") for r in s.init_report)
    assert "lm_head" not in s.init_report and "feature_projection.projection" not in s.init_report
    for k, v in teacher.feature_extractor.state_dict().items():
        assert torch.equal(v, s.feature_extractor.state_dict()[k])
    # reduced CNN: not copied
    r = make_student(teacher, tiny(conv_dim=(8,) * 7))
    assert "feature_extractor" not in r.init_report
    with torch.no_grad():
        assert math.isfinite(float(r.eval()(torch.randn(1, 4000)).scores.sum()))


@pytest.mark.gpu
def test_cuda_forward_matches_cpu():
    torch.manual_seed(0)
    m = build_model(tiny(), 7).eval()
    w = torch.randn(2, 8000)
    lengths = torch.tensor([8000, 5000])
    with torch.no_grad():
        ref = m(w, lengths)
        got = m.cuda()(w.cuda(), lengths.cuda())
    assert torch.allclose(got.scores.cpu(), ref.scores, atol=1e-4)
    assert got.lengths.cpu().tolist() == ref.lengths.tolist()


def test_frontend_features_and_set_streaming_defaults():
    m = build_model(tiny(), 7).eval()
    w = torch.randn(2, 6000)
    feats, n = m.frontend_features(w, torch.tensor([6000, 3000]))
    with torch.no_grad():
        out = m(w, torch.tensor([6000, 3000]))
    assert torch.equal(feats, out.features) and n.tolist() == out.lengths.tolist()
    m.set_streaming(8, 2)
    assert (m.config.chunk_frames, m.config.left_chunks, m.config.causal_pos_conv) == (8, 2, True)
    m.set_streaming(0)  # full context keeps the causal positional conv of a streaming model
    assert (m.config.chunk_frames, m.config.causal_pos_conv) == (0, True)
    m.set_streaming(0, causal_pos_conv=False)
    assert not m.config.causal_pos_conv
