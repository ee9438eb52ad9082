"""The distillation objective against direct computations, and the task modules' gradient flow."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill.config import ConfigError
from distill.graph.den import build_den_graph
from distill.losses import LFMMILoss, lfmmi_kd_loss
from distill.losses.objective import DistillObjective, ObjectiveConfig, TeacherTargets, frame_kl, layer_map
from distill.models.config import W2V2Config
from distill.models.wav2vec2 import W2V2Model
from distill.train.tasks import DistillTask, TeacherTask

V = 6
# float() of a loss that requires grad, to compare values: harmless here
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")


@pytest.fixture(scope="module")
def den(tmp_path_factory):
    tokens = ["<blk>", "<sos/eos>", "<unk>", "a", "b", "c"]
    seqs = [[3, 4], [4, 5, 3], [3, 3, 5], [5, 4]]
    return build_den_graph(tokens, seqs, tmp_path_factory.mktemp("den") / "P.arpa", 2)


def rand_batch(seed: int = 0, b: int = 3, t: int = 7, ls: int = 2, lt: int = 4, ds: int = 5, dt: int = 5):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([t, t - 2, t - 3][:b])
    s_scores = torch.log_softmax(torch.randn(b, t, V, generator=g), -1).requires_grad_()
    t_scores = torch.log_softmax(torch.randn(b, t, V, generator=g) * 2, -1)
    s_hidden = [torch.randn(b, t, ds, generator=g).requires_grad_() for _ in range(ls + 1)]
    t_hidden = [torch.randn(b, t, dt, generator=g) for _ in range(lt + 1)]
    return lengths, s_scores, t_scores, s_hidden, t_hidden


def targets_for(t_hidden, t_scores, lengths, feats=None) -> TeacherTargets:
    return TeacherTargets(lengths=lengths, scores=t_scores, hidden=dict(enumerate(t_hidden)), features=feats)


def test_layer_map():
    assert layer_map(12, 24) == [(i, 2 * i) for i in range(1, 13)]
    assert layer_map(12, 12) == [(i, i) for i in range(1, 13)]
    assert layer_map(4, 6, include_input=True) == [(0, 0), (1, 2), (2, 3), (3, 4), (4, 6)]
    assert layer_map(10, 24)[-1] == (10, 24)


def test_hidden_mse_with_identity_projections_is_plain_mse():
    lengths, s, t, hs, ht = rand_batch()
    obj = DistillObjective(ObjectiveConfig(alpha=0.0), None, (2, 5, 5), (4, 5, 5))
    assert all(torch.equal(p.weight, torch.eye(5)) for p in obj.proj)
    with torch.no_grad():
        res = obj(s, lengths, student_hidden=hs, teacher=targets_for(ht, t, lengths))
    want = 0.0
    for si, ti in ((1, 2), (2, 4)):
        for b, n in enumerate(lengths.tolist()):
            want += float(((hs[si].detach()[b, :n] - ht[ti][b, :n]) ** 2).mean(-1).sum()) / 2
    assert float(res.loss) == pytest.approx(want, rel=1e-5)
    assert res.num == float(lengths.sum()) and set(res.stats) == {"hid"}


def test_hidden_targets_layer_normalised():
    lengths, s, t, hs, ht = rand_batch()
    ht = [h * 40.0 + 3.0 for h in ht]  # a teacher with a large residual stream
    obj = DistillObjective(ObjectiveConfig(alpha=0.0, hidden_target_norm="layer"), None, (2, 5, 5), (4, 5, 5))
    with torch.no_grad():
        res = obj(s, lengths, student_hidden=hs, teacher=targets_for(ht, t, lengths))
    want = 0.0
    for si, ti in ((1, 2), (2, 4)):
        tgt = ht[ti]
        tgt = (tgt - tgt.mean(-1, keepdim=True)) / torch.sqrt(tgt.var(-1, unbiased=False, keepdim=True) + 1e-5)
        for b, n in enumerate(lengths.tolist()):
            want += float(((hs[si].detach()[b, :n] - tgt[b, :n]) ** 2).mean(-1).sum()) / 2
    assert float(res.loss) == pytest.approx(want, rel=1e-5)
    assert float(res.loss) / res.num < 5  # plain targets: ~1600 per frame
    with pytest.raises(ConfigError, match="hidden_target_norm"):
        ObjectiveConfig(hidden_target_norm="batch").validate()


def test_hidden_mse_projects_to_the_teacher_width_and_trains_the_projections():
    lengths, s, t, hs, ht = rand_batch(ds=3, dt=5)
    obj = DistillObjective(ObjectiveConfig(alpha=0.0), None, (2, 3, 3), (4, 5, 5))
    res = obj(s, lengths, student_hidden=hs, teacher=targets_for(ht, t, lengths))
    with torch.no_grad():
        want = (
            sum(
                float(((obj.proj[k](hs[si]) - ht[ti]) ** 2).mean(-1)[b, :n].sum())
                for k, (si, ti) in enumerate(((1, 2), (2, 4)))
                for b, n in enumerate(lengths.tolist())
            )
            / 2
        )
    assert float(res.loss.detach()) == pytest.approx(want, rel=1e-5)
    res.loss.backward()
    assert all(p.weight.grad is not None and p.weight.grad.abs().sum() > 0 for p in obj.proj)
    assert hs[1].grad.abs().sum() > 0 and hs[0].grad is None  # the encoder input is not distilled by default


def test_a1_b1_is_lfmmi_kd_and_output_mse_is_direct(den):
    lengths, s, t, hs, ht = rand_batch(1)
    obj = DistillObjective(ObjectiveConfig(alpha=1.0, beta=1.0), den, (2, 5, 5), (4, 5, 5))
    res = obj(s, lengths, student_hidden=hs, teacher=targets_for(ht, t, lengths))
    want = lfmmi_kd_loss(s, t, lengths, den).sum()
    assert float(res.loss) == pytest.approx(float(want), rel=1e-6)
    g1 = torch.autograd.grad(res.loss, s)[0]
    g2 = torch.autograd.grad(lfmmi_kd_loss(s, t, lengths, den).sum(), s)[0]
    torch.testing.assert_close(g1, g2)
    obj = DistillObjective(ObjectiveConfig(alpha=1.0, beta=0.0), den, (2, 5, 5), (4, 5, 5))
    res = obj(s, lengths, teacher=targets_for(ht, t, lengths))
    want = sum(float(((s[b, :n] - t[b, :n]) ** 2).mean(-1).sum()) for b, n in enumerate(lengths.tolist()))
    assert float(res.loss) == pytest.approx(want, rel=1e-6)


def test_full_formula_is_the_weighted_sum_of_components(den):
    lengths, s, t, hs, ht = rand_batch(2)
    cfg = ObjectiveConfig(
        alpha=0.7, beta=0.6, distill_weight=0.9, lfmmi_weight=0.3, ctc_weight=0.2, kl_weight=0.4, kl_temperature=2.0
    )
    obj = DistillObjective(cfg, den, (2, 5, 5), (4, 5, 5))
    tokens = [[3, 4], [5], [4, 4]]
    res = obj(s, lengths, student_hidden=hs, teacher=targets_for(ht, t, lengths), targets=tokens)
    c = res.stats
    hid = (
        sum(
            float(((hs[si].detach()[b, :n] - ht[ti][b, :n]) ** 2).mean(-1).sum())
            for si, ti in ((1, 2), (2, 4))
            for b, n in enumerate(lengths.tolist())
        )
        / 2
    )
    assert c["hid"] == pytest.approx(hid, rel=1e-5)
    assert c["lfmmi"] == pytest.approx(float(LFMMILoss(den)(s, lengths, tokens).sum()), rel=1e-6)
    flat = torch.tensor([x for q in tokens for x in q])
    ctc = F.ctc_loss(s.transpose(0, 1), flat, lengths, torch.tensor([2, 1, 2]), reduction="sum")
    assert c["ctc"] == pytest.approx(float(ctc), rel=1e-5)
    want = (
        0.9 * (0.3 * c["hid"] + 0.7 * (0.6 * c["mmi_kd"] + 0.4 * c["out"]))
        + 0.3 * c["lfmmi"]
        + 0.2 * c["ctc"]
        + 0.4 * c["kl"]
    )
    assert float(res.loss) == pytest.approx(want, rel=1e-5)


def test_frame_kl_equals_a_hand_written_kl():
    lengths, s, t, _, _ = rand_batch(3)
    for temp in (1.0, 2.5):
        got = float(frame_kl(s, t, lengths, temp))
        want = 0.0
        for b, n in enumerate(lengths.tolist()):
            for f in range(n):
                zs = s[b, f].detach().double().numpy() / temp
                zt = t[b, f].double().numpy() / temp
                ps = np.exp(zs - zs.max()) / np.exp(zs - zs.max()).sum()
                pt = np.exp(zt - zt.max()) / np.exp(zt - zt.max()).sum()
                want += float((pt * np.log(pt / ps)).sum()) * temp**2
        assert got == pytest.approx(want, rel=1e-5)
    assert float(frame_kl(t, t, lengths)) == pytest.approx(0.0, abs=1e-5)


def test_phases_and_validation():
    cfg = ObjectiveConfig(feature_only_steps=3, feature_weight=0.0)
    assert cfg.weights(2) == {"hid": 0, "out": 0, "mmi_kd": 0, "lfmmi": 0, "ctc": 0, "kl": 0, "feat": 1.0}
    assert cfg.weights(3)["feat"] == 0 and cfg.weights(3)["mmi_kd"] == pytest.approx(0.64)
    cfg = ObjectiveConfig(distill_weight=0.0, lfmmi_weight=1.0, ctc_weight=0.0, ctc_only_steps=5)
    assert cfg.weights(4)["ctc"] == 1.0 and cfg.weights(4)["lfmmi"] == 0.0
    assert cfg.weights(5) == {"hid": 0, "out": 0, "mmi_kd": 0, "lfmmi": 1.0, "ctc": 0, "kl": 0, "feat": 0}
    for bad, key in (
        (dict(alpha=1.2), "alpha"),
        (dict(kl_temperature=0.0), "kl_temperature"),
        (dict(distill_weight=0.0), "every loss weight is 0"),
        (dict(ctc_weight=-1.0), "ctc_weight"),
    ):
        with pytest.raises(ConfigError, match=key):
            ObjectiveConfig(**bad).validate()
    with pytest.raises(ConfigError, match="den"):
        DistillObjective(ObjectiveConfig(), None, (2, 5, 5), (4, 5, 5))
    with pytest.raises(ConfigError, match="teacher"):
        DistillObjective(ObjectiveConfig(alpha=0.0), None, (2, 5, 5), None)


def test_unreachable_sequences_are_dropped_and_counted(den):
    lengths, s, t, _, _ = rand_batch(4)
    obj = DistillObjective(ObjectiveConfig(distill_weight=0.0, lfmmi_weight=1.0), den, (2, 5, 5))
    res = obj(s, lengths, targets=[[3, 4], [3] * 9, [5]])  # 9 tokens cannot fit 5 frames
    assert res.dropped == {"lfmmi": 1} and math.isfinite(float(res.loss))
    want = LFMMILoss(den)(s, lengths, [[3, 4], [3], [5]])
    assert float(res.loss) == pytest.approx(float(want[0] + want[2]), rel=1e-6)


def tiny(layers: int, dim: int, conv: int = 16) -> W2V2Model:
    cfg = W2V2Config(
        vocab_size=V,
        hidden_size=dim,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * dim,
        conv_dim=(conv,) * 7,
        feat_extract_norm="layer",
        conv_bias=True,
        do_stable_layer_norm=True,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    )
    return W2V2Model(cfg)


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(2, 9000, generator=g) * 0.1
    return {
        "audio": audio,
        "audio_lens": torch.tensor([9000, 7000]),
        "tokens": [[3, 4, 5], [4]],
        "cut_ids": ["u1", "u2"],
        "texts": ["x", "y"],
    }


def test_distill_task_gradients_reach_student_and_projections_not_teacher(den):
    torch.manual_seed(0)
    teacher, student = tiny(4, 32), tiny(2, 16)
    obj = DistillObjective(ObjectiveConfig(lfmmi_weight=0.1), den, (2, 16, 16), (4, 32, 16))
    task = DistillTask(student, teacher, obj).train()
    assert not teacher.training and student.training
    out = task(batch())
    out["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in obj.proj.parameters())
    assert student.lm_head.weight.grad.abs().sum() > 0
    assert student.feature_extractor.conv_layers[0].conv.weight.grad.abs().sum() > 0
    assert set(out["stats"]) == {"hid", "out", "mmi_kd", "lfmmi"}
    assert out["num"] == float(student.output_lengths(torch.tensor([9000, 7000])).sum())
    # the teacher stays in eval mode: two forwards give the same teacher targets
    t1 = task.teacher_targets(batch())
    t2 = task.teacher_targets(batch())
    assert torch.equal(t1.scores, t2.scores)


def test_teacher_task_and_frontend_features(den):
    torch.manual_seed(0)
    model = tiny(2, 16)
    task = TeacherTask(
        model, DistillObjective(ObjectiveConfig(distill_weight=0.0, lfmmi_weight=1.0, ctc_weight=0.5), den, (2, 16, 16))
    )
    out = task(batch())
    assert set(out["stats"]) == {"lfmmi", "ctc"}
    assert float(out["loss"]) == pytest.approx(out["stats"]["lfmmi"] + 0.5 * out["stats"]["ctc"], rel=1e-5)
    model.eval()
    b = batch()
    feats, lens = model.frontend_features(b["audio"], b["audio_lens"])
    full = model(b["audio"], b["audio_lens"])
    torch.testing.assert_close(feats, full.features)
    assert torch.equal(lens, full.lengths)
    with pytest.raises(ValueError, match="labels only"):
        TeacherTask(model, DistillObjective(ObjectiveConfig(alpha=0.0), None, (2, 16, 16), (2, 16, 16)))


def test_overrides_that_change_the_layout_of_a_loaded_model_name_the_key():
    """``student.init_from`` + ``student.overrides`` that change shapes: a config error, not a traceback."""
    from model_fixtures import tiny

    from distill.config import ConfigError
    from distill.models import build_model
    from distill.train.stage_models import _apply_overrides, rebuild_with_config

    m = build_model(tiny(), 7)
    assert rebuild_with_config(m, hidden_dropout=0.2).config.hidden_dropout == 0.2
    with pytest.raises(
        ConfigError,
        match=r"key 'student.overrides'.*\['intermediate_size'\] change the parameter "
        r"layout \(size mismatch for encoder",
    ):
        _apply_overrides(m, {"intermediate_size": 64}, "student.overrides")


def test_teacher_cache_states_its_disk_cost_and_refuses_what_does_not_fit(tmp_path, monkeypatch, caplog):
    """The estimate matches the files put() writes; a new cache larger than the free disk is refused
    before anything is written, with both numbers in the message."""
    import logging
    import os
    import shutil
    from collections import namedtuple

    from distill.train.tasks import TeacherCache, TeacherCacheError

    frames, vals = 215, 500  # 4.3 s cuts, scores over a 500-token vocabulary
    cache = TeacherCache(tmp_path / "c", {"teacher": "t"}, values_per_frame=vals, hours=20 * 4.3 / 3600, utterances=20)
    assert cache.bytes_per_hour(vals) == 3600 * 50 * vals * 2
    with caplog.at_level(logging.INFO):
        cache.open()
    assert "0.18 GB per hour of audio (500 values per frame, float16)" in caplog.text
    for k in range(20):
        cache.put(f"utt{k}", {"scores": torch.zeros(frames, vals)})
    used = sum(os.stat(p).st_blocks * 512 for p in (tmp_path / "c").rglob("*.pt"))
    assert abs(cache.bytes_needed(vals, 20 * 4.3 / 3600, 20) - used) <= 0.05 * used

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**12, 0, 5 * 10**9))
    big = TeacherCache(
        tmp_path / "big", {"teacher": "t"}, values_per_frame=12 * 1024, hours=10_000.0, utterances=8_300_000
    )
    with pytest.raises(
        TeacherCacheError,
        match=r"would need 44263\.8 GB \(4\.42 GB per hour of audio x 10000\.0 h"
        r".* only 5\.0 GB are free",
    ):
        big.open()
    assert not (tmp_path / "big").exists()
