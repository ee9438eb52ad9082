"""Hugging Face wav2vec 2.0 directories: :func:`load_hf_dir` reads one, :func:`save_pretrained` writes one.

A directory holds ``config.json`` (:func:`config_from_hf` / :func:`config_to_hf`; our own settings under
its ``"distill"`` key), the weights as ``model.safetensors`` or ``pytorch_model.bin`` (sharded or not, with
their ``*.index.json``) and optionally ``preprocessor_config.json`` (whether inputs are normalised per
utterance). What :func:`save_pretrained` writes, ``transformers.Wav2Vec2ForCTC`` loads.

For plain transformers (:mod:`distill.models.package`): :func:`hf_incompatibility` says why HF would
compute something else than this model (streaming students), :func:`fold_fixed_wave_norm` moves the
"fixed" input scaling into the first convolution, and :func:`write_hf_tokenizer` writes the token
files (``tokenizer.json`` & co.) whose decoding reproduces :meth:`distill.data.Tokenizer.decode`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from distill.data.tokenizer import BLANK, SOS_EOS, UNK, WORD_BOUNDARY
from distill.safe_load import CheckpointError, load_with_config_stubs

from .config import W2V2Config
from .state_dicts import HF_PRETRAIN_ONLY, hf_to_ours, load_state_dict_into, ours_to_hf_key
from .wav2vec2 import W2V2Model

__all__ = [
    "load_hf_dir",
    "save_pretrained",
    "config_from_hf",
    "config_to_hf",
    "fold_fixed_wave_norm",
    "hf_incompatibility",
    "write_hf_tokenizer",
]

log = logging.getLogger(__name__)

_HF_DEFAULTS = dict(
    vocab_size=32,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
    do_stable_layer_norm=False,
    conv_dim=(512, 512, 512, 512, 512, 512, 512),
    conv_kernel=(10, 3, 3, 3, 3, 2, 2),
    conv_stride=(5, 2, 2, 2, 2, 2, 2),
    conv_bias=False,
    feat_extract_norm="group",
    feat_extract_activation="gelu",
    num_conv_pos_embeddings=128,
    num_conv_pos_embedding_groups=16,
    hidden_dropout=0.1,
    attention_dropout=0.1,
    activation_dropout=0.1,
    feat_proj_dropout=0.0,
    final_dropout=0.1,
    layerdrop=0.1,
    mask_time_prob=0.05,
    mask_time_length=10,
)


def config_from_hf(d: dict, source: str) -> W2V2Config:
    """W2V2Config from a HF ``config.json`` dict (HF defaults for absent keys)."""
    mt = d.get("model_type")
    if mt != "wav2vec2":
        raise CheckpointError(f"{source}: model_type is {mt!r}, expected 'wav2vec2' (another architecture)")
    for key, ok in (("add_adapter", False), ("adapter_attn_dim", None), ("use_weighted_layer_sum", False)):
        if d.get(key, ok) not in (ok, None) and key != "use_weighted_layer_sum":
            raise CheckpointError(f"{source}: unsupported wav2vec2 option {key}={d[key]!r}")
    if d.get("num_feat_extract_layers", len(d.get("conv_dim", _HF_DEFAULTS["conv_dim"]))) != len(
        d.get("conv_dim", _HF_DEFAULTS["conv_dim"])
    ):
        raise CheckpointError(f"{source}: num_feat_extract_layers does not match conv_dim")
    kw = {k: d.get(k, v) for k, v in _HF_DEFAULTS.items()}
    if not d.get("apply_spec_augment", True):
        kw["mask_time_prob"] = 0.0
    extra = d.get("distill") or {}
    known = {
        "frontend",
        "fbank_num_mel_bins",
        "fbank_channels",
        "mask_group_norm",
        "chunk_frames",
        "left_chunks",
        "causal_pos_conv",
        "wave_norm",
        "wave_mean",
        "wave_std",
        "wave_prior_s",
    }
    bad = sorted(set(extra) - known)
    if bad:
        raise CheckpointError(f"{source}: unknown 'distill' config keys: {', '.join(bad)}")
    kw.update(extra)
    try:
        return W2V2Config(**kw)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: invalid wav2vec2 config: {e}") from None


def config_to_hf(cfg: W2V2Config, dtype: torch.dtype = torch.float32) -> dict:
    """The HF ``config.json`` dict of ``cfg`` (our own settings under ``"distill"``).

    ``dtype`` is the storage type of the weights; the config always says ``"dtype": "float32"``, the
    type the model computes in: transformers (>= 5 loads with ``dtype="auto"``, i.e. the config's
    type) then loads float16-stored weights as float32, as :func:`load_hf_dir` does, instead of
    silently running in half precision. Pass ``dtype=torch.float16`` to ``from_pretrained`` for that."""
    del dtype  # the storage type is the safetensors' own; see the docstring
    d = {
        "architectures": ["Wav2Vec2ForCTC"],
        "model_type": "wav2vec2",
        "num_feat_extract_layers": len(cfg.conv_dim),
        "apply_spec_augment": cfg.mask_time_prob > 0,
        "mask_feature_prob": 0.0,
        "pad_token_id": 0,
        "ctc_loss_reduction": "sum",
        "dtype": "float32",
    }
    for k in _HF_DEFAULTS:
        v = getattr(cfg, k)
        d[k] = list(v) if isinstance(v, tuple) else v
    d["distill"] = {
        "frontend": cfg.frontend,
        "fbank_num_mel_bins": cfg.fbank_num_mel_bins,
        "fbank_channels": cfg.fbank_channels,
        "mask_group_norm": cfg.mask_group_norm,
        "chunk_frames": cfg.chunk_frames,
        "left_chunks": cfg.left_chunks,
        "causal_pos_conv": cfg.causal_pos_conv,
        "wave_norm": cfg.wave_norm,
        "wave_mean": cfg.wave_mean,
        "wave_std": cfg.wave_std,
        "wave_prior_s": cfg.wave_prior_s,
    }
    return d


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    """A safetensors file's tensors; :class:`CheckpointError` naming the file when it is missing,
    truncated or not safetensors (the library's own error names no file)."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot read the weights (truncated or not a safetensors file?): {e}") from None


def _read_hf_weights(path: Path) -> dict[str, Tensor]:
    st, bin_ = path / "model.safetensors", path / "pytorch_model.bin"
    for index in (path / "model.safetensors.index.json", path / "pytorch_model.bin.index.json"):
        if index.exists():
            try:
                files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise CheckpointError(f"{index}: not a valid weight index ({type(e).__name__}: {e})") from None
            sd: dict[str, Tensor] = {}
            for f in files:
                fp = path / f
                sd.update(
                    _load_safetensors(fp)
                    if f.endswith(".safetensors")
                    else _as_state_dict(load_with_config_stubs(fp), fp)
                )
            return sd
    if st.exists():
        return _load_safetensors(st)
    if bin_.exists():
        return _as_state_dict(load_with_config_stubs(bin_), bin_)
    raise CheckpointError(f"{path}: no model.safetensors or pytorch_model.bin in the directory")


def _as_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return obj


def _hf_do_normalize(path: Path) -> bool:
    """Whether the directory's ``preprocessor_config.json`` (HF feature extractor) normalises each
    utterance (``do_normalize``, true for lv60 checkpoints); False without the file."""
    f = path / "preprocessor_config.json"
    if not f.is_file():
        return False
    try:
        return bool(json.loads(f.read_text()).get("do_normalize", True))
    except (json.JSONDecodeError, AttributeError) as e:
        raise CheckpointError(f"{f}: invalid feature-extractor config: {e}") from None


def load_hf_dir(path: Path, vocab_size: int | None) -> W2V2Model:
    """The model (eval mode) of the HF directory ``path``; ``vocab_size`` as in
    :func:`distill.models.load_pretrained`."""
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise CheckpointError(f"{path}: not a Hugging Face model directory (no config.json)")
    try:
        d = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file}: invalid JSON: {e}") from None
    cfg = config_from_hf(d, str(cfg_file))
    if "wave_norm" not in (d.get("distill") or {}) and _hf_do_normalize(path):
        cfg = cfg.replace(wave_norm="utterance")
    sd = {k: v for k, v in hf_to_ours(_read_hf_weights(path)).items()}
    extra = [k for k in sd if k.startswith(HF_PRETRAIN_ONLY)]
    for k in extra:
        del sd[k]
    if extra:
        log.info("%s: ignoring %d pretraining-only tensors (quantizer, project_q, project_hid)", path, len(extra))
    has_head = "lm_head.weight" in sd
    if not has_head:
        if vocab_size is None:
            raise CheckpointError(
                f"{path}: the checkpoint has no output layer (pretrained-only); pass vocab_size to add a new one"
            )
        cfg = cfg.replace(vocab_size=vocab_size)
    elif vocab_size is not None and vocab_size != sd["lm_head.weight"].shape[0]:
        raise CheckpointError(
            f"{path}: output layer has {sd['lm_head.weight'].shape[0]} units, vocab_size={vocab_size} requested"
        )
    else:
        cfg = cfg.replace(vocab_size=sd["lm_head.weight"].shape[0])
    model = W2V2Model(cfg)
    load_state_dict_into(model, sd, str(path), allow_missing_head=not has_head)
    if not has_head:
        log.info("%s: pretrained-only checkpoint (no CTC head): a new output layer of %d units", path, cfg.vocab_size)
    return model.eval()


