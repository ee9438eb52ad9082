"""Import and export of wav2vec 2.0 checkpoints: Hugging Face directories and fairseq ``.pt`` files.

* :func:`load_pretrained` reads a HF directory (``config.json`` + ``model.safetensors`` /
  ``pytorch_model.bin``, sharded or not), a fairseq checkpoint (fine-tuned ``w2v_encoder.*`` or
  pretrained-only; the latter gets a new head of ``vocab_size`` outputs), or a file of our own training
  runs (``best.pt``/``last.pt``/``avg<N>.pt``, ``checkpoints/ckpt-*.pt``: the model configuration they
  carry, the trained model's weights; no tokens inside).
* :func:`save_pretrained` writes the HF layout that ``transformers.Wav2Vec2ForCTC`` loads.
* :func:`hf_to_fairseq_state_dict` / :func:`fairseq_to_hf_state_dict` convert key names.

Pickles are only ever read with ``torch.load(weights_only=True)``. fairseq stores its configuration
as ``argparse.Namespace`` or omegaconf objects; the omegaconf (and fairseq/typing) classes are
replaced by inert stand-ins that only record their pickled state, so no code from the file runs and
omegaconf need not be installed. Any other global (e.g. ``os.system``) is refused.
"""
from __future__ import annotations

import argparse
import ast
import json
import logging
import pickle
import re
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from .config import W2V2Config
from .wav2vec2 import W2V2Model

