"""Decoding: greedy CTC, WFST one-best with kaldi-decoder (token graph H o P, or HLG), streaming
with latency measurement, and result reports.

    from distill.decode import ctc_greedy, WfstDecoder, WfstOptions, stream_decode

    hyps = ctc_greedy(out.scores, out.lengths)                       # token ids per utterance
    with WfstDecoder("data/lang_test/HLG.fst", WfstOptions(beam=16)) as dec:
        words = [dec.symbols_to_words(r.symbols) for r in dec.decode_batch(out.scores, out.lengths, nj=4)]

Graphs are built with :mod:`distill.decode.graph` (``python -m distill.bin.build_decode_graph``); stage 6
(decode, score, report) is :func:`distill.decode.evaluate.run`, the ``transcribe`` command
:func:`distill.decode.transcribe.transcribe`.
"""

import importlib
from typing import Any

# Re-exported lazily (PEP 562): the decode-graph builder and the WFST worker processes import single
# modules of this package, which must not pull in torch through the others.
_EXPORTS = {
    "collapse": "greedy",
    "ctc_greedy": "greedy",
    "GreedyStream": "greedy",
    "WfstOptions": "wfst",
    "WfstResult": "wfst",
    "WfstDecoder": "wfst",
    "WfstStream": "wfst",
    "GraphInfo": "graph",
    "GraphError": "graph",
    "build_token_graph": "graph",
    "build_hlg": "graph",
    "load_graph": "graph",
    "save_graph": "graph",
    "StreamResult": "streaming",
    "stream_decode": "streaming",
    "summarize_latencies": "streaming",
    "read_audio": "audio",
    "resample": "audio",
    "AudioError": "audio",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"distill.decode.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'distill.decode' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
