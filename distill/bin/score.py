"""Score hypotheses against references given as Kaldi ``text`` files.

    python -m distill.bin.score --ref data/test/text --hyp exp/decode/text \\
        [--mode sclite|levenshtein] [--normalize gigaspeech] \\
        [--out-dir D --test-set NAME --suffix S [--key K]]

Prints ``%WER x.xx [ E / N, I ins, D del, S sub ]`` (Kaldi compute-wer style), ``%SER`` and the number
of utterances scored. With ``--out-dir`` it also writes icefall's ``recogs-``, ``errs-`` and
``wer-summary-<test-set>-<suffix>.txt``. Bad input (non-UTF-8 line, repeated id, hypothesis without
reference, empty reference with ``--strict``) exits with status 1 and a message naming the utterance.
The work is :func:`distill.scoring.text_files.score_text_files`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from distill.log import setup_logging
from distill.scoring import format_wer
from distill.scoring.text_files import score_text_files

log = logging.getLogger("distill.bin.score")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m distill.bin.score",
        description="Word error rate of a Kaldi text file of hypotheses against one of references.",
    )
    ap.add_argument("--ref", required=True, help="reference Kaldi text file (utt-id words...)")
    ap.add_argument("--hyp", required=True, help="hypothesis Kaldi text file (utt-id words...)")
    ap.add_argument(
        "--mode",
        choices=["sclite", "levenshtein"],
        default="sclite",
        help="sclite: sclite's exact counts (default); levenshtein: Kaldi compute-wer's",
    )
    ap.add_argument(
        "--normalize",
        choices=["none", "gigaspeech"],
        default="none",
        help="text normalisation applied to both sides before scoring",
    )
    ap.add_argument(
        "--case-sensitive",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compare words case-sensitively (default: no for sclite, yes for levenshtein)",
    )
    ap.add_argument("--strict", action="store_true", help="fail on empty references")
    ap.add_argument("--out-dir", help="write recogs-/errs-/wer-summary- files here")
    ap.add_argument("--test-set", help="test set name for the file names (with --out-dir)")
    ap.add_argument("--suffix", help="decoding setting for the file names (with --out-dir)")
    ap.add_argument("--key", help="setting name in the wer-summary file (default: the suffix)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.out_dir and not (args.test_set and args.suffix):
        ap.error("--out-dir needs --test-set and --suffix")
    setup_logging(None, level=logging.WARNING)
    normalize = None if args.normalize == "none" else args.normalize
    try:
        res = score_text_files(
            args.ref,
            args.hyp,
            mode=args.mode,
            normalize=normalize,
            case_sensitive=args.case_sensitive,
            strict=args.strict,
            out_dir=args.out_dir,
            test_set=args.test_set,
            suffix=args.suffix,
            key=args.key,
        )
    except (OSError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_wer(res))
    print(f"%SER {res['ser']:.2f} [ {res['num_sent_errs']} / {res['num_utts']} ]")
    print(f"Scored {res['num_utts']} sentences, {len(res['missing_hyps'])} not present in hyp.")
    if args.out_dir:
        for path in res["files"].values():
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