__all__ = [
    "load_pretrained",
    "save_pretrained",
    "load_state_dict_into",
    "hf_to_fairseq_state_dict",
    "fairseq_to_hf_state_dict",
    "safe_torch_load",
    "CheckpointError",
]

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message names file and keys."""


# --------------------------------------------------------------------------------------------------
# safe unpickling
# --------------------------------------------------------------------------------------------------
# Globals that become inert stand-ins (configuration objects of fairseq checkpoints).
_STUB_PREFIXES = ("omegaconf.", "fairseq.", "typing.", "enum.", "pathlib.", "collections.")
_SAFE_BUILTINS = {f"builtins.{t.__name__}": t for t in (dict, list, tuple, set, frozenset, str, int, float, bool)}
_SAFE_BUILTINS.update({"__builtin__." + k.split(".", 1)[1]: v for k, v in _SAFE_BUILTINS.items()})
_SAFE_BUILTINS["argparse.Namespace"] = argparse.Namespace


class _Stub:
    """Inert stand-in for a pickled configuration class: remembers constructor args and state."""

    qualified_name = ""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj._args = args
        obj._state = None
        return obj

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        self._state = state

    def __repr__(self) -> str:
        return f"<stub {self.qualified_name} args={self._args!r}>"


_STUB_CACHE: dict[str, type] = {}


def _stub_for(name: str) -> type:
    if name not in _STUB_CACHE:
        _STUB_CACHE[name] = type(name.rsplit(".", 1)[-1], (_Stub,), {"qualified_name": name})
    return _STUB_CACHE[name]


_UNSUPPORTED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _detail(msg: str) -> str:
    """The informative line of torch's weights-only error (it starts with a long generic paragraph)."""
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    for ln in lines[1:]:
        if not ln.startswith(("Check the documentation", "Please file an issue")):
            return ln
    return lines[0] if lines else msg


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load(weights_only=True)`` that also accepts fairseq's configuration objects.

    Unknown globals of configuration libraries are allowlisted as inert stand-ins (one retry per
    name); any other global raises :class:`CheckpointError` naming it and the file."""
    path = Path(path)
    allowed: list = [(v, k) for k, v in _SAFE_BUILTINS.items()]
    for _ in range(200):
        try:
            with torch.serialization.safe_globals(allowed):
                try:
                    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as e:
                    if "mmap" not in str(e):
                        raise
                    return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            msg = str(e)
            m = _UNSUPPORTED_GLOBAL.search(msg)
            name = m.group(1) if m else None
            if name and name.startswith(_STUB_PREFIXES) and "blocked" not in msg:
                allowed.append((_stub_for(name), name))
                continue
            if name:
                raise CheckpointError(
                    f"{path}: refusing to unpickle global '{name}': only tensors and argparse/omegaconf/fairseq "
                    f"configuration objects are allowed in a checkpoint"
                ) from None
            raise CheckpointError(f"{path}: cannot be loaded safely as a torch checkpoint ({_detail(msg)})") from None
        except (OSError, EOFError, RuntimeError, ValueError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"{path}: cannot be loaded safely as a torch checkpoint ({_detail(str(e))})") from None
    raise CheckpointError(f"{path}: too many distinct configuration classes in the pickle")


def to_plain(obj: Any, _depth: int = 0) -> Any:
    """Turn stand-ins (omegaconf DictConfig/ListConfig/nodes, enums), Namespaces and containers into
    plain dicts, lists and scalars."""
    if _depth > 100:
        raise CheckpointError("configuration nested too deeply")
    d = _depth + 1
    if isinstance(obj, dict):
        return {k: to_plain(v, d) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, d) for v in obj]
    if isinstance(obj, argparse.Namespace):
        return {k: to_plain(v, d) for k, v in vars(obj).items()}
    if isinstance(obj, type) and issubclass(obj, _Stub):
        return obj.qualified_name
    if isinstance(obj, _Stub):
        st = obj._state
        if isinstance(st, tuple) and len(st) == 2 and isinstance(st[0], dict):
            st = st[0]
        if isinstance(st, dict):
            if "_content" in st:
                return to_plain(st["_content"], d)
            if "_val" in st:
                return to_plain(st["_val"], d)
            if "_value_" in st:
                return to_plain(st["_value_"], d)
            return {k: to_plain(v, d) for k, v in st.items() if k != "_parent"}
        if obj._args:
            return to_plain(obj._args[0], d)
        return None
    return obj


# --------------------------------------------------------------------------------------------------
# key conversion
# --------------------------------------------------------------------------------------------------
def _ours_to_hf_key(k: str) -> str:
    return k if k.startswith("lm_head.") else "wav2vec2." + k


_PARAMETRIZED = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}


def _hf_to_ours(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for k, v in sd.items():
        if k.startswith("wav2vec2."):
            k = k[len("wav2vec2."):]
        for a, b in _PARAMETRIZED.items():
            if k.endswith(a):
                k = k[: -len(a)] + b
        out[k] = v
    # a positional conv saved without weight norm: weight = g * v / |v| with v = weight, g = |weight|
    w = "encoder.pos_conv_embed.conv.weight"
    if w in out and w + "_v" not in out:
        weight = out.pop(w)
        out[w + "_v"] = weight
        out[w + "_g"] = weight.norm(dim=(0, 1), keepdim=True)
    return out


_FS_LAYER = {
    "self_attn.k_proj": "attention.k_proj",
    "self_attn.v_proj": "attention.v_proj",
    "self_attn.q_proj": "attention.q_proj",
    "self_attn.out_proj": "attention.out_proj",
    "self_attn_layer_norm": "layer_norm",
    "fc1": "feed_forward.intermediate_dense",
    "fc2": "feed_forward.output_dense",
    "final_layer_norm": "final_layer_norm",
}
_FS_TOP = {
    "post_extract_proj": "feature_projection.projection",
    "layer_norm": "feature_projection.layer_norm",
    "encoder.pos_conv.0": "encoder.pos_conv_embed.conv",
    "encoder.layer_norm": "encoder.layer_norm",
    "mask_emb": "masked_spec_embed",
}
# pretraining-only parts of a fairseq wav2vec 2.0 model (not used for recognition)
_FS_PRETRAIN_ONLY = ("quantizer.", "project_q.", "final_proj.", "project_inp.", "target_glu.", "label_embs_concat")
_HF_PRETRAIN_ONLY = ("quantizer.", "project_q.", "project_hid.")


def fairseq_to_hf_state_dict(sd: dict[str, Tensor], group_norm: Optional[bool] = None) -> dict[str, Tensor]:
    """fairseq wav2vec 2.0 keys (fine-tuned ``w2v_encoder.*`` or pretrained) -> HF ``Wav2Vec2ForCTC`` keys.

    Pretraining-only modules are dropped; an unrecognised key raises :class:`CheckpointError`."""
    out: dict[str, Tensor] = {}
    unknown = []
    if group_norm is None:
        group_norm = not any(re.search(r"conv_layers\.\d+\.2\.1\.weight$", k) for k in sd)
    for key, v in sd.items():
        k = key
        if k.startswith("w2v_encoder.proj."):
            out["lm_head." + k.split(".")[-1]] = v
            continue
        if k.startswith("w2v_encoder.w2v_model."):
            k = k[len("w2v_encoder.w2v_model."):]
        if k.startswith(_FS_PRETRAIN_ONLY):
            continue
        m = re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.(\d+)(?:\.(\d+))?\.(\w+)", k)
        if m:
            i, t, sub, p = m.group(1), m.group(2), m.group(3), m.group(4)
            if t == "0" and sub is None:
                out[f"wav2vec2.feature_extractor.conv_layers.{i}.conv.{p}"] = v
                continue
            if t == "2" and ((group_norm and sub is None) or (not group_norm and sub == "1")):
                out[f"wav2vec2.feature_extractor.conv_layers.{i}.layer_norm.{p}"] = v
                continue
            unknown.append(key)
            continue
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(\w+)", k)
        if m and m.group(2) in _FS_LAYER:
            out[f"wav2vec2.encoder.layers.{m.group(1)}.{_FS_LAYER[m.group(2)]}.{m.group(3)}"] = v
            continue
        if k == "mask_emb":
            out["wav2vec2.masked_spec_embed"] = v
            continue
        prefix, _, p = k.rpartition(".")
        if prefix in _FS_TOP:
            out[f"wav2vec2.{_FS_TOP[prefix]}.{p}"] = v
            continue
        unknown.append(key)
    if unknown:
        raise CheckpointError(f"unrecognised fairseq wav2vec 2.0 keys: {_list(unknown)}")
    return out


def hf_to_fairseq_state_dict(sd: dict[str, Tensor], finetuned: bool = True) -> dict[str, Tensor]:
    """HF ``Wav2Vec2ForCTC`` keys -> fairseq keys (``w2v_encoder.w2v_model.*`` + ``w2v_encoder.proj``
    when ``finetuned``; the bare pretraining model's keys otherwise, dropping the head)."""
    ours = _hf_to_ours(sd)
    group_norm = not any(re.search(r"conv_layers\.[1-9]\d*\.layer_norm", k) for k in ours)
    inv_layer = {v: k for k, v in _FS_LAYER.items()}
    inv_top = {v: k for k, v in _FS_TOP.items()}
    pre = "w2v_encoder.w2v_model." if finetuned else ""
    out: dict[str, Tensor] = {}
    for k, v in ours.items():
        if k.startswith("lm_head."):
            if finetuned:
                out["w2v_encoder.proj." + k.split(".")[-1]] = v
            continue
        if k == "masked_spec_embed":
            out[pre + "mask_emb"] = v
            continue
        m = re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.(conv|layer_norm)\.(\w+)", k)
        if m:
            i, part, p = m.groups()
            if part == "conv":
                out[f"{pre}feature_extractor.conv_layers.{i}.0.{p}"] = v
            else:
                out[f"{pre}feature_extractor.conv_layers.{i}.2{'' if group_norm else '.1'}.{p}"] = v
            continue
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(\w+)", k)
        if m and m.group(2) in inv_layer:
            out[f"{pre}encoder.layers.{m.group(1)}.{inv_layer[m.group(2)]}.{m.group(3)}"] = v
            continue
        prefix, _, p = k.rpartition(".")
        if prefix in inv_top:
            out[f"{pre}{inv_top[prefix]}.{p}"] = v
            continue
        if k.startswith(_HF_PRETRAIN_ONLY):
            continue
        raise CheckpointError(f"no fairseq name for key '{k}'")
    return out


def _list(keys: list[str], n: int = 20) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


# --------------------------------------------------------------------------------------------------
# loading a state dict into our model
# --------------------------------------------------------------------------------------------------
_OPTIONAL = ("masked_spec_embed",)


def load_state_dict_into(model: W2V2Model, sd: dict[str, Tensor], source: str, allow_missing_head: bool = False) -> None:
    """Copy ``sd`` (our key names) into ``model``; unknown, missing or mis-shaped keys raise an error
    naming them (``masked_spec_embed`` is optional both ways, it only matters in training)."""
    own = model.state_dict()
    unexpected = [k for k in sd if k not in own and k not in _OPTIONAL]
    missing = [k for k in own if k not in sd and k not in _OPTIONAL]
    if allow_missing_head:
        missing = [k for k in missing if not k.startswith("lm_head.")]
    if unexpected or missing:
        parts = []
        if unexpected:
            parts.append(f"unexpected keys: {_list(unexpected)}")
        if missing:
            parts.append(f"missing keys: {_list(missing)}")
        raise CheckpointError(f"{source}: checkpoint does not match the model ({'; '.join(parts)})")
    bad = [f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in sd.items() if k in own and v.shape != own[k].shape]
    if bad:
        raise CheckpointError(f"{source}: shape mismatch: {_list(bad)}")
    with torch.no_grad():
        for k, v in sd.items():
            if k in own:
                own[k].copy_(v.to(own[k].dtype))


# --------------------------------------------------------------------------------------------------
# Hugging Face
# --------------------------------------------------------------------------------------------------
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
    known = {"frontend", "fbank_num_mel_bins", "fbank_channels", "mask_group_norm", "chunk_frames", "left_chunks",
             "causal_pos_conv", "wave_norm", "wave_mean", "wave_std", "wave_prior_s"}
    bad = sorted(set(extra) - known)
    if bad:
        raise CheckpointError(f"{source}: unknown 'distill' config keys: {', '.join(bad)}")
    kw.update(extra)
    try:
        return W2V2Config(**kw)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: invalid wav2vec2 config: {e}") from None


def config_to_hf(cfg: W2V2Config, dtype: torch.dtype = torch.float32) -> dict:
    d = {
        "architectures": ["Wav2Vec2ForCTC"],
        "model_type": "wav2vec2",
        "num_feat_extract_layers": len(cfg.conv_dim),
        "apply_spec_augment": cfg.mask_time_prob > 0,
        "mask_feature_prob": 0.0,
        "pad_token_id": 0,
        "ctc_loss_reduction": "sum",
        "torch_dtype": str(dtype).replace("torch.", ""),
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
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot read the weights (truncated or not a safetensors file?): "
                              f"{e}") from None


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
                sd.update(_load_safetensors(fp) if f.endswith(".safetensors") else _as_state_dict(safe_torch_load(fp), fp))
            return sd
    if st.exists():
        return _load_safetensors(st)
    if bin_.exists():
        return _as_state_dict(safe_torch_load(bin_), bin_)
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


def _load_hf(path: Path, vocab_size: Optional[int]) -> W2V2Model:
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
    sd = {k: v for k, v in _hf_to_ours(_read_hf_weights(path)).items()}
    extra = [k for k in sd if k.startswith(_HF_PRETRAIN_ONLY)]
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
    from safetensors.torch import save_file

    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    sd = {_ours_to_hf_key(k): v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config_to_hf(model.config, dtype), indent=2) + "\n")
    # transformers' Wav2Vec2Processor reads the input scaling from here; "fixed" scaling it does not
    # know (the model's config.json has it under "distill")
    pre = {"feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1, "sampling_rate": 16000,
           "padding_value": 0.0, "padding_side": "right", "return_attention_mask": True,
           "do_normalize": model.config.wave_norm == "utterance"}
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
    return out


