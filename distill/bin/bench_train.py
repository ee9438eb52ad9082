"""Training throughput of stage-1 distillation (not a test): seconds of audio per second, and where a
step's time goes: teacher forward, student forward, each loss term (forward + backward), student
backward, optimizer.

    python -m distill.bin.bench_train --threads 1 --lang-dir data/lang     # CPU, demo-teacher -> demo-student
    python -m distill.bin.bench_train --device cuda --teacher w2v2-large --student student-12x384 \\
        --batch 8 --seconds 15 --precision bf16

Random weights and random audio (the cost does not depend on the values); the den graph is a bigram
P over Zipfian synthetic token sequences of the given vocabulary (as bench_lfmmi), or over a lang
dir's training transcripts (``--lang-dir``). Two measurements per step, alternating:

* **step**: the real task module (:class:`distill.train.tasks.DistillTask`) forward, one backward,
  AdamW, without the trainer's logging/checkpoints (what training runs);
* **breakdown**: the same update taken apart: the student's outputs are detached into leaves, each
  weighted loss term (:meth:`DistillObjective.term`) is run forward and backward on its own, then the
  student backward consumes the accumulated leaf gradients. The parts do the same work as the step.

Times are medians over ``--steps`` steps after ``--warmup``; on CPU the breakdown is in thread CPU
seconds (robust when the machine is shared; with ``--threads 1`` all work runs on this thread) next
to wall seconds.
"""

from __future__ import annotations

import argparse
from typing import Any

from distill.bench import UsageError
from distill.bench.train import run


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m distill.bin.bench_train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: the breakdown's CPU seconds cover all the work)"
    )
    ap.add_argument("--teacher", default="demo-teacher")
    ap.add_argument("--student", default="demo-student")
    ap.add_argument("--vocab", type=int, default=256, help="synthetic token statistics of this vocabulary")
    ap.add_argument("--lang-dir", help="build the den graph from this lang dir's training tokens instead")
    ap.add_argument("--batch", type=int, default=12, help="utterances per batch")
    ap.add_argument(
        "--seconds",
        type=float,
        default=5.0,
        help="seconds per utterance (default: 12 x 5 s = the 60 s batches of the demo stage 4)",
    )
    ap.add_argument("--steps", type=int, default=3, help="timed steps (medians are reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast (CUDA)")
    ap.add_argument("--alpha", type=float, default=0.8)
    ap.add_argument("--beta", type=float, default=0.8)
    ap.add_argument("--lfmmi-weight", type=float, default=0.0)
    ap.add_argument("--ctc-weight", type=float, default=0.0)
    ap.add_argument(
        "--freeze",
        nargs="*",
        default=[],
        metavar="PREFIX",
        help="task parameter name prefixes not trained, as train.freeze (e.g. student.feature_extractor.)",
    )
    ap.add_argument("--no-breakdown", action="store_true", help="time the real step only")
    ap.add_argument("--output", help="also write the numbers as JSON here")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except UsageError as e:
        ap.error(str(e))


if __name__ == "__main__":
    main()
