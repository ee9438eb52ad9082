"""Package a trained model for shipping: a Hugging Face wav2vec 2.0 directory with its tokens, training
record and a measured test WER.

    python -m distill.bin.package_model --model exp/teacher_scratch/model --lang-dir data/lang \\
        --train-dir exp/teacher_scratch --out demo-teacher --dtype float16 \\
        --test-dir download/demo/kaldi/test --command "python -m distill.bin.train --config ..."

The output directory holds ``config.json`` + ``model.safetensors`` (``--dtype``: float32 by default;
float16 halves the size, loading casts back to float32), ``bpe.model``/``tokens.txt`` of the lang dir (so
``distill.bin.transcribe --model OUT`` needs nothing else), ``train.yaml``, ``train_log.jsonl`` and
``train.log`` from ``--train-dir``, ``card.json`` (parameters, size, dtype, the command, training
time and updates, greedy test WER) and a ``README.md`` that states the same numbers.

The package is a plain transformers model (``pipeline("automatic-speech-recognition", model=OUT)``
gives the text of ``transcribe``; the tokenizer files and the input scaling are written for that). A
streaming student is refused (transformers would run it full-context): use ``distill.bin.export``.

The WER is measured on the *packaged* weights through the user's path: ``distill.bin.transcribe`` (greedy
CTC) on ``<test-dir>/wav.scp``, scored with :func:`distill.scoring.wer` against ``<test-dir>/text``.
The work is :func:`distill.models.package.package`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from distill.models.package import DTYPES, PackageError, package

log = logging.getLogger("distill.bin.package_model")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m distill.bin.package_model", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, type=Path, help="trained model directory (HF format)")
    ap.add_argument("--out", required=True, type=Path, help="package directory (replaced)")
    ap.add_argument("--lang-dir", required=True, type=Path, help="lang dir of the model's tokens")
    ap.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPES,
        help="storage type of the weights (float16 halves the size; loading casts back to float32) [%(default)s]",
    )
    ap.add_argument("--train-dir", type=Path, help="the training exp dir (config and logs are copied)")
    ap.add_argument("--test-dir", type=Path, help="Kaldi test dir (wav.scp, text) to measure the greedy WER")
    ap.add_argument("--test-set", default="", help="name of the test set in the card")
    ap.add_argument("--command", default="", help="the command(s) that made the model, for the card")
    ap.add_argument("--name", default="", help="title of the card (default: the directory name)")
    ap.add_argument("--description", default="", help="a paragraph for the README")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [%(name)s] %(message)s")
    try:
        card = package(
            args.model,
            args.out,
            args.lang_dir,
            args.dtype,
            args.train_dir,
            args.test_dir,
            args.command,
            args.name,
            args.description,
            args.test_set,
        )
    except (PackageError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in card.items() if k != "description"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