# --------------------------------------------------------------------------------------------------
# fairseq
# --------------------------------------------------------------------------------------------------
def parse_conv_layers(spec: str) -> list[tuple[int, int, int]]:
    """Evaluate fairseq's ``conv_feature_layers`` string (lists of (dim, kernel, stride) joined with
    ``+`` and ``*``) without ``eval``."""

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            vals = [ev(e) for e in node.elts]
            return vals if isinstance(node, ast.List) else tuple(vals)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            a, b = ev(node.left), ev(node.right)
            return a + b if isinstance(node.op, ast.Add) else a * b
        raise ValueError(f"unsupported element in conv_feature_layers: {ast.dump(node)}")

    try:
        layers = ev(ast.parse(spec, mode="eval"))
    except (SyntaxError, ValueError, TypeError) as e:
        raise CheckpointError(f"cannot parse conv_feature_layers {spec!r}: {e}") from None
    if not isinstance(layers, list) or not all(isinstance(t, tuple) and len(t) == 3 for t in layers):
        raise CheckpointError(f"conv_feature_layers {spec!r} is not a list of (dim, kernel, stride)")
    return layers


def _fairseq_model_cfg(ckpt: dict, source: str) -> dict:
    cfg = to_plain(ckpt.get("cfg")) if ckpt.get("cfg") is not None else None
    if cfg is None and ckpt.get("args") is not None:
        args = to_plain(ckpt["args"])
        cfg = {"model": args}
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise CheckpointError(f"{source}: fairseq checkpoint without a model configuration ('cfg' or 'args')")
    model = cfg["model"]
    name = str(model.get("_name", model.get("arch", "wav2vec2")))
    if not any(s in name for s in ("wav2vec", "w2v")):
        raise CheckpointError(f"{source}: fairseq model '{name}' is not wav2vec 2.0 (another architecture)")
    w2v = model.get("w2v_args")
    if isinstance(w2v, dict):
        return w2v.get("model", w2v) if isinstance(w2v.get("model"), dict) else w2v
    return model


