"""The standard CTC topology (blank = 0) as a kaldifst transducer, for the denominator and decoding graphs.

It does not import torch: the decode-graph builder needs only kaldifst/kaldilm. The same topology as an
`Fsa` acceptor (the denominator graph of a flat P) is :func:`distill.graph.den.ctc_topo`."""

from __future__ import annotations

from typing import Any

import kaldifst

__all__ = ["check_num_tokens", "ctc_topo_fst"]


def check_num_tokens(num_tokens: int) -> None:
    if num_tokens < 2:
        raise ValueError(f"the CTC topology needs at least 2 tokens (blank + one), got {num_tokens}")


def ctc_topo_fst(num_tokens: int) -> Any:
    """Standard CTC topology as a kaldifst transducer, frame label -> collapsed token.

    Labels are shifted by one (token k has FST label k + 1, 0 is epsilon). Arc i -> k reads k + 1 and
    writes k + 1, except that blanks (k = 0) and repeats (k = i) write epsilon. Arcs are sorted by
    olabel, as composition with the token LM on the right requires.
    """
    check_num_tokens(num_tokens)
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
