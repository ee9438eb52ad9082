"""wav2vec 2.0 encoder with a linear output layer (per-frame log-posteriors), written for this toolkit.

Numerics follow Hugging Face ``Wav2Vec2ForCTC`` in eval mode (both the post-LN "base" and the pre-LN
"stable layer norm" layouts), so imported checkpoints give the same outputs; parameter names follow
HF's module tree (without the ``wav2vec2.`` prefix) so that conversion is a rename. On top of that the
model has a Fbank front-end option (input distillation), a chunk-masked streaming mode with a causal
positional convolution, and exact masking of padded samples in the group-norm CNN.

The parts live in :mod:`.frontend` (CNN, Fbank, feature projection), :mod:`.encoder` (transformer,
attention masks) and :mod:`.functional`; this module assembles them and still exports their names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config import W2V2Config, conv_output_length, get_config
from .encoder import (
    Encoder,
    EncoderLayer,
    FeedForward,
    PositionalConvEmbedding,
    SelfAttention,
    WeightNormConv1d,
    bias_from_allowed,
    chunk_attention_allowed,
)
from .frontend import ConvLayer, FbankFrontend, FeatureEncoder, FeatureProjection
from .functional import activation, lengths_to_mask
from .wave_norm import running_norm, utterance_norm

__all__ = [
    "W2V2Model",
    "W2V2Output",
    "build_model",
    "activation",
    # the parts, importable from here as before they moved to .frontend / .encoder / .functional
    "ConvLayer",
    "Encoder",
    "EncoderLayer",
    "FbankFrontend",
    "FeatureEncoder",
    "FeatureProjection",
    "FeedForward",
    "PositionalConvEmbedding",
    "SelfAttention",
    "WeightNormConv1d",
    "bias_from_allowed",
    "chunk_attention_allowed",
    "lengths_to_mask",
]


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
        self, chunk_frames: int, left_chunks: int | None = None, causal_pos_conv: bool | None = None
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
    def _check_input(self, wave: Tensor, lengths: Tensor | None) -> Tensor:
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

    def normalize_wave(self, wave: Tensor, lengths: Tensor | None = None) -> Tensor:
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

    def forward(self, wave: Tensor, lengths: Tensor | None = None) -> W2V2Output:
        """wave [B,S] float (16 kHz, zero-padded), lengths [B] samples -> :class:`W2V2Output`."""
        lengths = self._check_input(wave, lengths)
        feats = self._frontend(wave, lengths)
        return self.forward_features(feats, self.output_lengths(lengths))

    def frontend_features(self, wave: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Front-end output [B,T,C] (``W2V2Output.features``) and output frame counts [B], without the
        encoder (e.g. for input distillation of the Fbank front-end)."""
        lengths = self._check_input(wave, lengths)
        return self._frontend(wave, lengths), self.output_lengths(lengths)

    def forward_fbank(self, fbank: Tensor, fbank_lengths: Tensor | None = None) -> W2V2Output:
        """Fbank-front-end models from precomputed fbank [B,N,80] (e.g. kaldi-native-fbank)."""
        if self.config.frontend != "fbank":
            raise ValueError("forward_fbank needs a model with frontend='fbank'")
        if fbank_lengths is None:
            fbank_lengths = torch.full((fbank.shape[0],), fbank.shape[1], dtype=torch.long, device=fbank.device)
        feats = self.fbank_frontend(fbank)
        out_len = torch.div(fbank_lengths - 1, 2, rounding_mode="floor") + 1
        out_len = torch.where(fbank_lengths > 0, out_len, torch.zeros_like(out_len))
        return self.forward_features(feats, out_len)

    def attention_bias(self, lengths: Tensor, t: int, dtype: torch.dtype, static: bool = False) -> Tensor | None:
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


def build_model(preset_or_config: str | W2V2Config, vocab_size: int) -> W2V2Model:
    """A randomly initialised model from a preset name (see ``PRESETS``) or a config."""
    cfg = get_config(preset_or_config).replace(vocab_size=vocab_size)
    return W2V2Model(cfg)
