"""Graphs as tensors: the `Fsa` container, the CTC topology, token/word n-gram LMs (ARPA) and the
LF-MMI denominator graph (CTC topology composed with a back-off token n-gram)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Re-exported lazily (PEP 562), not an in-function import of a dependency: the decode-graph builder needs
# only the kaldifst/kaldilm parts (ngram, ctc_topo_fst), and importing torch through fsa would be most of
# its run time.
_EXPORTS = {
    "Fsa": "fsa",
    "connect": "fsa",
    "merge_parallel_arcs": "fsa",
    "remove_epsilon": "fsa",
    "NgramLM": "ngram",
    "estimate_ngram": "ngram",
    "ctc_topo": "den",
    "ctc_topo_fst": "topo",
}

if TYPE_CHECKING:
    from distill.graph.den import ctc_topo
    from distill.graph.fsa import Fsa, connect, merge_parallel_arcs, remove_epsilon
    from distill.graph.ngram import NgramLM, estimate_ngram
    from distill.graph.topo import ctc_topo_fst


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"distill.graph.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'distill.graph' has no attribute {name!r}")


__all__ = [
    "Fsa",
    "connect",
    "merge_parallel_arcs",
    "remove_epsilon",
    "NgramLM",
    "estimate_ngram",
    "ctc_topo",
    "ctc_topo_fst",
]
