"""Graphs as tensors: the `Fsa` container, the CTC topology, token/word n-gram LMs (ARPA) and the
LF-MMI denominator graph (CTC topology composed with a back-off token n-gram)."""
from distill.graph.fsa import Fsa, connect, merge_parallel_arcs, remove_epsilon
from distill.graph.ngram import NgramLM, estimate_ngram
from distill.graph.topo import ctc_topo, ctc_topo_fst

__all__ = ["Fsa", "connect", "merge_parallel_arcs", "remove_epsilon", "NgramLM", "estimate_ngram",
           "ctc_topo", "ctc_topo_fst"]
