"""Export a trained model for deployment: ONNX (offline and streaming, fp32 and int8), a sherpa-onnx
form, tokens, the HLG graph and a model card (recipe stage 7).

    python -m distill.bin.export --model exp/stage2/model --lang-dir data/lang --graph-dir data/lang_test \\
        --results exp/results.json --out exp/export/stage2

Writes ``OUT/offline.onnx`` + ``offline.int8.onnx``; for a streaming student ``streaming.onnx`` +
``streaming.int8.onnx`` (one chunk step, state in and out; a full-context model gets a note instead);
``sherpa-onnx/model.onnx`` + ``model.int8.onnx`` + ``tokens.txt`` (for
``sherpa_onnx.OfflineRecognizer.from_omnilingual_asr_ctc``); ``tokens.txt``; ``HLG.fst`` + ``words.txt``
with ``--graph-dir``; ``README.md`` (the model card, with stage 6's WERs given ``--results``) and
``export.json``. Every ONNX file carries its metadata (vocab size, frame shift, input scaling, chunk,
state names and shapes). How to run each file: docs/deploy.md. The work is
:func:`distill.models.bundle.export_bundle`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from distill.models.bundle import ExportError, export_bundle


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m distill.bin.export",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--model", required=True, type=Path, help="trained model directory (HF format)")
    ap.add_argument("--lang-dir", required=True, type=Path, help="lang dir of the model's tokens")
    ap.add_argument("--out", required=True, type=Path, help="export directory (replaced)")
    ap.add_argument("--graph-dir", type=Path, help="directory with HLG.fst (+ words.txt), e.g. data/lang_test")
    ap.add_argument("--results", type=Path, help="stage 6's results.json: the card states this model's WERs")
    ap.add_argument(
        "--chunk-frames",
        type=int,
        help="streaming chunk in 20 ms frames (default: the trained one)",
    )
    ap.add_argument("--left-chunks", type=int, help="streaming left context in chunks (default: the trained one)")
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 files")
    ap.add_argument("--name", default="", help="title of the model card (default: the directory name)")
    ap.add_argument("--command", default="", help="the command(s) that made the model, for the card")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [%(name)s] %(message)s")
    if args.chunk_frames is not None and args.chunk_frames <= 0:
        print("error: --chunk-frames must be > 0", file=sys.stderr)
        return 2
    try:
        card = export_bundle(
            args.model,
            args.lang_dir,
            args.out,
            graph_dir=args.graph_dir,
            results=args.results,
            chunk_frames=args.chunk_frames,
            left_chunks=args.left_chunks,
            int8=not args.no_int8,
            name=args.name,
            command=args.command,
        )
    except (ExportError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: card[k] for k in ("name", "files", "sizes_mb", "notes")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
