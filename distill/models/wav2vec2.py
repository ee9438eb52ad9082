"""wav2vec 2.0 encoder with a linear output layer (per-frame log-posteriors), written for this toolkit.

Numerics follow Hugging Face ``Wav2Vec2ForCTC`` in eval mode (both the post-LN "base" and the pre-LN
"stable layer norm" layouts), so imported checkpoints give the same outputs; parameter names follow
HF's module tree (without the ``wav2vec2.`` prefix) so that conversion is a rename. On top of that the
model has a Fbank front-end option (input distillation), a chunk-masked streaming mode with a causal
positional convolution, and exact masking of padded samples in the group-norm CNN.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import W2V2Config, conv_output_length, get_config
from .wave_norm import running_norm, utterance_norm

__all__ = ["W2V2Model", "W2V2Output", "build_model", "activation"]


def _gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


_ACTIVATIONS = {
    "gelu": F.gelu,
    "relu": F.relu,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "swish": F.silu,
    "silu": F.silu,
}


def activation(name: str):
    """The activation function named as in HF / fairseq configs."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; supported: {', '.join(sorted(_ACTIVATIONS))}")
    return _ACTIVATIONS[name]


@dataclass
class W2V2Output:
    """Model outputs; ``T`` is the number of 20 ms output frames of the longest utterance.

    scores: [B,T,V] per-frame log-posteriors (log_softmax of the head's logits).
    lengths: [B] valid output frames per utterance.
    hidden_states: L+1 tensors [B,T,D]: the encoder input (after positional conv, +LN for post-LN
        models), then each layer's output (before the final LN of pre-LN models).
    features: [B,T,C] front-end output before the feature projection.
    """

    scores: Tensor
    lengths: Tensor
    hidden_states: list[Tensor]
    features: Tensor


def lengths_to_mask(lengths: Tensor, max_len: int) -> Tensor:
    """[B, max_len] bool, True at valid positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


# --------------------------------------------------------------------------------------------------
# front-ends
# --------------------------------------------------------------------------------------------------
class ConvLayer(nn.Module):
    """One CNN block: Conv1d, optional layer/group norm, activation."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, bias: bool, norm: Optional[str], act: str):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, stride=stride, bias=bias)
        self.norm_type = norm
        if norm == "layer":
            self.layer_norm = nn.LayerNorm(cout)
        elif norm == "group":
            self.layer_norm = nn.GroupNorm(cout, cout)
        self.act = activation(act)

    def forward(self, x: Tensor, out_lengths: Optional[Tensor] = None, static: bool = False) -> Tensor:
        """x [B,Cin,S] -> [B,Cout,T]; ``out_lengths`` [B] (valid output steps) restricts the group-norm
        statistics to valid steps (skipped when nothing is padded, unless ``static`` for export)."""
        x = self.conv(x)
        if self.norm_type == "layer":
            x = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)
        elif self.norm_type == "group":
            valid = None
            if out_lengths is not None:
                valid = lengths_to_mask(out_lengths, x.shape[2])
                if not static and bool(valid.all()):
                    valid = None
            x = self.layer_norm(x) if valid is None else self._masked_instance_norm(x, valid)
        return self.act(x)

    def _masked_instance_norm(self, x: Tensor, valid: Tensor) -> Tensor:
        # GroupNorm with one group per channel = per-channel normalisation over time; over valid steps only
        m = valid[:, None, :].to(x.dtype)
        n = m.sum(-1, keepdim=True).clamp(min=1.0)
        mean = (x * m).sum(-1, keepdim=True) / n
        var = (((x - mean) * m) ** 2).sum(-1, keepdim=True) / n
        y = (x - mean) * torch.rsqrt(var + self.layer_norm.eps)
        return y * self.layer_norm.weight[None, :, None] + self.layer_norm.bias[None, :, None]


