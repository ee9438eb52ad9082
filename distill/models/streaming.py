"""Chunk-wise streaming inference for wav2vec 2.0 students (stage 2 of DistillW2V2).

A streaming model attends within its chunk and to ``left_chunks`` earlier chunks (all when None),
and its positional convolution is causal (left-padded). Such a model computed chunk by chunk with
cached keys/values gives the same scores as its chunk-masked forward over the whole utterance:

* :func:`chunk_attention_mask` is the mask used in training and in the full forward;
* :class:`StreamingStep` is one chunk step, a pure function ``(input, *state) -> (scores, *state)``
  (the form exported to ONNX): state = the positional-conv context (last K-1 encoder inputs), the
  per-layer key/value cache (fixed size ``left_chunks * chunk`` when bounded, growing when not), the
  number of frames done, and for the Fbank front-end its two 2-frame conv contexts;
* :class:`StreamingRecognizer` feeds audio pieces of any size, carrying CNN samples (the 80 samples
  a frame shares with the next chunk) or kaldi-native-fbank frames between calls.

The group-norm CNN ("base" layout) normalises over the whole utterance and cannot stream; streaming
needs the layer-norm CNN (all presets except ``w2v2-base``) or the Fbank front-end.
"""

from __future__ import annotations

from collections.abc import Sequence

import kaldi_native_fbank as knf
import numpy as np
import torch
from torch import Tensor, nn

from .config import conv_output_length
from .encoder import bias_from_allowed, chunk_attention_allowed
from .wav2vec2 import W2V2Model
from .wave_norm import running_norm, running_state

__all__ = [
    "chunk_attention_mask",
    "StreamingStep",
    "StreamingRecognizer",
    "streaming_model",
    "kaldi_fbank_options",
    "compute_fbank_knf",
]


def chunk_attention_mask(T: int, chunk: int, left_chunks: int | None = None, device=None) -> Tensor:
    """[T, T] bool, True where frame t may attend frame s: s's chunk is t's chunk or one of the
    ``left_chunks`` chunks before it (every earlier chunk when None). Chunks are ``chunk`` frames."""
    if chunk <= 0:
        raise ValueError(f"chunk must be > 0, got {chunk}")
    return chunk_attention_allowed(T, chunk, left_chunks, device)


def streaming_model(model: W2V2Model, chunk_frames: int, left_chunks: int | None = None) -> W2V2Model:
    """``model`` switched (in place) to chunk-masked attention and a causal positional conv."""
    model.set_streaming(chunk_frames, left_chunks, causal_pos_conv=True)
    return model


def kaldi_fbank_options(num_mel_bins: int = 80) -> knf.FbankOptions:
    """kaldi-native-fbank options equal to the batch front-end's lhotse Fbank (snip_edges, no dither)."""
    o = knf.FbankOptions()
    o.frame_opts.dither = 0.0
    o.frame_opts.snip_edges = True
    o.mel_opts.num_bins = num_mel_bins
    o.mel_opts.low_freq = 20.0
    o.mel_opts.high_freq = -400.0
    return o


def compute_fbank_knf(wave: Tensor | np.ndarray, num_mel_bins: int = 80) -> Tensor:
    """Fbank [N, num_mel_bins] of a whole 16 kHz utterance with kaldi-native-fbank (C++)."""
    f = knf.OnlineFbank(kaldi_fbank_options(num_mel_bins))
    f.accept_waveform(16000, _as_tensor(wave).numpy())
    f.input_finished()
    n = f.num_frames_ready
    if n == 0:
        return torch.zeros(0, num_mel_bins)
    return torch.from_numpy(np.stack([f.get_frame(i) for i in range(n)]))


def _check_streamable(model: W2V2Model) -> None:
    cfg = model.config
    if cfg.frontend == "cnn" and cfg.feat_extract_norm == "group":
        raise ValueError(
            "this model's CNN uses group norm over the whole utterance ('base' layout) and cannot stream; "
            "use a layer-norm CNN (feat_extract_norm='layer') or the Fbank front-end"
        )
    if cfg.frontend == "cnn" and cfg.wave_norm == "utterance":
        raise ValueError(
            "this model scales each whole utterance (wave_norm='utterance') and cannot stream; "
            "use wave_norm='running' (causal running normalisation) with the training data's "
            "wave_mean/wave_std as its prior"
        )


