"""The offline student in the form sherpa-onnx runs as an *Omnilingual ASR CTC* model
(``sherpa_onnx.OfflineRecognizer.from_omnilingual_asr_ctc``): one input, raw 16 kHz samples.

What sherpa-onnx does with such a model (``offline-omnilingual-asr-ctc-model.cc`` and
``offline-recognizer-ctc-impl.h``, sherpa-onnx 2.0.1): it collects an utterance's float samples
``x`` (no fbank, no int16 scaling), normalises them itself, ``y = (x - m) / sqrt(v + 1e-5)`` with the
utterance's mean ``m`` and population variance ``v = E[x^2] - m^2`` (float32), feeds ``y`` as the only
input ``[1, S]`` (one utterance at a time), takes output 0 as log-probabilities ``[N, T, V]`` (``V``
read from the output shape, so it must be static), decodes it greedily with blank id 0 (``<blk>``) and
spells tokens from ``tokens.txt`` (``▁`` becomes a space). It reads no metadata.

The graph therefore starts from ``y``, never from ``x``. :func:`export_sherpa_onnx` undoes the
runtime's epsilon from ``y`` alone: ``y``'s own variance is ``s = v / (v + 1e-5)``, and
``(y - mean(y)) / sqrt(s (1 - r) + r) = (x - m) / sqrt(v + r * 1e-5)`` for any ``r``. Then, by the
model's ``wave_norm``:

* ``utterance``: ``r = 0.01`` gives ``(x - m) / sqrt(v + 1e-7)``, exactly the model's own per-utterance
  scaling (:func:`~distill.models.wave_norm.utterance_norm`): sherpa-onnx gives the model's output.
  (An error of the runtime's float32 variance is damped by ``r`` as well.)
* ``fixed``, ``running``, ``none``: the utterance's level (``m``, ``v``) is lost before the graph sees
  it, so the model's scaling of ``x`` cannot be reproduced. The graph re-levels the utterance to the
  training data's constants, ``w = (x - m) / sqrt(v) * wave_std + wave_mean`` (``r = 1e-7``, i.e.
  ``v + 1e-12``), and applies the model's own scaling to ``w``. The result equals the model's output on
  ``x`` exactly when ``x`` already has mean ``wave_mean`` and standard deviation ``wave_std`` (then
  ``w = x``); for any other utterance it equals the model's output on the re-levelled ``w`` (for
  ``fixed`` that is ``(x - m) / sqrt(v)``, i.e. per-utterance instead of fixed scaling; for ``none``,
  ``wave_mean = 0`` and ``wave_std = 1``).

The Fbank front-end computes its features outside the graph with kaldi-native-fbank and has no sherpa-onnx
form here (sherpa-onnx's fbank models expect other fbank options): :class:`SherpaExportError`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from .export import _quiet_export
from .wav2vec2 import W2V2Model

__all__ = ["SHERPA_EPS", "SherpaExportError", "SherpaOffline", "export_sherpa_onnx", "sherpa_scaling_note"]

SHERPA_EPS = 1e-5  # sherpa-onnx's epsilon under the square root (OfflineOmnilingualAsrCtcModel)
UTTERANCE_EPS = 1e-7  # ours and HF's (distill.models.wave_norm.utterance_norm)
RELEVEL_EPS = 1e-12  # re-levelling: (x - m) / sqrt(v + 1e-12)


class SherpaExportError(ValueError):
    """A model that has no sherpa-onnx form."""


def sherpa_scaling_note(wave_norm: str, mean: float = 0.0, std: float = 1.0) -> str:
    """One sentence for the model card: how sherpa-onnx's output relates to the model's."""
    if wave_norm == "utterance":
        return (
            "exact: sherpa-onnx's per-utterance normalisation (eps 1e-5) is turned into the model's own "
            "(eps 1e-7) inside the graph"
        )
    return (
        f"the model scales its input with wave_norm='{wave_norm}', which depends on the utterance's level; "
        "sherpa-onnx removes that level before the graph sees the samples, so the graph re-levels each "
        f"utterance to mean {mean:g} / standard deviation {std:g} (the training constants) and then applies "
        "the model's scaling: equal to the model exactly for utterances with that mean and standard "
        "deviation, otherwise equal to the model on the re-levelled utterance"
    )


class SherpaOffline(nn.Module):
    """``y [1, S]`` (samples normalised by sherpa-onnx) -> ``logits [1, T, V]`` (log-probabilities)."""

    def __init__(self, model: W2V2Model):
        super().__init__()
        cfg = model.config
        if cfg.frontend != "cnn":
            raise SherpaExportError(
                "the Fbank front-end has no sherpa-onnx form (its fbank is computed outside the graph); "
                "use the onnxruntime export (offline.onnx, fbank input)"
            )
        self.model = model
        self.utterance = cfg.wave_norm == "utterance"
        eps = UTTERANCE_EPS if self.utterance else RELEVEL_EPS
        self.r = eps / SHERPA_EPS

    def forward(self, y: Tensor) -> Tensor:
        m = self.model
        cfg = m.config
        y = y.float()
        mean = y.mean(1, keepdim=True)
        d = y - mean
        s = (d * d).mean(1, keepdim=True)
        u = d * torch.rsqrt(s * (1.0 - self.r) + self.r)  # (x - m) / sqrt(v + r * SHERPA_EPS)
        lengths = torch.ones_like(y, dtype=torch.long).sum(1)
        if self.utterance:
            scaled = u
        else:
            scaled = m.normalize_wave(u * cfg.wave_std + cfg.wave_mean, lengths)
        feats = m.feature_extractor(scaled, None, static=True).transpose(1, 2)
        return m.forward_features(feats, m.output_lengths(lengths), static=True).scores


def export_sherpa_onnx(model: W2V2Model, path: str | Path, example_seconds: float = 2.0) -> Path:
    """Export ``model`` (eval mode, float32) as a sherpa-onnx Omnilingual-ASR-CTC model: input ``x``
    ``[1, S]``, output ``logits`` ``[1, T, V]`` (see the module docstring); returns the path."""
    model = model.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.randn(1, int(example_seconds * 16000)) * 0.1
    _quiet_export(
        SherpaOffline(model).eval(),
        (x,),
        path,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {1: "S"}, "logits": {1: "T"}},
    )
    return path
