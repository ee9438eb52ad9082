"""The standard CTC topology (blank = 0), as an `Fsa` acceptor and as a kaldifst transducer."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported by ctc_topo only: ctc_topo_fst (decode graphs) does not need it
    from distill.graph.fsa import Fsa

__all__ = ["ctc_topo", "ctc_topo_fst"]


def _check_v(num_tokens: int) -> None:
    if num_tokens < 2:
        raise ValueError(f"the CTC topology needs at least 2 tokens (blank + one), got {num_tokens}")


def ctc_topo(num_tokens: int) -> Fsa:
    """Standard CTC topology over ``num_tokens`` labels as an acceptor of frame-label sequences.

    State k means "the last frame's label was k" (state 0: blank, also the start); every state is final
    and an arc i -> k with label k exists for every i, k, all with weight 0. As an acceptor it accepts
    every frame sequence once, so it is the denominator graph of a flat (uniform) P: with it the
    numerator equals plain CTC.
    """
    import torch

    from distill.graph.fsa import Fsa

    _check_v(num_tokens)
    v = num_tokens
    src = torch.arange(v).repeat_interleave(v)
    dst = torch.arange(v).repeat(v)
    return Fsa(src, dst, dst.clone(), torch.zeros(v * v), 0, torch.zeros(v))


def ctc_topo_fst(num_tokens: int) -> Any:
    """Standard CTC topology as a kaldifst transducer, frame label -> collapsed token.

    Labels are shifted by one (token k has FST label k + 1, 0 is epsilon). Arc i -> k reads k + 1 and
    writes k + 1, except that blanks (k = 0) and repeats (k = i) write epsilon. Arcs are sorted by
    olabel, as composition with the token LM on the right requires.
    """
    import kaldifst

    _check_v(num_tokens)
    fst = kaldifst.StdVectorFst()
    for _ in range(num_tokens):
        fst.add_state()
    fst.start = 0
    for i in range(num_tokens):
        fst.set_final(state=i, weight=0.0)
        for k in range(num_tokens):
            olabel = 0 if (k == 0 or k == i) else k + 1
            fst.add_arc(state=i, arc=kaldifst.StdArc(k + 1, olabel, 0.0, k))
    kaldifst.arcsort(fst, sort_type="olabel")
    return fst
