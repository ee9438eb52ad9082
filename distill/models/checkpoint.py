"""The entry point of wav2vec 2.0 import: :func:`load_pretrained` finds what a path holds and dispatches.

* a Hugging Face directory (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``, sharded or
  not): :mod:`distill.models.hf_format`, which also writes them (:func:`save_pretrained`);
* a fairseq checkpoint (fine-tuned ``w2v_encoder.*`` or pretrained-only; the latter gets a new head of
  ``vocab_size`` outputs): :mod:`distill.models.fairseq_import`;
* a file of our own training runs (``best.pt``/``last.pt``/``avg<N>.pt``, ``checkpoints/ckpt-*.pt``): the
  model configuration they carry, the trained model's weights; no tokens inside (here).

Key names are converted in :mod:`distill.models.state_dicts`. Pickles are only ever read through
:mod:`distill.safe_load` (``weights_only``; fairseq's configuration objects as inert stand-ins, any other
global refused). The names this module used to define stay importable from it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from distill.safe_load import CKPT_FORMAT, MODEL_FORMAT, CheckpointError, load_with_config_stubs, to_plain

from .config import W2V2Config
from .fairseq_import import config_from_fairseq, load_fairseq_file, parse_conv_layers
from .hf_format import config_from_hf, config_to_hf, load_hf_dir, save_pretrained
from .state_dicts import fairseq_to_hf_state_dict, hf_to_fairseq_state_dict, load_state_dict_into
from .wav2vec2 import W2V2Model

# the pickle loader's former name here
safe_torch_load = load_with_config_stubs

__all__ = [
    "load_pretrained",
    "save_pretrained",
    "load_state_dict_into",
    "hf_to_fairseq_state_dict",
    "fairseq_to_hf_state_dict",
    "safe_torch_load",
    "CheckpointError",
    # also re-exported from the modules they moved to
    "config_from_hf",
    "config_to_hf",
    "config_from_fairseq",
    "parse_conv_layers",
    "to_plain",
]

log = logging.getLogger(__name__)


def _load_training_file(obj: dict, path: Path, vocab_size: int | None) -> W2V2Model:
    """A model file or full checkpoint of ``distill.train`` (layout: distill/train/checkpoint.py): the
    model configuration from its ``meta`` (``model_config``, as ``distill.bin.train`` stores it), the
    weights of the trained model from its ``model`` state (under the run's ``export_prefix`` in a full
    checkpoint, which also holds a teacher's projections and the like)."""
    what = "training checkpoint" if obj["format"] == CKPT_FORMAT else "model file"
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
    mc, sd = meta.get("model_config"), obj.get("model")
    if not isinstance(mc, dict) or not isinstance(sd, dict):
        raise CheckpointError(
            f"{path}: a {what} of a distill.train run that does not carry its model's "
            "configuration: give the model directory the run exported (<exp_dir>/model) instead"
        )
    try:
        cfg = W2V2Config.from_dict(mc)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: the model configuration of this {what} is invalid: {e}") from None
    if obj["format"] == CKPT_FORMAT:
        prefix = str((obj.get("config") or {}).get("export_prefix") or "")
        sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    if vocab_size is not None and vocab_size != cfg.vocab_size:
        raise CheckpointError(f"{path}: output layer has {cfg.vocab_size} units, vocab_size={vocab_size} requested")
    model = W2V2Model(cfg)
    load_state_dict_into(model, sd, str(path))
    step = (obj.get("trainer") or {}).get("step", obj.get("step"))
    log.info(
        "%s: %s of a training run (update %s), loaded with the model configuration it carries; it holds "
        "no tokens: use the lang dir the run was trained on",
        path,
        what,
        step,
    )
    return model.eval()


def load_pretrained(path: str | Path, vocab_size: int | None = None) -> W2V2Model:
    """Load a wav2vec 2.0 model (eval mode) from a HF directory, a fairseq ``.pt`` checkpoint, or a model
    file / checkpoint of a ``distill.bin.train`` run (the module docstring lists them).

    ``vocab_size`` gives a pretrained-only checkpoint a new randomly initialised output layer; for a
    fine-tuned checkpoint it must match the stored head if given."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if p.is_dir():
        return load_hf_dir(p, vocab_size)
    if p.name == "config.json":
        return load_hf_dir(p.parent, vocab_size)
    obj = load_with_config_stubs(p)
    if isinstance(obj, dict) and obj.get("format") in (CKPT_FORMAT, MODEL_FORMAT):
        return _load_training_file(obj, p, vocab_size)
    return load_fairseq_file(p, vocab_size, obj)
