"""Stage 2: estimate the token n-gram P of a lang dir and build its LF-MMI denominator graph.

Reads ``<lang_dir>/tokens.txt`` and ``<lang_dir>/train_token_ids.txt``; writes ``<lang_dir>/P.arpa``
and ``<lang_dir>/den.pt`` (a :class:`distill.graph.Fsa`). CLI: ``python -m distill.bin.build_den_graph``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from distill.config import dump_config, path_field
from distill.graph.den import TokenIdsStats, build_den_graph, iter_token_ids, read_tokens

__all__ = ["BuildDenGraphConfig", "DenStageError", "build_lang_den_graph"]

log = logging.getLogger("distill.build_den_graph")


@dataclass
class BuildDenGraphConfig:
    """Build the LF-MMI denominator graph (CTC topology composed with a back-off token n-gram P)."""

    lang_dir: str = path_field()  # holds tokens.txt and train_token_ids.txt; receives P.arpa, den.pt
    order: int = 2  # n-gram order of P (2 = bigram, as icefall's MMI recipes)
    smoothing: Literal["kneser_ney", "witten_bell"] = "kneser_ney"  # interpolated modified KN or WB
    min_count: int = 1  # prune n-grams of order >= 2 seen fewer times (their mass goes to back-off)
    method: Literal["kaldifst", "direct"] = "kaldifst"  # composition via kaldifst, or vectorised (large V)
    tokens: str = "tokens.txt"  # file names inside lang_dir
    train_token_ids: str = "train_token_ids.txt"
    arpa: str = "P.arpa"
    output: str = "den.pt"
    log_file: str | None = None  # default: <lang_dir>/log/build_den_graph.log


class DenStageError(ValueError):
    """A bad setting or input of stage 2 (nothing written); the CLI prints ``error: <message>``."""


def build_lang_den_graph(cfg: BuildDenGraphConfig) -> str:
    """Write P.arpa, den.pt and the effective config into ``cfg.lang_dir``; returns a one-line summary."""
    lang = Path(cfg.lang_dir)
    if cfg.order < 1:
        raise DenStageError(f"order must be >= 1, got {cfg.order}")
    if cfg.min_count < 1:
        raise DenStageError(f"min_count must be >= 1, got {cfg.min_count}")
    t0 = time.time()
    ids_path = lang / cfg.train_token_ids
    try:
        tokens = read_tokens(lang / cfg.tokens)
        if not ids_path.is_file():
            raise FileNotFoundError(f"training token file '{ids_path}' does not exist")
        # P's counts are taken in one pass over the file, one line in memory at a time
        stats = TokenIdsStats()
        den = build_den_graph(
            tokens,
            iter_token_ids(ids_path, len(tokens), stats),
            lang / cfg.arpa,
            cfg.order,
            cfg.smoothing,
            cfg.min_count,
            cfg.method,
        )
    except (OSError, ValueError) as e:
        raise DenStageError(str(e)) from None
    if stats.empty:
        log.warning("%s: skipped %d empty lines", ids_path, stats.empty)
    log.info("%d training utterances, %d tokens, V = %d", stats.utterances, stats.tokens, len(tokens))
    den.save(lang / cfg.output)
    dump_config(cfg, lang / "log" / "build_den_graph.yaml")
    return (
        f"den graph: {den.num_states} states, {den.num_arcs} arcs, V = {len(tokens)} "
        f"(P: order {cfg.order}, {cfg.smoothing}, min_count {cfg.min_count}; {time.time() - t0:.1f} s) "
        f"-> {lang / cfg.output}, {lang / cfg.arpa}"
    )
