"""The model's front-ends: the waveform CNN (with exact masking of padded samples in its group norm),
the Fbank front-end of input distillation, and the projection of their features to the encoder width."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from lhotse.features.kaldi.layers import Wav2LogFilterBank
from torch import Tensor, nn

from .config import W2V2Config
from .functional import activation, lengths_to_mask

__all__ = ["ConvLayer", "FeatureEncoder", "FbankFrontend", "FeatureProjection"]


class ConvLayer(nn.Module):
    """One CNN block: Conv1d, optional layer/group norm, activation."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, bias: bool, norm: str | None, act: str):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, stride=stride, bias=bias)
        self.norm_type = norm
        if norm == "layer":
            self.layer_norm = nn.LayerNorm(cout)
        elif norm == "group":
            self.layer_norm = nn.GroupNorm(cout, cout)
        self.act = activation(act)

    def forward(self, x: Tensor, out_lengths: Tensor | None = None, static: bool = False) -> Tensor:
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

    def forward(self, wave: Tensor, lengths: Tensor | None = None, static: bool = False) -> Tensor:
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
