"""fairseq wav2vec 2.0 checkpoints (``.pt``): :func:`load_fairseq_file`.

Fine-tuned (``w2v_encoder.*`` with a CTC projection) or pretrained-only (a new head of ``vocab_size``
outputs). The configuration comes from the pickled ``cfg`` (omegaconf) or ``args`` (argparse), read as
inert stand-ins (:func:`distill.safe_load.load_with_config_stubs`); fairseq's defaults fill absent fields.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path
from typing import Any

from torch import Tensor

from distill.safe_load import CheckpointError, load_with_config_stubs, to_plain

from .config import W2V2Config
from .state_dicts import fairseq_to_hf_state_dict, hf_to_ours, load_state_dict_into
from .wav2vec2 import W2V2Model

__all__ = ["load_fairseq_file", "config_from_fairseq", "parse_conv_layers"]

log = logging.getLogger(__name__)


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


def load_fairseq_file(path: Path, vocab_size: int | None, ckpt: Any = None) -> W2V2Model:
    """The model (eval mode) of the fairseq checkpoint ``path`` (``ckpt``: its content, when already loaded);
    ``vocab_size`` as in :func:`distill.models.load_pretrained`."""
    ckpt = load_with_config_stubs(path) if ckpt is None else ckpt
    if not isinstance(ckpt, dict) or "model" not in ckpt or not isinstance(ckpt["model"], dict):
        raise CheckpointError(f"{path}: not a fairseq checkpoint (no 'model' state dict)")
    sd_fs = ckpt["model"]
    mcfg = _fairseq_model_cfg(ckpt, str(path))
    cfg = config_from_fairseq(mcfg, sd_fs, str(path))
    if _fairseq_normalize(ckpt):
        cfg = cfg.replace(wave_norm="utterance")
    try:
        sd = hf_to_ours(fairseq_to_hf_state_dict(sd_fs, group_norm=cfg.feat_extract_norm == "group"))
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
