"""Waveform scaling before the CNN (``W2V2Config.wave_norm``): one home for the three streamable and
non-streamable forms, used by the full forward, the streaming step and the ONNX exports.

* ``utterance``: each utterance's valid samples to zero mean / unit variance (HF's feature extractor
  with ``do_normalize``, what lv60 checkpoints expect). Needs the whole utterance: cannot stream.
* ``fixed``: ``(x - wave_mean) / wave_std`` with constants estimated on training data. Streams.
* ``running``: causal running normalisation, the streaming stand-in for ``utterance``. Samples are
  grouped in blocks of 320 (20 ms, one output frame) from the start of the stream; block ``b`` is
  scaled by the mean and variance of every sample of blocks ``< b`` plus a prior of ``wave_prior_s``
  seconds of samples at (``wave_mean``, ``wave_std``). As the stream goes on it tends to the
  per-utterance statistics the teacher uses; it needs no look-ahead, so a chunk step computes it
  exactly from three running sums (:func:`running_norm` with ``state``).

Why ``running`` is the default for students of per-utterance teachers: measured with
``python -m distill.bin.bench_wave_norm`` (docs/models.md), it keeps a trained model's outputs far
closer to the per-utterance reference than fixed constants, most of all when recordings differ in level.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["BLOCK", "utterance_norm", "running_norm", "running_state"]

BLOCK = 320  # samples per block of the running statistics (20 ms at 16 kHz)


def _valid_mask(x: Tensor, lengths: Tensor | None) -> Tensor:
    if lengths is None:
        return torch.ones_like(x)
    return (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).to(x.dtype)


def utterance_norm(wave: Tensor, lengths: Tensor | None = None) -> Tensor:
    """Zero mean / unit variance over each row's first ``lengths`` samples (all without lengths);
    padding set to 0; variance + 1e-7 under the square root, as HF's feature extractor does."""
    x = wave.float()
    m = _valid_mask(x, lengths)
    n = m.sum(1, keepdim=True).clamp(min=1.0)
    mean = (x * m).sum(1, keepdim=True) / n
    var = (((x - mean) * m) ** 2).sum(1, keepdim=True) / n
    return ((x - mean) * torch.rsqrt(var + 1e-7) * m).to(wave.dtype)


def running_state(batch: int, device=None) -> Tensor:
    """The running sums of an empty stream: [B, 3] float64 (sum, sum of squares, count of samples)."""
    return torch.zeros(batch, 3, dtype=torch.float64, device=device)


def running_norm(
    wave: Tensor,
    mean: float,
    std: float,
    prior_s: float,
    block: int = BLOCK,
    lengths: Tensor | None = None,
    state: Tensor | None = None,
    keep: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Causal running normalisation of ``wave`` [B, S] (see the module docstring) in blocks of ``block``
    samples (the model's frame shift, so that every chunk of a stream starts on a block boundary).

    ``wave`` starts on a block boundary; ``state`` [B, 3] holds the sums of the stream's earlier
    samples (none: the stream starts here). Returns the scaled samples (padding beyond ``lengths`` set
    to 0) and the state after the first ``keep`` samples (default all valid ones), which a streaming
    step passes to its next call when its input overlaps the next one's."""
    x = wave.double()
    m = _valid_mask(x, lengths)
    xm = x * m
    # exclusive prefix sums at each sample's block start: blocks before the sample's own block
    s = torch.nn.functional.pad(torch.stack([xm, xm * xm, m], dim=-1).cumsum(1), (0, 0, 1, 0))  # [B, S+1, 3]
    pos = torch.arange(x.shape[1], device=x.device)
    start = pos - torch.remainder(pos, block)
    sums = s[:, start]  # [B, S, 3]
    n0 = prior_s * 16000.0
    prior = torch.tensor([n0 * mean, n0 * (std * std + mean * mean), n0], dtype=torch.float64, device=x.device)
    tot = sums + prior
    if state is not None:
        tot = tot + state[:, None, :]
    mu = tot[..., 0] / tot[..., 2]
    var = (tot[..., 1] / tot[..., 2] - mu * mu).clamp(min=1e-10)
    y = ((x - mu) * torch.rsqrt(var) * m).to(wave.dtype)
    end = s[:, -1] if keep is None else s[:, keep]
    new_state = end if state is None else state + end
    return y, new_state
