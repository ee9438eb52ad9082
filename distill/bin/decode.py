"""Stage 6: decode every test set with every trained model, score, and write the results report.

    python -m distill.bin.decode --config conf/decode.yaml [device=cuda nj=8 max_utts=200 ...]

``models`` lists the rows (``name``, ``path``, ``form``: fp32 | int8 | onnx | onnx-int8, optional
``chunks`` for streaming models); ``methods`` the decoders (greedy, hlg, hp; graphs from
``distill.bin.build_decode_graph`` in ``graph_dir``). Writes ``<out_dir>/<model>/{recogs,errs,wer-summary}-
<test set>-<method>.txt`` and ``result.json``, then ``<exp_root>/RESULTS.md``, ``results.json`` and PNG
plots, and prints the tables and the plot paths. A row whose model does not exist is reported as "not
trained". Exit status: 2 for a configuration error, 1 for bad input (an invalid reference, a missing
graph, a model whose outputs do not match the lang dir), 0 otherwise. See docs/stage6.md; the stage is
:func:`distill.decode.evaluate.run`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from distill.config import dump_config, parse_cli
from distill.decode.config import DecodeConfig, check_config
from distill.decode.evaluate import run
from distill.log import setup_logging
from distill.models import CheckpointError

log = logging.getLogger("distill.bin.decode")


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_cli(DecodeConfig, argv, check=check_config)
    out = Path(cfg.out_dir)
    setup_logging(cfg.log_file or out / "decode.log")
    dump_config(cfg, out / "decode.yaml")
    try:
        res = run(cfg)
    except (ValueError, OSError, CheckpointError) as e:
        log.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        return 1
    md = res["markdown"]
    # the result tables (everything before the appendix sections)
    print(md.split("\n## WER by decoding method", 1)[0].rstrip())
    print()
    for key, p in res["paths"].items():
        print(f"{key}: {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
