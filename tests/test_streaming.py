"""Streaming: chunk mask, chunk-wise recogniser == chunk-masked full forward, bounded memory, fbank."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_fixtures import tiny

from distill.models import build_model
from distill.models.streaming import (
    StreamingRecognizer,
    chunk_attention_mask,
    compute_fbank_knf,
    streaming_model,
)


def test_chunk_attention_mask_matches_definition():
    for chunk, left in ((3, None), (3, 0), (4, 2), (1, 1)):
        m = chunk_attention_mask(11, chunk, left)
        for t in range(11):
            for s in range(11):
                ok = s // chunk <= t // chunk and (left is None or s // chunk >= t // chunk - left)
                assert bool(m[t, s]) == ok
    with pytest.raises(ValueError):
        chunk_attention_mask(5, 0)


def run_stream(rec, wave, rng, lo=160, hi=16000):
    outs, pos = [], 0
    while pos < wave.numel():
        n = int(rng.integers(lo, hi + 1))
        outs.append(rec.accept_waveform(wave[pos : pos + n]))
        pos += n
    outs.append(rec.finalize())
    return torch.cat(outs)


@pytest.mark.parametrize(
    "stable,left,kw",
    [
        (True, None, {}),
        (True, 2, {}),
        (False, 1, {}),
        (False, 0, {}),
        (True, 1, dict(wave_norm="fixed", wave_mean=-0.02, wave_std=0.3)),
        (True, 1, dict(wave_norm="running", wave_mean=-0.02, wave_std=0.3)),
        (True, 1, dict(conv_dim=(8, 8, 16, 16, 16, 16, 16))),
    ],
)  # widening CNN
def test_streaming_equals_chunk_masked_forward(stable, left, kw):
    torch.manual_seed(0)
    m = build_model(tiny(do_stable_layer_norm=stable, **kw), 7).eval()
    streaming_model(m, 5, left)
    rng = np.random.default_rng(1)
    for seconds in (0.9, 2.37):
        wave = torch.randn(int(seconds * 16000)) * 0.3
        with torch.no_grad():
            ref = m(wave[None]).scores[0]
        for lo, hi in ((160, 1000), (4000, 16000)):  # 10 ms .. 1 s pieces
            got = run_stream(StreamingRecognizer(m, 5, left), wave, rng, lo, hi)
            assert got.shape == ref.shape
            assert (got - ref).abs().max() <= 1e-5


def test_streaming_emits_each_chunk_when_complete():
    m = build_model(tiny(), 7).eval()
    rec = StreamingRecognizer(m, 4)
    need = 4 * 320 + 80
    assert rec.accept_waveform(torch.zeros(need - 1)).shape == (0, 7)
    assert rec.accept_waveform(torch.zeros(1)).shape == (4, 7)
    assert rec.accept_waveform(torch.zeros(4 * 320)).shape == (4, 7)
    assert rec.accept_waveform(np.zeros(500, dtype=np.float32)).shape == (0, 7)
    assert rec.finalize().shape == (1, 7)  # 500 samples = one more frame
    with pytest.raises(RuntimeError, match="finalized"):
        rec.accept_waveform(torch.zeros(10))
    rec.reset()
    assert rec.finalize().shape == (0, 7)  # nothing received: empty, no crash


def test_streaming_bad_input():
    m = build_model(tiny(), 7).eval()
    rec = StreamingRecognizer(m, 4)
    with pytest.raises(ValueError, match="NaN"):
        rec.accept_waveform(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="eval mode"):
        StreamingRecognizer(build_model(tiny(), 7).train(), 4)
    base = build_model(tiny(feat_extract_norm="group", conv_bias=False), 7).eval()
    with pytest.raises(ValueError, match="group norm"):
        StreamingRecognizer(base, 4)


def test_memory_flat_over_ten_minutes():
    """10 minutes of audio with bounded left context: cache and buffers do not grow."""
    cfg = tiny(
        hidden_size=8,
        num_attention_heads=2,
        intermediate_size=8,
        num_hidden_layers=1,
        conv_dim=(4,) * 7,
        num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=2,
        vocab_size=3,
    )
    m = build_model(cfg, 3).eval()
    rec = StreamingRecognizer(m, 24, left_chunks=2)
    piece = torch.randn(16000) * 0.1
    sizes, frames = [], 0
    for second in range(600):
        frames += rec.accept_waveform(piece).shape[0]
        if second % 60 == 59:
            sizes.append((rec.cache_frames(), rec.buffered_samples(), sum(s.numel() for s in rec.state)))
    frames += rec.finalize().shape[0]
    assert frames == (600 * 16000 - 400) // 320 + 1
    assert len(set(sizes)) == 1, sizes
    assert sizes[0][0] == 2 * 24 and sizes[0][1] < 24 * 320 + 80


def test_knf_fbank_equals_lhotse_batch_fbank():
    torch.manual_seed(0)
    m = build_model(tiny(frontend="fbank"), 7).eval()
    wave = torch.randn(20000) * 0.2
    batch = m.fbank_frontend.compute_fbank(wave[None])[0]
    online = compute_fbank_knf(wave)
    assert batch.shape == online.shape == ((20000 - 400) // 160 + 1, 80)
    assert (batch - online).abs().max() < 2e-3


@pytest.mark.parametrize("left", [None, 1])
def test_fbank_streaming(left):
    torch.manual_seed(0)
    m = build_model(tiny(frontend="fbank"), 7).eval()
    streaming_model(m, 4, left)
    wave = torch.randn(int(1.7 * 16000)) * 0.2
    got = run_stream(StreamingRecognizer(m, 4, left), wave, np.random.default_rng(0), 160, 5000)
    with torch.no_grad():
        exact = m.forward_fbank(compute_fbank_knf(wave)[None]).scores[0]  # same features as online
        batch = m(wave[None]).scores[0]  # lhotse batch fbank
    assert got.shape == exact.shape
    assert (got - exact).abs().max() <= 1e-5
    assert (got - batch).abs().max() <= 1e-3
