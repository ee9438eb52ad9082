"""Stage 0: corpus → lhotse manifests (recordings, supervisions, cuts per part) + ``splits.yaml``.

    python -m distill.bin.prepare_manifests --config conf/data.yaml corpus_dir=<dir> \\
        out_dir=data/manifests [nj=N] [download=true]

Bad items (missing/unreadable/truncated audio, empty or non-UTF-8 transcripts, duplicate or
unmatched ids) are dropped and counted; the summary is printed and written to ``summary.json``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from distill.config import parse_cli
from distill.data.prep_common import DataPrepError
from distill.data.prepare import PrepareManifestsConfig, check_inputs, prepare_manifests
from distill.log import setup_logging

__all__ = ["PrepareManifestsConfig", "main"]

log = logging.getLogger("prepare_manifests")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(PrepareManifestsConfig, argv, description=__doc__, check=check_inputs)
    setup_logging(cfg.log_file or Path(cfg.out_dir) / "prepare_manifests.log")
    try:
        prepare_manifests(cfg)
    except DataPrepError as e:
        log.error("error: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
