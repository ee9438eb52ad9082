"""The wav2vec 2.0 model family: teacher, students, streaming, import/export.

Public API: :class:`W2V2Config`, :data:`PRESETS`, :func:`build_model`, :class:`W2V2Model`,
:class:`W2V2Output`, :func:`load_pretrained`, :func:`save_pretrained`, :func:`make_student`.
Streaming lives in :mod:`distill.models.streaming`, deployment (ONNX, int8) in
:mod:`distill.models.export`. Import and export of checkpoints: :mod:`distill.models.checkpoint` (the
entry point), :mod:`distill.models.hf_format`, :mod:`distill.models.fairseq_import`,
:mod:`distill.models.state_dicts`; reading pickles safely is :mod:`distill.safe_load`'s job.
"""

from .checkpoint import CheckpointError, load_pretrained, save_pretrained
from .config import PRESETS, W2V2Config, conv_output_length, get_config
from .student import make_student, teacher_layer_for
from .wav2vec2 import W2V2Model, W2V2Output, build_model

__all__ = [
    "PRESETS",
    "CheckpointError",
    "W2V2Config",
    "W2V2Model",
    "W2V2Output",
    "build_model",
    "conv_output_length",
    "get_config",
    "load_pretrained",
    "make_student",
    "save_pretrained",
    "teacher_layer_for",
]
