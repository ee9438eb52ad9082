"""Batch reduction that keeps non-finite utterance losses away from the gradient."""

from __future__ import annotations

import torch

__all__ = ["reduce_finite"]


def reduce_finite(losses: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum of the finite entries of per-utterance ``losses`` [B], and how many were dropped.

    Dropped entries (inf: an unreachable numerator; NaN: bad scores) get exactly zero gradient, and the
    LF-MMI functions return zero gradient for them too, so no NaN/inf reaches the parameters. The
    trainer should log the count.
    """
    if losses.dim() != 1:
        raise ValueError(f"reduce_finite expects per-utterance losses [B], got shape {tuple(losses.shape)}")
    finite = torch.isfinite(losses)
    total = torch.where(finite, losses, torch.zeros_like(losses)).sum()
    return total, int((~finite).sum())
