"""How far each streamable input scaling moves a trained model from per-utterance normalisation.

    python -m distill.bin.bench_wave_norm --model egs/inhouse/demo-teacher --wav-scp test/wav.scp \\
        [--gain-db 12] [--max-utts 300]

A teacher imported from an lv60-style checkpoint normalises each utterance (zero mean, unit variance
over the whole utterance), which a streaming student cannot do. This benchmark feeds one trained
model the same audio scaled per utterance (the reference, what the teacher sees) and scaled by each
causal candidate, and reports how far the candidate's outputs are from the reference's: mean
per-frame KL(P_ref || P_cand) of the output posteriors, the token error rate of the candidate's
greedy CTC tokens against the reference's greedy tokens, and the relative L2 error of the last hidden
layer. A student that learns to match the teacher on the reference input is off by about as much
when it is given the candidate input instead. ``--gain-db G`` applies a random gain in [-G, G] dB to
each utterance (recordings differ in level; the demo corpus barely does).

Candidates: ``fixed`` (the training set's pooled mean/std, what ``wave_norm: fixed`` does),
``fixed-median`` (the median of the per-utterance standard deviations), ``prefix-1s`` (mean/variance
of everything heard so far, in 20 ms blocks, with a 1 s prior at the pooled statistics),
``ema-1s`` / ``ema-3s`` (exponential moving averages per 20 ms block with that time constant, started
at the pooled statistics).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from distill.bench import UsageError
from distill.bench.wave_norm import run


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m distill.bin.bench_wave_norm", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a trained model (HF directory / fairseq .pt, CNN front-end)")
    ap.add_argument("--wav-scp", required=True, help="Kaldi wav.scp (paths) of the audio to compare on")
    ap.add_argument("--max-utts", type=int, default=300, help="at most this many utterances (default 300)")
    ap.add_argument("--gain-db", type=float, default=0.0, help="random gain per utterance in [-G, G] dB")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-threads", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        run(
            args.model,
            args.wav_scp,
            max_utts=args.max_utts,
            gain_db=args.gain_db,
            seed=args.seed,
            num_threads=args.num_threads,
        )
    except UsageError as e:
        ap.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