class FeatureEncoder(nn.Module):
    """The waveform CNN: 16 kHz samples -> C-dim frames every ``frame_shift`` samples."""

    def __init__(self, cfg: W2V2Config):
        super().__init__()
        layers = []
        cin = 1
        for i, (c, k, s) in enumerate(zip(cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride)):
            if cfg.feat_extract_norm == "layer":
                norm = "layer"
            else:
                norm = "group" if i == 0 else None
            layers.append(ConvLayer(cin, c, k, s, cfg.conv_bias, norm, cfg.feat_extract_activation))
            cin = c
        self.conv_layers = nn.ModuleList(layers)
        self.group_norm = cfg.feat_extract_norm == "group"

    def forward(self, wave: Tensor, lengths: Optional[Tensor] = None, static: bool = False) -> Tensor:
        """wave [B,S] -> [B,C,T]. With ``lengths`` (samples), the group norm (if any) only uses
        valid positions; without, it normalises over the whole padded input (as HF does)."""
        x = wave[:, None, :]
        n0 = None
        if lengths is not None and self.group_norm:
            k, s = self.conv_layers[0].conv.kernel_size[0], self.conv_layers[0].conv.stride[0]
            n0 = (torch.div(lengths - k, s, rounding_mode="floor") + 1).clamp(min=0)
        for i, layer in enumerate(self.conv_layers):
            x = layer(x, n0 if i == 0 else None, static)
        return x


