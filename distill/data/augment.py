"""Masking augmentation: SpecAugment-style time/channel masks for [B, T, C] tensors, and waveform hooks.

:func:`mask_time_channels` is meant for features inside a model (CNN outputs, fbank). Waveform-level
augmentation plugs into the data loader as *hooks*: callables ``hook(audio [B,S], lengths [B]) ->
(audio, lengths)`` run on every collated batch (see :class:`WaveformTimeMask`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

WaveformHook = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


def _span_mask(
    batch: int, size: torch.Tensor, num: int, max_width: int, total: int, generator: torch.Generator | None
) -> torch.Tensor:
    """[batch, total] bool: ``num`` spans of width U{0..max_width} inside each row's first ``size[b]`` items."""
    if num <= 0 or max_width <= 0:
        return torch.zeros(batch, total, dtype=torch.bool)
    r1 = torch.rand(batch, num, generator=generator)
    r2 = torch.rand(batch, num, generator=generator)
    size = size.to(torch.long).clamp(min=0).unsqueeze(1)
    width = torch.minimum((r1 * (max_width + 1)).long(), size)
    start = (r2 * (size - width + 1).to(torch.float)).long()
    pos = torch.arange(total).view(1, 1, total)
    inside = (pos >= start.unsqueeze(-1)) & (pos < (start + width).unsqueeze(-1))
    return inside.any(dim=1)


def mask_time_channels(
    x: torch.Tensor,
    lengths: torch.Tensor | None = None,
    *,
    num_time_masks: int = 2,
    max_time_width: int = 10,
    num_channel_masks: int = 2,
    max_channel_width: int = 8,
    mask_value: float | torch.Tensor = 0.0,
    generator: torch.Generator | None = None,
    return_masks: bool = False,
):
    """SpecAugment-style masking of ``x`` [B, T, C] (not in place).

    Each sequence gets ``num_time_masks`` spans of U{0..max_time_width} frames inside its valid length
    (``lengths``, default T) and ``num_channel_masks`` spans of U{0..max_channel_width} channels.
    Masked frames take ``mask_value``: a scalar, or a [C] vector such as wav2vec 2.0's learned mask
    embedding (channel masks then use 0). With ``return_masks`` also returns the [B,T] and [B,C] masks.
    """
    if x.dim() != 3:
        raise ValueError(f"mask_time_channels expects [B, T, C], got shape {tuple(x.shape)}")
    B, T, C = x.shape
    if lengths is None:
        lengths = torch.full((B,), T, dtype=torch.long)
    tmask = _span_mask(B, lengths.cpu(), num_time_masks, max_time_width, T, generator).to(x.device)
    cmask = _span_mask(B, torch.full((B,), C), num_channel_masks, max_channel_width, C, generator).to(x.device)
    value = torch.as_tensor(mask_value, dtype=x.dtype, device=x.device)
    out = torch.where(tmask.unsqueeze(-1), value.expand(C) if value.dim() else value, x)
    cvalue = value if value.dim() == 0 else torch.zeros((), dtype=x.dtype, device=x.device)
    out = torch.where(cmask.unsqueeze(1), cvalue, out)
    if return_masks:
        return out, tmask, cmask
    return out


class WaveformTimeMask:
    """Waveform hook: zero ``num_masks`` random stretches of up to ``max_seconds`` in each utterance."""

    def __init__(self, num_masks: int = 2, max_seconds: float = 0.2, sampling_rate: int = 16000, seed: int = 0) -> None:
        self.num_masks = num_masks
        self.max_width = int(max_seconds * sampling_rate)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = mask_time_channels(
            audio.unsqueeze(-1),
            lengths,
            num_time_masks=self.num_masks,
            max_time_width=self.max_width,
            num_channel_masks=0,
            generator=self.generator,
        )
        return out.squeeze(-1), lengths