def save_pretrained(model: W2V2Model, directory: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write ``config.json`` + ``model.safetensors`` in the HF ``Wav2Vec2ForCTC`` layout (float32 or
    float16 weights). CNN-front-end models load in transformers; Fbank ones only here."""
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    sd = {ours_to_hf_key(k): v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config_to_hf(model.config, dtype), indent=2) + "\n")
    # transformers' Wav2Vec2Processor reads the input scaling from here; "fixed" scaling it does not
    # know (the model's config.json has it under "distill"; fold_fixed_wave_norm moves it into the CNN)
    pre = {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "feature_size": 1,
        "sampling_rate": 16000,
        "padding_value": 0.0,
        "padding_side": "right",
        "return_attention_mask": True,
        "do_normalize": model.config.wave_norm == "utterance",
    }
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
    return out


def hf_incompatibility(cfg: W2V2Config) -> list[str]:
    """Why ``transformers.Wav2Vec2ForCTC`` would compute something else than a model of ``cfg`` (empty
    when it computes the same): the parts of a streaming student that transformers does not have."""
    why = []
    if cfg.frontend != "cnn":
        why.append(f"it has a {cfg.frontend} front-end (transformers has only the waveform CNN)")
    if cfg.chunk_frames > 0:
        left = "all" if cfg.left_chunks is None else str(cfg.left_chunks)
        why.append(
            f"it attends in chunks of {cfg.chunk_frames} frames with {left} left chunks "
            "(transformers attends to the whole utterance)"
        )
    if cfg.causal_pos_conv:
        why.append("its positional convolution is causal (transformers' is centred)")
    if cfg.wave_norm == "running":
        why.append(
            "it scales its input by running statistics (wave_norm 'running'; transformers' feature "
            "extractor knows only per-utterance normalisation)"
        )
    return why


def fold_fixed_wave_norm(model: W2V2Model) -> W2V2Model:
    """A float32 copy of ``model`` computing the same function with ``wave_norm`` "none" when it is
    "fixed": ``conv(x - m) / s`` is ``conv`` with weights ``w / s`` and bias ``b - (m / s) * sum(w)``
    (exact in real arithmetic, also on zero padding). HF's ``conv_bias`` holds for every CNN layer, so
    layers without a bias get zero ones. Other models are returned as they are."""
    cfg = model.config
    if cfg.wave_norm != "fixed":
        return model
    sd = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
    new_cfg = cfg.replace(wave_norm="none", wave_mean=0.0, wave_std=1.0, conv_bias=True)
    pre = "feature_extractor.conv_layers.{}.conv."
    for i, c in enumerate(cfg.conv_dim):
        sd.setdefault(pre.format(i) + "bias", torch.zeros(c))
    w = sd[pre.format(0) + "weight"].double()  # [C, 1, K]
    b = sd[pre.format(0) + "bias"].double()
    sd[pre.format(0) + "weight"] = (w / cfg.wave_std).float()
    sd[pre.format(0) + "bias"] = (b - (cfg.wave_mean / cfg.wave_std) * w.sum(dim=(1, 2))).float()
    out = W2V2Model(new_cfg)
    out.load_state_dict(sd)
    return out.eval()


def _hf_decoder() -> dict[str, Any]:
    """``tokenizers`` decoder chain = :meth:`distill.data.Tokenizer.decode` after CTC collapse: merge
    repeats, drop blanks, drop ``<sos/eos>``, ``▁`` → space, join, one space per run, no edge spaces."""

    def rep(pattern: dict[str, str], content: str) -> dict[str, Any]:
        return {"type": "Replace", "pattern": pattern, "content": content}

    return {
        "type": "Sequence",
        "decoders": [
            {"type": "CTC", "pad_token": BLANK, "word_delimiter_token": WORD_BOUNDARY, "cleanup": False},
            rep({"String": SOS_EOS}, ""),
            rep({"String": WORD_BOUNDARY}, " "),
            {"type": "Fuse"},
            rep({"Regex": "\\s+"}, " "),
            rep({"Regex": "^ | $"}, ""),
        ],
    }


def write_hf_tokenizer(pieces: Sequence[str], out: Path) -> list[str]:
    """Token files with which ``AutoTokenizer``/``Wav2Vec2Processor``/``pipeline`` decode the model's
    CTC output (argmax ids per frame) to exactly our text; returns the file names written.

    ``tokenizer.json`` is a ``tokenizers`` WordLevel vocabulary (id = our token id: ``<blk>`` 0 is the
    CTC blank and pad token) with a decoder chain (:func:`_hf_decoder`) that reproduces our decoding
    for characters and for BPE pieces alike; ``Wav2Vec2CTCTokenizer`` cannot: it does not replace a
    ``▁`` inside a piece (``▁HE``), keeps ``<sos/eos>`` and keeps runs of spaces (``▁``, blank, ``▁``).
    ``vocab.json`` (with ``word_delimiter_token`` ``▁`` in ``tokenizer_config.json``) is there for code
    that builds a ``Wav2Vec2CTCTokenizer`` explicitly; for character units it differs only in those
    two cases. Decoding only: the files do not encode text into pieces."""
    if tuple(pieces[:3]) != (BLANK, SOS_EOS, UNK):
        raise ValueError(f"the first tokens must be {BLANK}, {SOS_EOS}, {UNK}, got {tuple(pieces[:3])}")
    vocab = {p: i for i, p in enumerate(pieces)}
    if len(vocab) != len(pieces):
        raise ValueError("the token inventory lists a token twice")
    special = [
        {"id": i, "content": p, "single_word": False, "lstrip": False, "rstrip": False}
        | {"normalized": False, "special": True}
        for i, p in enumerate(pieces[:3])
    ]
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": special,
        "normalizer": None,
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": _hf_decoder(),
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": UNK},
    }
    specials = {"pad_token": BLANK, "unk_token": UNK, "bos_token": SOS_EOS, "eos_token": SOS_EOS}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000,
        "word_delimiter_token": WORD_BOUNDARY,
        **specials,
    }
    files = {
        "tokenizer.json": tok,
        "tokenizer_config.json": config,
        "special_tokens_map.json": specials,
        "vocab.json": vocab,
    }
    for name, obj in files.items():
        (out / name).write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return list(files)
