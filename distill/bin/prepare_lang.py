"""Stage 1: normalise transcripts, train the tokenizer, filter cuts; write the lang dir.

    python -m distill.bin.prepare_lang --config conf/lang.yaml manifest_dir=data/manifests lang_dir=data/lang

Writes ``tokens.txt words.txt lexicon.txt [bpe.model] train_text.txt train_token_ids.txt``, the
filtered cuts (``cuts_train.jsonl.gz``, ``cuts_dev.jsonl.gz``, ``cuts_test_<part>.jsonl.gz``; the
supervision text is normalised, the original is kept in ``custom["orig_text"]``) indexed by
``cuts.yaml``, and ``summary.json`` with what was dropped and why.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from distill.config import parse_cli
from distill.data.lang import PrepareLangConfig, prepare_lang
from distill.data.prep_common import DataPrepError
from distill.data.tokenizer import TokenizerError
from distill.log import setup_logging

__all__ = ["PrepareLangConfig", "main"]

log = logging.getLogger("prepare_lang")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(PrepareLangConfig, argv, description=__doc__)
    setup_logging(cfg.log_file or Path(cfg.lang_dir) / "prepare_lang.log")
    try:
        prepare_lang(cfg)
    except (DataPrepError, TokenizerError) as e:
        log.error("error: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
