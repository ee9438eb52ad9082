"""Build the decoding graphs: a word n-gram LM and HLG.fst, plus the token graph HP.fst.

    python -m distill.bin.build_decode_graph --config conf/decode_graph.yaml lang_dir=data/lang out_dir=data/lang_test
    python -m distill.bin.build_decode_graph lang_dir=data/lang out_dir=data/lang_test lm_arpa=3-gram.pruned.1e-7.arpa

Word LM: ``lm_arpa`` when given (e.g. LibriSpeech's ``3-gram.pruned.1e-7.arpa``), else an ``lm_order``
n-gram estimated from ``lang_dir/train_text.txt`` with :func:`distill.graph.ngram.estimate_ngram`
(written to ``out_dir/G.arpa``). With ``extend_lexicon`` (default) the LM's words that are not in the
lang dir's lexicon are added, spelled by the tokenizer, so the decoder can output them; words whose
spelling needs ``<unk>`` are left out (counted). Writes ``out_dir/{words.txt, lexicon.txt, HLG.fst,
HLG.fst.json}`` and, when ``lang_dir/P.arpa`` exists, ``out_dir/{HP.fst, HP.fst.json}``. Prints one
summary line.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from distill.config import dump_config, parse_cli
from distill.decode.graph import GraphError
from distill.decode.graph_stage import DecodeGraphConfig, build_decode_graphs
from distill.log import setup_logging

__all__ = ["DecodeGraphConfig", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_cli(DecodeGraphConfig, argv)
    setup_logging(cfg.log_file)
    dump_config(cfg, Path(cfg.out_dir) / "decode_graph.yaml")
    try:
        s = build_decode_graphs(cfg)
    except (GraphError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    hp = f", HP.fst {s['hp_states']} states/{s['hp_arcs']} arcs" if "hp" in s else ""
    print(
        f"built {s['hlg']}: {s['hlg_states']} states/{s['hlg_arcs']} arcs, {s['words']} words "
        f"(+{s['words_added_from_lm']} from the LM), LM: {s['lm']}{hp} in {s['seconds']} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
