"""Greedy (best-path) CTC decoding: the most likely label per frame, repeats collapsed, blanks dropped.

Batched over ``scores [B, T, V]`` with per-utterance ``lengths``; :class:`GreedyStream` does the same
incrementally, chunk by chunk, and gives exactly the non-streaming result on the concatenated scores
(a repeat spanning a chunk boundary is collapsed because the last label of the previous chunk is kept).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["collapse", "ctc_greedy", "GreedyStream"]

BLANK = 0


def collapse(frame_labels: Sequence[int], blank: int = BLANK, prev: int | None = None) -> list[int]:
    """CTC collapse of one frame-label sequence: merge repeats, then drop blanks.

    ``prev`` is the label of the frame just before the sequence (for chunked input), None at the start.
    """
    out: list[int] = []
    for lab in frame_labels:
        if lab != prev and lab != blank:
            out.append(int(lab))
        prev = lab
    return out


def _check(scores: Tensor, lengths: Tensor | None) -> Tensor:
    if scores.dim() != 3:
        raise ValueError(f"expected scores [B, T, V], got shape {tuple(scores.shape)}")
    b, t, _ = scores.shape
    if lengths is None:
        return torch.full((b,), t, dtype=torch.long)
    lengths = torch.as_tensor(lengths).to("cpu", torch.long)
    if lengths.shape != (b,):
        raise ValueError(f"lengths must have shape [{b}], got {tuple(lengths.shape)}")
    if b and (int(lengths.min()) < 0 or int(lengths.max()) > t):
        raise ValueError(f"lengths must lie in [0, {t}], got {lengths.tolist()}")
    return lengths


def ctc_greedy(scores: Tensor, lengths: Tensor | None = None, blank: int = BLANK) -> list[list[int]]:
    """Token-id sequences of a batch: argmax per frame over the first ``lengths[b]`` frames, collapsed.

    ``scores`` may be log-posteriors or logits (argmax is the same). Ties go to the lowest id.
    """
    lengths = _check(scores, lengths)
    b, t, _ = scores.shape
    if t == 0:
        return [[] for _ in range(b)]
    best = scores.detach().argmax(dim=-1).cpu()  # [B, T]
    valid = torch.arange(t)[None, :] < lengths[:, None]
    # a frame emits when it is not blank and differs from the previous frame (frame 0: no previous)
    prev = torch.cat([torch.full((b, 1), -1, dtype=best.dtype), best[:, :-1]], dim=1)
    emit = valid & (best != blank) & (best != prev)
    return [best[i][emit[i]].tolist() for i in range(b)]


class GreedyStream:
    """Incremental greedy decoding of one stream: feed score chunks [n, V] in order."""

    def __init__(self, blank: int = BLANK) -> None:
        self.blank = blank
        self.tokens: list[int] = []
        self.token_frames: list[int] = []  # frame index at which each token was emitted
        self.frames = 0
        self._prev: int | None = None

    def accept(self, scores: Tensor) -> list[int]:
        """Decode a chunk of scores [n, V]; returns the tokens it added."""
        if scores.dim() != 2:
            raise ValueError(f"expected a chunk of scores [n, V], got shape {tuple(scores.shape)}")
        if scores.shape[0] == 0:
            return []
        best = scores.detach().argmax(dim=-1).cpu().tolist()
        new: list[int] = []
        for i, lab in enumerate(best):
            if lab != self._prev and lab != self.blank:
                new.append(int(lab))
                self.token_frames.append(self.frames + i)
            self._prev = lab
        self.frames += len(best)
        self.tokens.extend(new)
        return new
