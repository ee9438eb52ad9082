"""Model configuration of the wav2vec 2.0 family and the named presets.

Field names follow Hugging Face's ``Wav2Vec2Config`` where a field exists there, so that a
``config.json`` maps onto :class:`W2V2Config` one to one; the toolkit's own options (front-end,
streaming, group-norm masking) are extra fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["W2V2Config", "PRESETS", "conv_output_length", "get_config"]

_W2V2_KERNELS = (10, 3, 3, 3, 3, 2, 2)
_W2V2_STRIDES = (5, 2, 2, 2, 2, 2, 2)


@dataclass
class W2V2Config:
    """Architecture of a wav2vec 2.0 CTC/LF-MMI model (encoder + linear head over ``vocab_size`` units).

    ``do_stable_layer_norm=True`` is the pre-LN ("large"/"lv60") layer layout with a final layer norm;
    ``False`` is the post-LN ("base") layout with a layer norm after the positional convolution.
    ``feat_extract_norm="group"`` normalises the first CNN layer over the whole utterance (cannot
    stream); ``"layer"`` normalises each frame (streams).
    """

    vocab_size: int = 32
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    do_stable_layer_norm: bool = False
    # waveform CNN
    conv_dim: tuple[int, ...] = (512,) * 7
    conv_kernel: tuple[int, ...] = _W2V2_KERNELS
    conv_stride: tuple[int, ...] = _W2V2_STRIDES
    conv_bias: bool = False
    feat_extract_norm: Literal["group", "layer"] = "group"
    feat_extract_activation: str = "gelu"
    # convolutional positional embedding
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    # regularisation (active in train mode only)
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    feat_proj_dropout: float = 0.0
    final_dropout: float = 0.0
    layerdrop: float = 0.0
    mask_time_prob: float = 0.0
    mask_time_length: int = 10
    # --- toolkit options (not in HF's config) ---
    frontend: Literal["cnn", "fbank"] = "cnn"
    fbank_num_mel_bins: int = 80
    fbank_channels: int = 64
    # padded samples do not leak into valid frames through the group norm (HF does not mask it)
    mask_group_norm: bool = True
    # streaming: chunk size in output frames (0 = full attention), left context in chunks (None = all)
    chunk_frames: int = 0
    left_chunks: int | None = None
    causal_pos_conv: bool = False
    # waveform scaling before the CNN: "none" feeds samples as read; "utterance" scales each utterance's
    # valid samples to zero mean / unit variance (HF's Wav2Vec2FeatureExtractor with do_normalize, what
    # lv60 checkpoints expect; needs the whole utterance, so it cannot stream); "fixed" applies
    # (x - wave_mean) / wave_std with constants estimated on training data (causal, streams);
    # "running" scales each 20 ms block by the statistics of the samples before it plus a prior of
    # wave_prior_s seconds at (wave_mean, wave_std) (causal, streams; the stand-in for "utterance" that
    # students of lv60-style teachers get; distill.models.wave_norm)
    wave_norm: Literal["none", "utterance", "fixed", "running"] = "none"
    wave_mean: float = 0.0
    wave_std: float = 1.0
    wave_prior_s: float = 0.1

    def __post_init__(self) -> None:
        self.conv_dim = tuple(int(c) for c in self.conv_dim)
        self.conv_kernel = tuple(int(k) for k in self.conv_kernel)
        self.conv_stride = tuple(int(s) for s in self.conv_stride)
        if not (len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride)):
            raise ValueError(
                f"conv_dim, conv_kernel and conv_stride must have equal lengths, got "
                f"{len(self.conv_dim)}, {len(self.conv_kernel)}, {len(self.conv_stride)}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_conv_pos_embedding_groups "
                f"{self.num_conv_pos_embedding_groups}"
            )
        if self.feat_extract_norm not in ("group", "layer"):
            raise ValueError(f"feat_extract_norm must be 'group' or 'layer', got {self.feat_extract_norm!r}")
        if self.frontend not in ("cnn", "fbank"):
            raise ValueError(f"frontend must be 'cnn' or 'fbank', got {self.frontend!r}")
        if self.wave_norm not in ("none", "utterance", "fixed", "running"):
            raise ValueError(f"wave_norm must be 'none', 'utterance', 'fixed' or 'running', got {self.wave_norm!r}")
        if not self.wave_std > 0:
            raise ValueError(f"wave_std must be > 0, got {self.wave_std}")
        if not self.wave_prior_s > 0:
            raise ValueError(f"wave_prior_s must be > 0, got {self.wave_prior_s}")
        if self.wave_norm == "utterance" and self.chunk_frames > 0:
            raise ValueError(
                "wave_norm 'utterance' needs the whole utterance and cannot stream (chunk_frames > 0): "
                "use wave_norm 'running' (causal running normalisation) with the training data's "
                "wave_mean/wave_std as its prior"
            )
        if self.chunk_frames < 0:
            raise ValueError(f"chunk_frames must be >= 0, got {self.chunk_frames}")
        if self.left_chunks is not None and self.left_chunks < 0:
            raise ValueError(f"left_chunks must be >= 0 or None, got {self.left_chunks}")
        if self.vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {self.vocab_size}")

    @property
    def feature_dim(self) -> int:
        """Width C of the front-end output (``W2V2Output.features``)."""
        return self.conv_dim[-1]

    @property
    def receptive_field(self) -> int:
        """Samples one output frame sees (400 for the standard CNN)."""
        rf = 1
        for k, s in zip(reversed(self.conv_kernel), reversed(self.conv_stride)):
            rf = (rf - 1) * s + k
        return rf

    @property
    def frame_shift(self) -> int:
        """Samples between output frames (320 = 20 ms at 16 kHz for the standard CNN)."""
        hop = 1
        for s in self.conv_stride:
            hop *= s
        return hop

    @property
    def streaming(self) -> bool:
        return self.chunk_frames > 0

    def replace(self, **changes) -> W2V2Config:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("conv_dim", "conv_kernel", "conv_stride"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> W2V2Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown W2V2Config keys: {', '.join(unknown)}")
        return cls(**d)


def conv_output_length(lengths, config: W2V2Config):
    """Output frames for ``lengths`` input samples (int or LongTensor); 0 when shorter than one window.

    Both front-ends give ``floor((S - receptive_field) / frame_shift) + 1`` frames for the standard
    CNN geometry; the layer-by-layer formula below is exact for any kernel/stride list.
    """
    if isinstance(lengths, torch.Tensor):
        out = lengths.clone().long()
        for k, s in zip(config.conv_kernel, config.conv_stride):
            out = torch.div(out - k, s, rounding_mode="floor") + 1
        return out.clamp(min=0)
    out = int(lengths)
    for k, s in zip(config.conv_kernel, config.conv_stride):
        out = (out - k) // s + 1
    return max(out, 0)


def _encoder(layers: int, dim: int, ffn: int, heads: int, **kw) -> W2V2Config:
    return W2V2Config(hidden_size=dim, num_hidden_layers=layers, intermediate_size=ffn, num_attention_heads=heads, **kw)


# Students use the teacher's layout (stable layer norm, layer-norm CNN with bias) so that the CNN can be
# copied and so that they can stream.
_LARGE_CNN = dict(feat_extract_norm="layer", conv_bias=True, do_stable_layer_norm=True)
_REDUCED_CNN = dict(_LARGE_CNN, conv_dim=(256,) * 7)
# the default stage-1 student's front-end: 128 channels in the two layers that run at the highest rates
# (3.2 and 1.6 kHz; the first sees only 10 samples per frame), then 256; CPU time 0.15 s per 10 s of audio
# against 0.31 s (7 x 256) and 1.04 s (7 x 512)
_LIGHT_CNN = dict(_LARGE_CNN, conv_dim=(128, 128) + (256,) * 5)
_DEMO_CNN = dict(_LARGE_CNN, conv_dim=(32, 64, 64, 128, 128, 128, 128))

PRESETS: dict[str, W2V2Config] = {
    # Baevski et al. 2020 "base": group-norm CNN, post-LN encoder (95 M)
    "w2v2-base": _encoder(12, 768, 3072, 12, feat_extract_norm="group", conv_bias=False, do_stable_layer_norm=False),
    # the paper's 317 M teacher (lv60 layout): layer-norm CNN, pre-LN encoder
    "w2v2-large": _encoder(24, 1024, 4096, 16, **_LARGE_CNN),
    "student-12x768": _encoder(12, 768, 3072, 12, **_LARGE_CNN),
    "student-12x512": _encoder(12, 512, 2048, 8, **_LARGE_CNN),
    "student-12x384": _encoder(12, 384, 1536, 6, **_LARGE_CNN),
    "student-10x384": _encoder(10, 384, 1536, 6, **_LARGE_CNN),
    "student-10x384-rcnn": _encoder(10, 384, 1536, 6, **_REDUCED_CNN),
    # the recipes' default stage-1 student: the paper's 12x smaller / 8x faster needs a lighter CNN than
    # the teacher's (7 x 512 channels cost more than this whole 12 x 384 transformer); 13.4x smaller,
    # 9.8-11.4x faster than w2v2-large (fp32, 1 thread; README Benchmarks). Its CNN cannot be copied from
    # the teacher's and starts fresh.
    "student-12x384-cnn128-256": _encoder(12, 384, 1536, 6, **_LIGHT_CNN),
    # input distillation (Wang et al. 2022): Fbank + conv subsampler replaces the waveform CNN; its
    # 512-dim output is regressed onto the teacher's CNN features
    "student-10x384-fbank": _encoder(10, 384, 1536, 6, **dict(_LARGE_CNN, frontend="fbank")),
    "student-12x384-fbank": _encoder(12, 384, 1536, 6, **dict(_LARGE_CNN, frontend="fbank")),
    # CPU demo sizes: 5.5 M teacher, 0.61 M student (9x fewer parameters; the student copies the
    # teacher's CNN). A narrow, widening CNN keeps the waveform front-end cheap (4.6x faster training
    # steps than 7 x 256 channels); no attention dropout, which forces the slow SDPA path on CPU.
    "demo-teacher": _encoder(6, 256, 1024, 4, attention_dropout=0.0, **_DEMO_CNN),
    "demo-student": _encoder(3, 96, 384, 4, attention_dropout=0.0, **_DEMO_CNN),
}


def get_config(preset_or_config: str | W2V2Config) -> W2V2Config:
    """Resolve a preset name (a copy) or pass a config through."""
    if isinstance(preset_or_config, W2V2Config):
        return preset_or_config
    if preset_or_config not in PRESETS:
        raise KeyError(f"unknown model preset {preset_or_config!r}; known: {', '.join(sorted(PRESETS))}")
    return dataclasses.replace(PRESETS[preset_or_config])
