"""Stage 2: estimate the token n-gram P and build the LF-MMI denominator graph.

    python -m distill.bin.build_den_graph --config conf/den.yaml lang_dir=data/lang

Reads ``<lang_dir>/tokens.txt`` and ``<lang_dir>/train_token_ids.txt``; writes ``<lang_dir>/P.arpa``
and ``<lang_dir>/den.pt`` (a :class:`distill.graph.Fsa`), and prints a one-line summary.
"""

from __future__ import annotations

from pathlib import Path

from distill.config import parse_cli
from distill.graph.den_stage import BuildDenGraphConfig, DenStageError, build_lang_den_graph
from distill.log import setup_logging

__all__ = ["BuildDenGraphConfig", "main"]


def main(argv: list[str] | None = None) -> None:
    cfg = parse_cli(BuildDenGraphConfig, argv)
    setup_logging(cfg.log_file or Path(cfg.lang_dir) / "log" / "build_den_graph.log")
    try:
        summary = build_lang_den_graph(cfg)
    except DenStageError as e:
        raise SystemExit(f"error: {e}") from None
    print(summary)


if __name__ == "__main__":
    main()
