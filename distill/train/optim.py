"""The trainer's optimizer: AdamW/Adam over the trainable parameters, with or without weight decay."""

from __future__ import annotations

import torch
from torch import nn

from distill.config import ConfigError

from .config import TrainConfig

__all__ = ["build_optimizer"]


def build_optimizer(model: nn.Module, cfg: TrainConfig, trainable: set[str] | None = None) -> torch.optim.Optimizer:
    """AdamW/Adam over the trainable parameters, in a decay and a no-decay group."""
    o = cfg.optim
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if (trainable is not None and name not in trainable) or (trainable is None and not p.requires_grad):
            continue
        (no_decay if o.no_decay_1d and p.ndim <= 1 else decay).append(p)
    groups = [
        g
        for g in ({"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0})
        if g["params"]
    ]
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
