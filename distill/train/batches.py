"""Batches as the trainer handles them: moved to the device, summarised in one line for warnings."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["move_to_device", "describe_batch"]


def move_to_device(obj: Any, device: torch.device) -> Any:
    """Tensors nested in dicts/lists/tuples moved to ``device``; other objects untouched."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return (
            type(obj)({k: move_to_device(v, device) for k, v in obj.items()})
            if isinstance(obj, dict)
            else {k: move_to_device(v, device) for k, v in obj.items()}
        )
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(move_to_device(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to_device(v, device) for v in obj)
    return obj


def describe_batch(batch: Any, max_ids: int = 3) -> str:
    """A one-line summary of a batch for warnings: tensor shapes, number/duration of cuts, ids."""
    parts: list[str] = []

    def cut_info(cuts: Any) -> None:
        try:
            cl = list(cuts)
            dur = sum(float(getattr(c, "duration", 0.0)) for c in cl)
            ids = [str(getattr(c, "id", "?")) for c in cl[:max_ids]]
            parts.append(f"{len(cl)} cuts, {dur:.1f} s audio, ids {ids}{'...' if len(cl) > max_ids else ''}")
        except Exception:  # a summary must never fail
            pass

    def walk(obj: Any, name: str, depth: int) -> None:
        if depth > 3:
            return
        if isinstance(obj, torch.Tensor):
            parts.append(f"{name}{list(obj.shape)}")
        elif isinstance(obj, Mapping):
            for k, v in obj.items():
                if k in ("cuts", "cut") and not isinstance(v, torch.Tensor):
                    cut_info(v if not hasattr(v, "id") else [v])
                elif k in ("ids", "utt_ids", "cut_ids", "keys") and isinstance(v, (list, tuple)):
                    parts.append(f"{k} {[str(x) for x in v[:max_ids]]}{'...' if len(v) > max_ids else ''}")
                else:
                    walk(v, f"{name}.{k}" if name else str(k), depth + 1)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj[:8]):
                walk(v, f"{name}[{i}]", depth + 1)
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            walk({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, name, depth)

    walk(batch, "", 0)
    return ", ".join(parts) if parts else type(batch).__name__