def _fairseq_normalize(ckpt: dict) -> bool:
    """fairseq's ``task.normalize`` (per-utterance zero mean / unit variance input, lv60 models), from
    the fine-tuning task or the pretraining one it wraps."""
    cfg = to_plain(ckpt.get("cfg")) if ckpt.get("cfg") is not None else None
    if not isinstance(cfg, dict):
        args = to_plain(ckpt.get("args")) if ckpt.get("args") is not None else None
        if not isinstance(args, dict):
            return False
        inner = args.get("w2v_args") if isinstance(args.get("w2v_args"), dict) else {}
        return bool(args.get("normalize", inner.get("normalize", False)))
    for task in (cfg.get("task"), ((cfg.get("model") or {}).get("w2v_args") or {}).get("task")):
        if isinstance(task, dict) and "normalize" in task:
            return bool(task["normalize"])
    return False


def config_from_fairseq(m: dict, sd: dict[str, Tensor], source: str) -> W2V2Config:
    """W2V2Config from a fairseq model configuration (fairseq defaults for absent fields)."""
    name = str(m.get("_name", m.get("arch", "wav2vec2")))
    if not any(s in name for s in ("wav2vec", "w2v")):
        raise CheckpointError(f"{source}: fairseq model '{name}' is not wav2vec 2.0 (another architecture)")
    if int(m.get("pos_conv_depth", 1) or 1) != 1:
        raise CheckpointError(f"{source}: pos_conv_depth={m['pos_conv_depth']} is not supported (only 1)")
    layers = parse_conv_layers(
        m.get("conv_feature_layers") or "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]"
    )
    mode = m.get("extractor_mode", "default")
    if mode not in ("default", "layer_norm"):
        raise CheckpointError(f"{source}: unsupported extractor_mode {mode!r}")
    act = m.get("activation_fn", "gelu")
    try:
        return W2V2Config(
            hidden_size=int(m.get("encoder_embed_dim", 768)),
            num_hidden_layers=int(m.get("encoder_layers", 12)),
            num_attention_heads=int(m.get("encoder_attention_heads", 12)),
            intermediate_size=int(m.get("encoder_ffn_embed_dim", 3072)),
            hidden_act=act,
            feat_extract_activation="gelu",
            do_stable_layer_norm=bool(m.get("layer_norm_first", False)),
            conv_dim=tuple(t[0] for t in layers),
            conv_kernel=tuple(t[1] for t in layers),
            conv_stride=tuple(t[2] for t in layers),
            conv_bias=bool(m.get("conv_bias", False)),
            feat_extract_norm="layer" if mode == "layer_norm" else "group",
            num_conv_pos_embeddings=int(m.get("conv_pos", 128)),
            num_conv_pos_embedding_groups=int(m.get("conv_pos_groups", 16)),
            mask_time_prob=0.05 if any(k.endswith("mask_emb") for k in sd) else 0.0,
            layerdrop=float(m.get("encoder_layerdrop", 0.0) or 0.0),
        )
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: invalid fairseq wav2vec 2.0 config: {e}") from None


