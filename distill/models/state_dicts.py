"""wav2vec 2.0 state dicts under three naming schemes, and copying one into our model.

* Our :class:`~distill.models.wav2vec2.W2V2Model` keys are Hugging Face ``Wav2Vec2ForCTC``'s without the
  ``wav2vec2.`` prefix (and with weight norm as ``weight_g``/``weight_v``): :func:`hf_to_ours`,
  :func:`ours_to_hf_key`.
* fairseq keys (fine-tuned ``w2v_encoder.*`` or pretrained): :func:`fairseq_to_hf_state_dict`,
  :func:`hf_to_fairseq_state_dict`.
* :func:`load_state_dict_into` copies a state dict with our names into a model, naming every key that
  does not fit.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from distill.safe_load import CheckpointError

from .wav2vec2 import W2V2Model

__all__ = [
    "hf_to_ours",
    "ours_to_hf_key",
    "fairseq_to_hf_state_dict",
    "hf_to_fairseq_state_dict",
    "load_state_dict_into",
    "HF_PRETRAIN_ONLY",
]


# --------------------------------------------------------------------------------------------------
# key conversion
# --------------------------------------------------------------------------------------------------
def ours_to_hf_key(k: str) -> str:
    """HF ``Wav2Vec2ForCTC`` name of our key ``k``."""
    return k if k.startswith("lm_head.") else "wav2vec2." + k


_PARAMETRIZED = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}


def hf_to_ours(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """``sd`` with HF keys (or our own) renamed to ours; a positional conv without weight norm gets it."""
    out = {}
    for k, v in sd.items():
        if k.startswith("wav2vec2."):
            k = k[len("wav2vec2.") :]
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
HF_PRETRAIN_ONLY = ("quantizer.", "project_q.", "project_hid.")


def fairseq_to_hf_state_dict(sd: dict[str, Tensor], group_norm: bool | None = None) -> dict[str, Tensor]:
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
            k = k[len("w2v_encoder.w2v_model.") :]
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
    ours = hf_to_ours(sd)
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
        if k.startswith(HF_PRETRAIN_ONLY):
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


def load_state_dict_into(
    model: W2V2Model, sd: dict[str, Tensor], source: str, allow_missing_head: bool = False
) -> None:
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
    bad = [
        f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in sd.items()
        if k in own and v.shape != own[k].shape
    ]
    if bad:
        raise CheckpointError(f"{source}: shape mismatch: {_list(bad)}")
    with torch.no_grad():
        for k, v in sd.items():
            if k in own:
                own[k].copy_(v.to(own[k].dtype))