class FbankFrontend(nn.Module):
    """Input-distillation front-end (Wang et al. 2022): 80-dim Kaldi fbank -> conv subsampler -> C dims.

    Fbank frames (25 ms window, 10 ms shift, ``snip_edges=True``) are normalised with the buffers
    ``mean``/``std`` (global CMVN, identity by default), then two causal (left-padded in time) 3x3
    Conv2d layers, strides (1,2) and (2,2) over (time, freq), map them to 20 ms frames; output frame
    t sees samples [320t-640, 320t+400) like the waveform CNN's frame t ends at 320t+400, so both
    front-ends give the same number of frames and the front-end streams with a 2-frame cache per conv.
    """

    def __init__(self, cfg: W2V2Config):
        super().__init__()
        nb, ch = cfg.fbank_num_mel_bins, cfg.fbank_channels
        self.conv1 = nn.Conv2d(1, ch, 3, stride=(1, 2))
        self.conv2 = nn.Conv2d(ch, ch, 3, stride=(2, 2))
        f1 = (nb + 2 - 3) // 2 + 1
        f2 = (f1 + 2 - 3) // 2 + 1
        self.out = nn.Linear(ch * f2, cfg.feature_dim)
        self.register_buffer("mean", torch.zeros(nb))
        self.register_buffer("std", torch.ones(nb))
        self.act = activation(cfg.feat_extract_activation)
        self.num_mel_bins = nb
        self._fbank: dict = {}  # lhotse module, kept out of the state dict and parameter count

    def compute_fbank(self, wave: Tensor) -> Tensor:
        """[B,S] float in [-1,1] -> [B,N,80] log-mel fbank (lhotse's Kaldi-compatible torch Fbank)."""
        mod = self._fbank.get("m")
        if mod is None:
            from lhotse.features.kaldi.layers import Wav2LogFilterBank

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # lhotse warns about snip_edges=True
                mod = Wav2LogFilterBank(snip_edges=True, dither=0.0, num_filters=self.num_mel_bins)
            self._fbank["m"] = mod
        if next(mod.parameters()).device != wave.device:
            mod.to(wave.device)
        with torch.no_grad():
            return mod(wave.float())

    def _convs(self, x: Tensor, pad1: Tensor, pad2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Causal convs over normalised fbank x [B,N,F] with 2-frame left contexts pad1 [B,2,F] (fbank)
        and pad2 [B,ch,2,F1] (conv1 outputs). Returns output [B,T,C] and the new contexts."""
        x = torch.cat([pad1, x], dim=1)
        new_pad1 = x[:, -2:]
        h = self.act(self.conv1(F.pad(x[:, None], (1, 1))))  # [B,ch,N,F1]
        h = torch.cat([pad2, h], dim=2)
        new_pad2 = h[:, :, -2:]  # the next conv2 window starts here when N is even (streaming chunks)
        h = self.act(self.conv2(F.pad(h, (1, 1))))  # [B,ch,T,F2]
        b, c, t, f = h.shape
        return self.out(h.permute(0, 2, 1, 3).reshape(b, t, c * f)), new_pad1, new_pad2

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> tuple[Tensor, Tensor]:
        f1 = (self.num_mel_bins + 2 - 3) // 2 + 1
        return (
            torch.zeros(batch, 2, self.num_mel_bins, device=device, dtype=dtype),
            torch.zeros(batch, self.conv1.out_channels, 2, f1, device=device, dtype=dtype),
        )

    def normalize(self, fbank: Tensor) -> Tensor:
        return (fbank - self.mean) / self.std

    def forward(self, fbank: Tensor) -> Tensor:
        """fbank [B,N,80] -> [B,T,C] with T = floor((N-1)/2)+1 (0 when N = 0)."""
        if fbank.shape[1] == 0:
            return fbank.new_zeros(fbank.shape[0], 0, self.out.out_features)
        p1, p2 = self.init_state(fbank.shape[0], fbank.device, fbank.dtype)
        y, _, _ = self._convs(self.normalize(fbank), p1, p2)
        return y


class FeatureProjection(nn.Module):
    def __init__(self, cfg: W2V2Config):
        super().__init__()
        self.layer_norm = nn.LayerNorm(cfg.feature_dim, eps=cfg.layer_norm_eps)
        self.projection = nn.Linear(cfg.feature_dim, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.feat_proj_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.projection(self.layer_norm(x)))


# --------------------------------------------------------------------------------------------------
# encoder
# --------------------------------------------------------------------------------------------------
class WeightNormConv1d(nn.Module):
    """Grouped Conv1d with weight normalisation over the kernel axis (``weight_g``/``weight_v``, dim=2)."""

    def __init__(self, channels: int, kernel: int, groups: int):
        super().__init__()
        conv = nn.Conv1d(channels, channels, kernel, groups=groups)
        v = conv.weight.detach().clone()
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(v.norm(dim=(0, 1), keepdim=True))
        self.bias = nn.Parameter(conv.bias.detach().clone())
        self.groups = groups
        self.kernel = kernel

    def weight(self) -> Tensor:
        if torch.is_grad_enabled() and (self.weight_v.requires_grad or self.weight_g.requires_grad):
            return self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))
        # inference: reuse the normalised weight while the parameters are unchanged
        key = (self.weight_v._version, self.weight_g._version, self.weight_v.data_ptr(), self.weight_g.data_ptr(),
               self.weight_v.dtype, self.weight_v.device)
        cached = self.__dict__.get("_cached")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                w = self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))
            self.__dict__["_cached"] = (key, w)
            return w
        return cached[1]

    def forward(self, x: Tensor) -> Tensor:
        return F.conv1d(x, self.weight(), self.bias, groups=self.groups)


class PositionalConvEmbedding(nn.Module):
    """Convolutional relative positional embedding: GELU(conv(x)), centred or causal (left-padded)."""

    def __init__(self, cfg: W2V2Config):
        super().__init__()
        self.conv = WeightNormConv1d(cfg.hidden_size, cfg.num_conv_pos_embeddings, cfg.num_conv_pos_embedding_groups)
        self.kernel = cfg.num_conv_pos_embeddings
        self.act = activation(cfg.feat_extract_activation)

    def forward(self, x: Tensor, causal: bool = False, context: Optional[Tensor] = None) -> Tensor:
        """x [B,T,D] -> [B,T,D]. Causal mode uses ``context`` [B,K-1,D] (previous inputs) or zeros.

        T = 0 (audio shorter than one frame) gives an empty output: the padded input would be
        shorter than the kernel (the causal K-1 padding, or an odd centred kernel's)."""
        if not torch.jit.is_tracing() and x.shape[1] == 0:
            return torch.zeros_like(x)
        h = x.transpose(1, 2)
        k = self.kernel
        if causal:
            if context is None:
                h = F.pad(h, (k - 1, 0))
            else:
                h = torch.cat([context.transpose(1, 2), h], dim=2)
        else:
            # centred "same" conv; even kernels drop the last output, as wav2vec 2.0 does
            h = F.pad(h, (k // 2, k // 2))
        h = self.conv(h)
        if not causal and k % 2 == 0:
            h = h[:, :, :-1]
        return self.act(h).transpose(1, 2)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.heads = heads
        self.head_dim = dim // heads
        self.dropout = dropout

    def forward(
        self, x: Tensor, bias: Optional[Tensor] = None, past_kv: Optional[tuple[Tensor, Tensor]] = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x [B,T,D]; ``bias`` additive [B|1,1,T,Tk]; ``past_kv`` cached keys/values [B,H,Tp,dh].

        Returns the output and the (new-frame) keys/values [B,H,T,dh] for a streaming cache."""
        b, t, d = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        kv = (k, v)
        if past_kv is not None:
            k = torch.cat([past_kv[0], k], dim=2)
            v = torch.cat([past_kv[1], v], dim=2)
        p = self.dropout if self.training else 0.0
        if bias is not None:
            bias = bias.to(q.dtype)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        return self.out_proj(o.transpose(1, 2).reshape(b, t, d)), kv


class FeedForward(nn.Module):
    def __init__(self, cfg: W2V2Config):
        super().__init__()
        self.intermediate_dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.output_dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.act = activation(cfg.hidden_act)
        self.intermediate_dropout = nn.Dropout(cfg.activation_dropout)
        self.output_dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.intermediate_dropout(self.act(self.intermediate_dense(x)))
        return self.output_dropout(self.output_dense(x))


class EncoderLayer(nn.Module):
    """Transformer block; ``stable`` = pre-LN (large/lv60 layout), else post-LN (base layout)."""

    def __init__(self, cfg: W2V2Config):
        super().__init__()
        self.attention = SelfAttention(cfg.hidden_size, cfg.num_attention_heads, cfg.attention_dropout)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.feed_forward = FeedForward(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.stable = cfg.do_stable_layer_norm

    def forward(
        self, x: Tensor, bias: Optional[Tensor] = None, past_kv: Optional[tuple[Tensor, Tensor]] = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if self.stable:
            a, kv = self.attention(self.layer_norm(x), bias, past_kv)
            x = x + self.dropout(a)
            x = x + self.feed_forward(self.final_layer_norm(x))
        else:
            a, kv = self.attention(x, bias, past_kv)
            x = self.layer_norm(x + self.dropout(a))
            x = self.final_layer_norm(x + self.feed_forward(x))
        return x, kv


class Encoder(nn.Module):
    def __init__(self, cfg: W2V2Config):
        super().__init__()
        self.pos_conv_embed = PositionalConvEmbedding(cfg)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.layers = nn.ModuleList([EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])
        self.stable = cfg.do_stable_layer_norm

    def embed(self, x: Tensor, causal: bool, context: Optional[Tensor] = None) -> Tensor:
        """Add the positional embedding (and post-LN models' input layer norm): hidden_states[0]."""
        x = x + self.pos_conv_embed(x, causal=causal, context=context)
        if not self.stable:
            x = self.layer_norm(x)
        return self.dropout(x)

    def finish(self, x: Tensor) -> Tensor:
        """Final layer norm of pre-LN models (identity for post-LN)."""
        return self.layer_norm(x) if self.stable else x


# --------------------------------------------------------------------------------------------------
# full model
# --------------------------------------------------------------------------------------------------
def chunk_attention_allowed(
    t: int, chunk: int, left_chunks: Optional[int], device=None, offset: int = 0, key_len: Optional[int] = None
) -> Tensor:
    """[T, Tk] bool: query frame i (absolute ``offset + i``) may attend key j (absolute ``offset + Tk' + j``
    with keys ending at the same place as queries) when its chunk is the same or at most ``left_chunks``
    earlier (all earlier chunks when None)."""
    key_len = t if key_len is None else key_len
    q = torch.arange(t, device=device) + offset
    k = torch.arange(key_len, device=device) + offset + t - key_len
    qc = torch.div(q, chunk, rounding_mode="floor")[:, None]
    kc = torch.div(k, chunk, rounding_mode="floor")[None, :]
    allowed = kc <= qc
    if left_chunks is not None:
        allowed = allowed & (kc >= qc - left_chunks)
    return allowed


def bias_from_allowed(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive attention bias: 0 where allowed, the dtype's minimum elsewhere (no NaN on empty rows)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


class W2V2Model(nn.Module):
    """wav2vec 2.0 (or its Fbank-front-end variant) + linear head giving per-frame log-posteriors."""

    def __init__(self, cfg: W2V2Config):
        super().__init__()
        self.config = cfg
        if cfg.frontend == "cnn":
            self.feature_extractor = FeatureEncoder(cfg)
        else:
            self.fbank_frontend = FbankFrontend(cfg)
        self.feature_projection = FeatureProjection(cfg)
        if cfg.mask_time_prob > 0:
            self.masked_spec_embed = nn.Parameter(torch.rand(cfg.hidden_size))
        self.encoder = Encoder(cfg)
        self.final_dropout = nn.Dropout(cfg.final_dropout)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size)
        self._init_weights()

    # ---- set-up --------------------------------------------------------------------------------
    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    bound = math.sqrt(m.groups / (m.in_channels * math.prod(m.kernel_size)))
                    nn.init.uniform_(m.bias, -bound, bound)
        pc = self.encoder.pos_conv_embed.conv
        with torch.no_grad():
            fan_in = pc.kernel * pc.weight_v.shape[1]
            pc.weight_v.normal_(0.0, 2 * math.sqrt(1.0 / fan_in))
            pc.weight_g.copy_(pc.weight_v.norm(dim=(0, 1), keepdim=True))
            pc.bias.zero_()
        if self.config.frontend == "cnn":
            proj = self.feature_projection.projection
            bound = 1.0 / math.sqrt(proj.in_features)
            nn.init.uniform_(proj.weight, -bound, bound)
            nn.init.uniform_(proj.bias, -bound, bound)

    def set_streaming(
        self, chunk_frames: int, left_chunks: Optional[int] = None, causal_pos_conv: Optional[bool] = None
    ) -> None:
        """Switch to chunk-masked attention (``chunk_frames`` > 0) or back to full attention (0).

        ``causal_pos_conv`` defaults to True for chunked attention and to the current setting for full
        attention (a streaming model evaluated with full context keeps its causal positional conv)."""
        if causal_pos_conv is None:
            causal_pos_conv = True if chunk_frames > 0 else self.config.causal_pos_conv
        self.config = self.config.replace(
            chunk_frames=chunk_frames, left_chunks=left_chunks, causal_pos_conv=causal_pos_conv
        )

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Output frames for input lengths in samples."""
        return conv_output_length(lengths, self.config)

    # ---- forward -------------------------------------------------------------------------------
    def _check_input(self, wave: Tensor, lengths: Optional[Tensor]) -> Tensor:
        if wave.dim() != 2:
            raise ValueError(f"expected a waveform batch [B, S], got shape {tuple(wave.shape)}")
        if not wave.is_floating_point():
            raise ValueError(f"expected a float waveform, got {wave.dtype}")
        if lengths is None:
            lengths = torch.full((wave.shape[0],), wave.shape[1], dtype=torch.long, device=wave.device)
        if lengths.shape != (wave.shape[0],):
            raise ValueError(f"lengths must have shape [{wave.shape[0]}], got {tuple(lengths.shape)}")
        if wave.shape[0] and int(lengths.max()) > wave.shape[1]:
            raise ValueError(f"a length ({int(lengths.max())}) exceeds the waveform width {wave.shape[1]}")
        bad = ~torch.isfinite(wave).all(dim=1)
        if bool(bad.any()):
            raise ValueError(f"waveform contains NaN or inf values (batch items {bad.nonzero().flatten().tolist()})")
        return lengths.long()

    def normalize_wave(self, wave: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """The CNN's input: ``wave`` [B,S] scaled as ``config.wave_norm`` says (branch-free, so it traces;
        :mod:`distill.models.wave_norm`). Padding beyond ``lengths`` is set to 0 by "utterance" and
        "running", as HF's feature extractor does."""
        cfg = self.config
        if cfg.wave_norm == "fixed":
            return (wave - cfg.wave_mean) / cfg.wave_std
        if cfg.wave_norm == "running":
            return running_norm(wave, cfg.wave_mean, cfg.wave_std, cfg.wave_prior_s, cfg.frame_shift, lengths)[0]
        if cfg.wave_norm == "utterance":
            return utterance_norm(wave, lengths)
        return wave

    def _frontend(self, wave: Tensor, lengths: Tensor) -> Tensor:
        """wave [B,S] -> features [B,T,C] (T may be 0)."""
        cfg = self.config
        t = conv_output_length(wave.shape[1], cfg)
        dtype = next(self.parameters()).dtype
        if t == 0:
            return wave.new_zeros(wave.shape[0], 0, cfg.feature_dim, dtype=dtype)
        if cfg.frontend == "cnn":
            mask_lengths = lengths if cfg.mask_group_norm else None
            return self.feature_extractor(self.normalize_wave(wave, lengths).to(dtype), mask_lengths).transpose(1, 2)
        fb = self.fbank_frontend.compute_fbank(wave).to(dtype)
        return self.fbank_frontend(fb)

    def forward(self, wave: Tensor, lengths: Optional[Tensor] = None) -> W2V2Output:
        """wave [B,S] float (16 kHz, zero-padded), lengths [B] samples -> :class:`W2V2Output`."""
        lengths = self._check_input(wave, lengths)
        feats = self._frontend(wave, lengths)
        return self.forward_features(feats, self.output_lengths(lengths))

    def frontend_features(self, wave: Tensor, lengths: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Front-end output [B,T,C] (``W2V2Output.features``) and output frame counts [B], without the
        encoder (e.g. for input distillation of the Fbank front-end)."""
        lengths = self._check_input(wave, lengths)
        return self._frontend(wave, lengths), self.output_lengths(lengths)

    def forward_fbank(self, fbank: Tensor, fbank_lengths: Optional[Tensor] = None) -> W2V2Output:
        """Fbank-front-end models from precomputed fbank [B,N,80] (e.g. kaldi-native-fbank)."""
        if self.config.frontend != "fbank":
            raise ValueError("forward_fbank needs a model with frontend='fbank'")
        if fbank_lengths is None:
            fbank_lengths = torch.full((fbank.shape[0],), fbank.shape[1], dtype=torch.long, device=fbank.device)
        feats = self.fbank_frontend(fbank)
        out_len = torch.div(fbank_lengths - 1, 2, rounding_mode="floor") + 1
        out_len = torch.where(fbank_lengths > 0, out_len, torch.zeros_like(out_len))
        return self.forward_features(feats, out_len)

    def attention_bias(self, lengths: Tensor, t: int, dtype: torch.dtype, static: bool = False) -> Optional[Tensor]:
        """Additive bias [B|1,1,T,T] for padding and the streaming chunk mask; None when unneeded
        (``static``: always build the padding part, for tracing)."""
        cfg = self.config
        allowed = None
        if cfg.chunk_frames > 0:
            allowed = chunk_attention_allowed(t, cfg.chunk_frames, cfg.left_chunks, lengths.device)[None, None]
        if static or bool((lengths < t).any()):
            keys = lengths_to_mask(lengths, t)[:, None, None, :]
            allowed = keys if allowed is None else allowed & keys
        return None if allowed is None else bias_from_allowed(allowed, dtype)

    def _mask_time(self, x: Tensor, lengths: Tensor) -> Tensor:
        """SpecAugment-style time masking with the learned mask embedding (training only)."""
        cfg = self.config
        span = cfg.mask_time_length
        mask = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        for i, n in enumerate(lengths.tolist()):
            if n <= span:
                continue
            num = int(cfg.mask_time_prob * n / span + torch.rand(()).item())
            if num == 0:
                continue
            starts = torch.randint(0, n - span, (num,), device=x.device)
            idx = (starts[:, None] + torch.arange(span, device=x.device)[None]).flatten()
            mask[i, idx] = True
        return torch.where(mask[..., None], self.masked_spec_embed.to(x.dtype), x)

    def forward_features(self, feats: Tensor, lengths: Tensor, static: bool = False) -> W2V2Output:
        """Run projection, encoder and head on front-end features [B,T,C] with ``lengths`` frames
        (``static``: no data-dependent branches, for ONNX tracing)."""
        cfg = self.config
        b, t, _ = feats.shape
        lengths = torch.minimum(lengths, torch.full_like(lengths, t)) if static else lengths.clamp(max=t)
        x = self.feature_projection(feats)
        if self.training and cfg.mask_time_prob > 0:
            x = self._mask_time(x, lengths)
        valid = lengths_to_mask(lengths, t)
        if static or not bool(valid.all()):
            x = x * valid[..., None].to(x.dtype)  # padded frames must not reach the positional conv
        causal = cfg.causal_pos_conv
        x = self.encoder.embed(x, causal=causal)
        hidden = [x]
        bias = self.attention_bias(lengths, t, x.dtype, static)
        for layer in self.encoder.layers:
            if self.training and cfg.layerdrop > 0 and torch.rand(()).item() < cfg.layerdrop:
                hidden.append(x)
                continue
            x, _ = layer(x, bias)
            hidden.append(x)
        logits = self.lm_head(self.final_dropout(self.encoder.finish(x)))
        scores = torch.log_softmax(logits.float(), dim=-1).to(logits.dtype)
        return W2V2Output(scores=scores, lengths=lengths, hidden_states=hidden, features=feats)


def build_model(preset_or_config: "str | W2V2Config", vocab_size: int) -> W2V2Model:
    """A randomly initialised model from a preset name (see ``PRESETS``) or a config."""
    cfg = get_config(preset_or_config).replace(vocab_size=vocab_size)
    return W2V2Model(cfg)
