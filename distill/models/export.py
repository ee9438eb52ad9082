"""Deployment forms of a model: ONNX (full utterance and streaming chunk step) and dynamic int8.

* :func:`export_onnx`: ``wave [B,S], lengths [B] -> scores [B,T,V], out_lengths [B]`` (Fbank
  front-end: ``fbank [B,N,80], fbank_lengths [B]``; fbank is computed outside the graph, e.g. with
  kaldi-native-fbank, as a C++ runtime would).
* :func:`export_streaming_onnx`: the :class:`~distill.models.streaming.StreamingStep` function
  ``(x, *state) -> (scores, *new_state)``; :class:`OnnxStreamingStep` runs it in onnxruntime and
  plugs into :class:`~distill.models.streaming.StreamingRecognizer`.
* :func:`quantize_torch` / :func:`quantize_onnx`: post-training dynamic int8 quantization of the
  Linear layers (Shrinking Bigfoot), with torch and with onnxruntime.

The legacy TorchScript-based exporter is used (``dynamo=False``): it needs no extra package.
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .streaming import StreamingStep
from .wav2vec2 import W2V2Model

__all__ = [
    "export_onnx",
    "export_streaming_onnx",
    "OnnxStreamingStep",
    "onnx_session",
    "run_onnx",
    "quantize_torch",
    "quantize_onnx",
]

OPSET = 17


class _Offline(nn.Module):
    """Branch-free full-utterance forward for tracing."""

    def __init__(self, model: W2V2Model):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        m = self.model
        cfg = m.config
        if cfg.frontend == "fbank":
            feats = m.fbank_frontend(x)
            out_len = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
            out_len = torch.where(lengths > 0, out_len, torch.zeros_like(out_len))
        else:
            gn = lengths if (cfg.feat_extract_norm == "group" and cfg.mask_group_norm) else None
            feats = m.feature_extractor(m.normalize_wave(x, lengths), gn, static=True).transpose(1, 2)
            out_len = m.output_lengths(lengths)
        o = m.forward_features(feats, out_len, static=True)
        return o.scores, o.lengths


def _quiet_export(module: nn.Module, args: tuple, path: Path, **kw) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=OPSET, do_constant_folding=True, **kw)


def export_onnx(model: W2V2Model, path: str | Path, example_seconds: float = 2.0) -> Path:
    """Export the full-utterance model (eval mode, float32) to ONNX; returns the path."""
    model = model.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(example_seconds * 16000)
    if model.config.frontend == "fbank":
        x = torch.randn(2, (n - 400) // 160 + 1, model.config.fbank_num_mel_bins)
        names = ["fbank", "fbank_lengths"]
    else:
        x = torch.randn(2, n) * 0.1
        names = ["wave", "lengths"]
    lengths = torch.tensor([x.shape[1], x.shape[1] - 7], dtype=torch.long)
    _quiet_export(
        _Offline(model).eval(),
        (x, lengths),
        path,
        input_names=names,
        output_names=["scores", "out_lengths"],
        dynamic_axes={
            names[0]: {0: "B", 1: "S"},
            names[1]: {0: "B"},
            "scores": {0: "B", 1: "T"},
            "out_lengths": {0: "B"},
        },
    )
    return path


def export_streaming_onnx(
    model: W2V2Model, path: str | Path, chunk_frames: int = 24, left_chunks: int | None = None
) -> Path:
    """Export one streaming chunk step (see :class:`StreamingStep`) to ONNX; returns the path.

    Inputs: ``x`` then the state tensors named by ``StreamingStep.state_names()``; outputs
    ``scores`` then ``new_<state>``. With unbounded left context the cache's time axis is dynamic."""
    model = model.eval()
    step = StreamingStep(model, chunk_frames, left_chunks).eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    if step.fbank:
        x = torch.randn(1, 2 * chunk_frames, cfg.fbank_num_mel_bins)
    else:
        x = torch.randn(1, chunk_frames * cfg.frame_shift + cfg.receptive_field - cfg.frame_shift) * 0.1
    state = step.init_state(1)
    if left_chunks is None:
        # trace with a non-empty cache so that the concatenation is recorded with a dynamic length
        with torch.no_grad():
            state = list(step(x, *state)[1:])
    names = step.state_names()
    dyn = {"x": {1: "S"}, "scores": {1: "T"}}
    if left_chunks is None:
        dyn["kv_cache"] = {4: "Tc"}
        dyn["new_kv_cache"] = {4: "Tc_new"}
    _quiet_export(
        step,
        (x, *state),
        path,
        input_names=["x", *names],
        output_names=["scores", *[f"new_{n}" for n in names]],
        dynamic_axes=dyn,
    )
    return path


def onnx_session(path: str | Path, threads: int = 1):
    """An onnxruntime CPU session with ``threads`` intra-op threads (0 = onnxruntime's default)."""
    import onnxruntime as ort  # optional heavy dependency (extra "onnx"): imported only when a session is made

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_onnx(session, *inputs: Tensor) -> list[Tensor]:
    """Run ``session`` on torch tensors (in input order); returns torch tensors."""
    feeds = {i.name: x.detach().cpu().numpy() for i, x in zip(session.get_inputs(), inputs)}
    return [torch.from_numpy(np.asarray(o)) for o in session.run(None, feeds)]


class OnnxStreamingStep:
    """Drop-in replacement of :class:`StreamingStep` running an exported step in onnxruntime."""

    def __init__(self, torch_step: StreamingStep, path: str | Path, threads: int = 1):
        self.torch_step = torch_step
        self.session = onnx_session(path, threads)
        self.fbank = torch_step.fbank
        self.cache_frames = torch_step.cache_frames

    def init_state(self, batch: int = 1, device=None, dtype: torch.dtype = torch.float32) -> list[Tensor]:
        return self.torch_step.init_state(batch, "cpu", torch.float32)

    def __call__(self, x: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        return tuple(run_onnx(self.session, x.float(), *state))


def quantize_torch(model: W2V2Model) -> W2V2Model:
    """A copy of ``model`` with dynamic int8 Linear layers (``torch.ao.quantization.quantize_dynamic``;
    CPU inference only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def quantize_onnx(src: str | Path, dst: str | Path) -> Path:
    """Dynamic int8 quantization of an ONNX model's MatMul/Gemm weights (onnxruntime)."""
    # optional heavy dependency (extra "onnx"): imported only when an ONNX model is quantized
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)  # onnxruntime logs every tensor it skips on the root logger
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    return dst
