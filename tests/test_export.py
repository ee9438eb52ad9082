"""Deployment forms: ONNX (full and streaming chunk step) equal torch; dynamic int8 in torch and ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from model_fixtures import tiny  # noqa: E402

from distill.models import build_model  # noqa: E402
from distill.models.export import (  # noqa: E402
    OnnxStreamingStep,
    export_onnx,
    export_streaming_onnx,
    onnx_session,
    quantize_onnx,
    quantize_torch,
    run_onnx,
)
from distill.models.streaming import StreamingRecognizer, StreamingStep, compute_fbank_knf  # noqa: E402


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(feat_extract_norm="group", conv_bias=False, do_stable_layer_norm=False),
        dict(frontend="fbank"),
        dict(wave_norm="utterance"),
        dict(wave_norm="fixed", wave_mean=0.01, wave_std=0.2),
        dict(wave_norm="running", wave_mean=0.01, wave_std=0.2),
    ],
)
def test_onnx_full_utterance_equals_torch(tmp_path, kw):
    torch.manual_seed(0)
    m = build_model(tiny(**kw), 7).eval()
    path = export_onnx(m, tmp_path / "m.onnx")
    assert not m.training  # export must leave the model as it was
    sess = onnx_session(path)
    wave = torch.randn(3, 13000) * 0.2
    lengths = torch.tensor([13000, 9000, 300])  # different size than the export example; one empty
    with torch.no_grad():
        if m.config.frontend == "fbank":
            fb = torch.nn.utils.rnn.pad_sequence(
                [compute_fbank_knf(w[:n]) for w, n in zip(wave, lengths)], batch_first=True
            )
            fl = torch.tensor([(int(n) - 400) // 160 + 1 if n >= 400 else 0 for n in lengths])
            ref = m.forward_fbank(fb, fl)
            got = run_onnx(sess, fb, fl)
        else:
            ref = m(wave, lengths)
            got = run_onnx(sess, wave, lengths)
    assert got[1].tolist() == ref.lengths.tolist() == [40, 27, 0]
    for i, n in enumerate(ref.lengths.tolist()[:2]):
        assert (got[0][i, :n] - ref.scores[i, :n]).abs().max().item() <= 1e-4


@pytest.mark.parametrize(
    "frontend,left,kw",
    [
        ("cnn", None, {}),
        ("cnn", 2, {}),
        ("fbank", 1, {}),
        ("cnn", 2, dict(wave_norm="fixed", wave_mean=0.01, wave_std=0.2)),
        ("cnn", None, dict(wave_norm="running", wave_std=0.3)),
        ("cnn", 1, dict(conv_dim=(8, 8, 16, 16, 16, 16, 16))),
    ],
)
def test_onnx_streaming_step_equals_torch(tmp_path, frontend, left, kw):
    torch.manual_seed(0)
    m = build_model(tiny(frontend=frontend, **kw), 7).eval()
    m.set_streaming(6, left)
    path = export_streaming_onnx(m, tmp_path / "step.onnx", 6, left)
    onnx_step = OnnxStreamingStep(StreamingStep(m, 6, left), path)
    wave = torch.randn(int(2.3 * 16000)) * 0.2
    a, b = StreamingRecognizer(m, 6, left, step=onnx_step), StreamingRecognizer(m, 6, left)
    rng = np.random.default_rng(0)
    outs_a, outs_b, pos = [], [], 0
    while pos < wave.numel():
        n = int(rng.integers(200, 9000))
        outs_a.append(a.accept_waveform(wave[pos : pos + n]))
        outs_b.append(b.accept_waveform(wave[pos : pos + n]))
        pos += n
    got, ref = torch.cat(outs_a + [a.finalize()]), torch.cat(outs_b + [b.finalize()])
    assert got.shape == ref.shape and got.shape[0] == (wave.numel() - 400) // 320 + 1
    assert (got - ref).abs().max() <= 1e-4
    if left is not None:
        assert a.cache_frames() == left * 6


def test_dynamic_int8_torch_and_onnx(tmp_path):
    torch.manual_seed(0)
    m = build_model(tiny(hidden_size=64, intermediate_size=256), 7).eval()
    q = quantize_torch(m)
    assert any(type(mod).__name__ == "Linear" and "quantized" in type(mod).__module__ for mod in q.modules())
    assert not any(type(mod) is torch.nn.Linear for mod in q.modules())
    wave = torch.randn(2, 12000) * 0.2
    with torch.no_grad():
        ref = m(wave).scores
        got = q(wave).scores
    # int8 weights: close to, not equal to, fp32; posteriors agree
    assert (got - ref).abs().max() < 0.1
    assert (got.exp() - ref.exp()).abs().max() < 0.02
    torch.save(m.state_dict(), tmp_path / "fp32.pt")
    torch.save(q.state_dict(), tmp_path / "int8.pt")
    assert (tmp_path / "int8.pt").stat().st_size < 0.7 * (tmp_path / "fp32.pt").stat().st_size

    fp32 = export_onnx(m, tmp_path / "m.onnx")
    int8 = quantize_onnx(fp32, tmp_path / "m_int8.onnx")
    assert int8.stat().st_size < 0.7 * fp32.stat().st_size
    lengths = torch.tensor([12000, 12000])
    got_onnx = run_onnx(onnx_session(int8), wave, lengths)[0]
    assert (got_onnx.exp() - ref.exp()).abs().max() < 0.02