def _load_training_file(obj: dict, path: Path, vocab_size: Optional[int]) -> W2V2Model:
    """A model file or full checkpoint of ``distill.train`` (layout: distill/train/checkpoint.py): the
    model configuration from its ``meta`` (``model_config``, as ``distill.bin.train`` stores it), the
    weights of the trained model from its ``model`` state (under the run's ``export_prefix`` in a full
    checkpoint, which also holds a teacher's projections and the like)."""
    from distill.train.checkpoint import CKPT_FORMAT

    what = "training checkpoint" if obj["format"] == CKPT_FORMAT else "model file"
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
    mc, sd = meta.get("model_config"), obj.get("model")
    if not isinstance(mc, dict) or not isinstance(sd, dict):
        raise CheckpointError(f"{path}: a {what} of a distill.train run that does not carry its model's "
                              "configuration: give the model directory the run exported (<exp_dir>/model) instead")
    try:
        cfg = W2V2Config.from_dict(mc)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: the model configuration of this {what} is invalid: {e}") from None
    if obj["format"] == CKPT_FORMAT:
        prefix = str((obj.get("config") or {}).get("export_prefix") or "")
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if vocab_size is not None and vocab_size != cfg.vocab_size:
        raise CheckpointError(f"{path}: output layer has {cfg.vocab_size} units, vocab_size={vocab_size} requested")
    model = W2V2Model(cfg)
    load_state_dict_into(model, sd, str(path))
    step = (obj.get("trainer") or {}).get("step", obj.get("step"))
    log.info("%s: %s of a training run (update %s), loaded with the model configuration it carries; it holds "
             "no tokens: use the lang dir the run was trained on", path, what, step)
    return model.eval()


