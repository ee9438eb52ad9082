"""Averaging of model weights over several checkpoints (a cheap ensemble that usually lowers WER)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError, load_model_state, save_model_file

__all__ = ["average_state_dicts", "average_checkpoints"]

log = logging.getLogger(__name__)


def average_state_dicts(
    states: Sequence[dict[str, torch.Tensor]], names: Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating-point tensors (accumulated in float64, cast back).

    Integer/bool tensors (e.g. BatchNorm's ``num_batches_tracked``) are taken from the last state.
    All states must have the same keys and shapes; a mismatch raises naming the key and the source.
    """
    if not states:
        raise ValueError("average_state_dicts: no state dicts given")
    names = list(names) if names is not None else [f"state #{i}" for i in range(len(states))]
    ref = states[0]
    for st, name in zip(states[1:], names[1:]):
        if st.keys() != ref.keys():
            diff = sorted(set(st) ^ set(ref))
            raise CheckpointError(f"cannot average: {name} and {names[0]} have different keys (e.g. '{diff[0]}')")
    out: dict[str, torch.Tensor] = {}
    for k, v0 in ref.items():
        if not v0.is_floating_point():
            out[k] = states[-1][k].clone()
            continue
        acc = torch.zeros(v0.shape, dtype=torch.float64)
        for st, name in zip(states, names):
            if st[k].shape != v0.shape:
                raise CheckpointError(
                    f"cannot average: key '{k}' has shape {tuple(st[k].shape)} in "
                    f"{name} but {tuple(v0.shape)} in {names[0]}"
                )
            acc += st[k].to(torch.float64)
        out[k] = (acc / len(states)).to(v0.dtype)
    return out


def average_checkpoints(
    paths: Sequence[str | Path], out_path: str | Path | None = None, **meta: Any
) -> dict[str, torch.Tensor]:
    """Average the models of ``paths`` (model files or training checkpoints).

    When ``out_path`` is given the result is written there as a model file (atomically) with
    ``averaged_from`` (the file names) plus ``meta``. Returns the averaged state dict.
    """
    if not paths:
        raise ValueError("average_checkpoints: no checkpoints given")
    paths = [Path(p) for p in paths]
    states = [load_model_state(p) for p in paths]
    avg = average_state_dicts(states, [str(p) for p in paths])
    if out_path is not None:
        save_model_file(avg, out_path, averaged_from=[p.name for p in paths], **meta)
        log.info("averaged %d checkpoints (%s .. %s) into %s", len(paths), paths[0].name, paths[-1].name, out_path)
    return avg