class StreamingStep(nn.Module):
    """One streaming chunk step of ``model`` (eval mode), exportable to ONNX.

    Input for ``n`` <= chunk output frames: CNN front-end: ``n*320 + 80`` samples [B, S] (the driver
    overlaps consecutive inputs by 80 samples); Fbank front-end: ``2n`` fbank frames [B, 2n, 80]
    (odd only at the end of a stream). Every step but the last must be a full chunk.
    """

    def __init__(self, model: W2V2Model, chunk_frames: int, left_chunks: int | None = None):
        super().__init__()
        _check_streamable(model)
        if chunk_frames <= 0:
            raise ValueError(f"chunk_frames must be > 0, got {chunk_frames}")
        self.model = model
        self.chunk = chunk_frames
        self.left_chunks = left_chunks
        cfg = model.config
        self.cache_frames = None if left_chunks is None else left_chunks * chunk_frames
        self.num_layers = cfg.num_hidden_layers
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.pos_context = cfg.num_conv_pos_embeddings - 1
        self.fbank = cfg.frontend == "fbank"
        self.running_norm = not self.fbank and cfg.wave_norm == "running"

    def state_names(self) -> list[str]:
        names = ["pos_ctx", "kv_cache", "processed"]
        if self.fbank:
            names += ["fbank_ctx1", "fbank_ctx2"]
        if self.running_norm:
            names.append("wave_stats")
        return names

    def init_state(self, batch: int = 1, device=None, dtype: torch.dtype = torch.float32) -> list[Tensor]:
        cfg = self.model.config
        tc = self.cache_frames or 0
        state = [
            torch.zeros(batch, self.pos_context, cfg.hidden_size, device=device, dtype=dtype),
            torch.zeros(self.num_layers, 2, batch, self.heads, tc, self.head_dim, device=device, dtype=dtype),
            torch.zeros(1, dtype=torch.long, device=device),
        ]
        if self.fbank:
            state += list(self.model.fbank_frontend.init_state(batch, device, dtype))
        if self.running_norm:  # float64 sums of the samples before the chunk (wave_norm: running)
            state.append(running_state(batch, device))
        return state

    def forward(self, x: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        m = self.model
        pos_ctx, kv, processed = state[0], state[1], state[2]
        if self.fbank:
            feats, c1, c2 = m.fbank_frontend._convs(m.fbank_frontend.normalize(x), state[3], state[4])
            extra = [c1, c2]
        elif self.running_norm:
            cfg = m.config
            # the input overlaps the next chunk's by receptive_field - frame_shift samples: the running
            # sums move on by the frames this chunk completes
            n_out = (
                conv_output_length(x.shape[1], cfg)
                if not torch.jit.is_tracing()
                else torch.div(x.shape[1] - cfg.receptive_field, cfg.frame_shift, rounding_mode="floor") + 1
            )
            xs, stats = running_norm(
                x,
                cfg.wave_mean,
                cfg.wave_std,
                cfg.wave_prior_s,
                cfg.frame_shift,
                state=state[3],
                keep=n_out * cfg.frame_shift,
            )
            feats = m.feature_extractor(xs).transpose(1, 2)
            extra = [stats]
        else:
            feats = m.feature_extractor(m.normalize_wave(x)).transpose(1, 2)
            extra = []
        h = m.feature_projection(feats)
        n = h.shape[1]
        new_pos = torch.cat([pos_ctx, h], dim=1)[:, -self.pos_context :] if self.pos_context else pos_ctx
        h = m.encoder.embed(h, causal=True, context=pos_ctx)
        tc = kv.shape[4]
        bias = None
        if self.cache_frames is not None and tc > 0:
            # cache slots not yet filled (start of the stream) are masked
            filled = torch.clamp(processed, max=tc)
            valid_cache = torch.arange(tc, device=h.device) >= (tc - filled)
            allowed = torch.cat([valid_cache, torch.ones(n, dtype=torch.bool, device=h.device)])
            bias = bias_from_allowed(allowed[None, None, None, :], h.dtype)
        new_kv = []
        for i, layer in enumerate(m.encoder.layers):
            h, (k, v) = layer(h, bias, (kv[i, 0], kv[i, 1]))
            nk = torch.stack([torch.cat([kv[i, 0], k], dim=2), torch.cat([kv[i, 1], v], dim=2)])
            if self.cache_frames is not None:
                nk = nk[:, :, :, nk.shape[3] - tc :]
            new_kv.append(nk)
        scores = torch.log_softmax(m.lm_head(m.encoder.finish(h)), dim=-1)
        return (scores, new_pos, torch.stack(new_kv), processed + n, *extra)


def _as_tensor(samples) -> Tensor:
    if isinstance(samples, Tensor):
        t = samples.detach().to("cpu", torch.float32).flatten()
    else:
        t = torch.as_tensor(np.asarray(samples, dtype=np.float32)).flatten()
    if not bool(torch.isfinite(t).all()):
        raise ValueError("audio piece contains NaN or inf values")
    return t


class StreamingRecognizer:
    """Stateful chunk-wise recogniser for one stream (batch 1).

    ``accept_waveform(samples)`` takes 16 kHz float samples in pieces of any size and returns the
    scores [n, V] of the chunks it completed (n may be 0); ``finalize()`` returns the scores of the
    last partial chunk. Memory is bounded when ``left_chunks`` is bounded.
    """

    def __init__(self, model: W2V2Model, chunk_frames: int = 24, left_chunks: int | None = None, step=None):
        """``step`` replaces the torch chunk step, e.g. by ``export.OnnxStreamingStep``."""
        if model.training:
            raise ValueError("StreamingRecognizer needs a model in eval mode (call model.eval())")
        self.step = StreamingStep(model, chunk_frames, left_chunks) if step is None else step
        self.cfg = model.config
        self.chunk = chunk_frames
        p = next(model.parameters())
        self.dtype, self.device = (p.dtype, p.device) if step is None else (torch.float32, torch.device("cpu"))
        self.reset()

    def reset(self) -> None:
        self.state = self.step.init_state(1, self.device, self.dtype)
        self.frames_done = 0
        self.finished = False
        if self.step.fbank:
            self._fbank = knf.OnlineFbank(kaldi_fbank_options(self.cfg.fbank_num_mel_bins))
            self._next_fbank = 0
        else:
            self._buf = torch.zeros(0)

    # -- sizes (for monitoring memory) --
    def cache_frames(self) -> int:
        """Frames held in the key/value cache."""
        return int(self.state[1].shape[4])

    def buffered_samples(self) -> int:
        return 0 if self.step.fbank else int(self._buf.numel())

    def _run(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            out = self.step(x.to(self.device, self.dtype)[None], *self.state)
        self.state = list(out[1:])
        self.frames_done += out[0].shape[1]
        return out[0][0]

    def _empty(self) -> Tensor:
        return torch.zeros(0, self.cfg.vocab_size, dtype=self.dtype, device=self.device)

    def accept_waveform(self, samples: Tensor | np.ndarray | Sequence[float]) -> Tensor:
        """Add samples; return scores [n, V] of the chunks completed by them."""
        if self.finished:
            raise RuntimeError("stream already finalized; call reset() to start a new one")
        x = _as_tensor(samples)
        outs = []
        if self.step.fbank:
            self._fbank.accept_waveform(16000, x.numpy())
            need = 2 * self.chunk
            while self._fbank.num_frames_ready - self._next_fbank >= need:
                outs.append(self._run(self._fbank_frames(need)))
        else:
            self._buf = torch.cat([self._buf, x])
            hop = self.cfg.frame_shift
            need = self.chunk * hop + (self.cfg.receptive_field - hop)
            while self._buf.numel() >= need:
                outs.append(self._run(self._buf[:need]))
                self._buf = self._buf[self.chunk * hop :]
        return torch.cat(outs) if outs else self._empty()

    def _fbank_frames(self, n: int) -> Tensor:
        i0 = self._next_fbank
        frames = np.stack([self._fbank.get_frame(i) for i in range(i0, i0 + n)])
        self._next_fbank += n
        self._fbank.pop(n)
        return torch.from_numpy(frames)

    def finalize(self) -> Tensor:
        """Flush the last partial chunk; returns its scores [n, V] (n may be 0)."""
        if self.finished:
            return self._empty()
        self.finished = True
        if self.step.fbank:
            self._fbank.input_finished()
            left = self._fbank.num_frames_ready - self._next_fbank
            return self._run(self._fbank_frames(left)) if left > 0 else self._empty()
        n = conv_output_length(self._buf.numel(), self.cfg)
        if n == 0:
            return self._empty()
        hop = self.cfg.frame_shift
        return self._run(self._buf[: n * hop + self.cfg.receptive_field - hop])