def _load_fairseq(path: Path, vocab_size: Optional[int], ckpt: Any = None) -> W2V2Model:
    ckpt = safe_torch_load(path) if ckpt is None else ckpt
    if not isinstance(ckpt, dict) or "model" not in ckpt or not isinstance(ckpt["model"], dict):
        raise CheckpointError(f"{path}: not a fairseq checkpoint (no 'model' state dict)")
    sd_fs = ckpt["model"]
    mcfg = _fairseq_model_cfg(ckpt, str(path))
    cfg = config_from_fairseq(mcfg, sd_fs, str(path))
    if _fairseq_normalize(ckpt):
        cfg = cfg.replace(wave_norm="utterance")
    try:
        sd = _hf_to_ours(fairseq_to_hf_state_dict(sd_fs, group_norm=cfg.feat_extract_norm == "group"))
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    has_head = "lm_head.weight" in sd
    if has_head:
        v = sd["lm_head.weight"].shape[0]
        if vocab_size is not None and vocab_size != v:
            raise CheckpointError(f"{path}: output layer has {v} units, vocab_size={vocab_size} requested")
        cfg = cfg.replace(vocab_size=v)
    else:
        if vocab_size is None:
            raise CheckpointError(
                f"{path}: pretrained-only fairseq checkpoint (no w2v_encoder.proj); pass vocab_size for a new head"
            )
        cfg = cfg.replace(vocab_size=vocab_size)
    model = W2V2Model(cfg)
    load_state_dict_into(model, sd, str(path), allow_missing_head=not has_head)
    if not has_head:
        log.info("%s: pretrained-only checkpoint (no CTC head): a new output layer of %d units", path, cfg.vocab_size)
    return model.eval()


def load_pretrained(path: str | Path, vocab_size: Optional[int] = None) -> W2V2Model:
    """Load a wav2vec 2.0 model (eval mode) from a HF directory, a fairseq ``.pt`` checkpoint, or a model
    file / checkpoint of a ``distill.bin.train`` run (the module docstring lists them).

    ``vocab_size`` gives a pretrained-only checkpoint a new randomly initialised output layer; for a
    fine-tuned checkpoint it must match the stored head if given."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if p.is_dir():
        return _load_hf(p, vocab_size)
    if p.name == "config.json":
        return _load_hf(p.parent, vocab_size)
    from distill.train.checkpoint import CKPT_FORMAT, MODEL_FORMAT

    obj = safe_torch_load(p)
    if isinstance(obj, dict) and obj.get("format") in (CKPT_FORMAT, MODEL_FORMAT):
        return _load_training_file(obj, p, vocab_size)
    return _load_fairseq(p, vocab_size, obj)
