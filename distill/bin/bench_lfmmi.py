"""Benchmark of the pure-PyTorch LF-MMI against the student model's training step (not a test).

    python -m distill.bin.bench_lfmmi [--device cpu|cuda] [--threads N] [--vocab 500 5000]

For each vocabulary size: a bigram den graph from synthetic but realistic token statistics (Zipfian
unigrams, a few likely successors per token), B utterances of ``--seconds`` s (T = 50 frames/s),
peaky random log-softmax scores and ~5 tokens/s references. Prints the time of LF-MMI
forward+backward (and of the distillation loss), the time of the student's forward+backward
(``distill.models.build_model("student-12x384")``), their ratio, and the loss's peak memory next to
the size of the score tensor and the graph. The logic lives in :mod:`distill.bench.lfmmi`.

Memory: on CUDA ``torch.cuda.max_memory_allocated`` around the loss; on CPU the torch profiler's
allocator events (``profile_memory=True``: "Total Allocated" running total of every tensor allocated
and freed inside the profiled region), in a separate untimed run.
"""

from __future__ import annotations

import argparse

import torch

from distill.bench.lfmmi import run


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--vocab", type=int, nargs="+", default=[500, 5000])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--utts", type=int, default=0, help="synthetic training utterances (0: by V)")
    ap.add_argument("--method", choices=["kaldifst", "direct"], default=None)
    ap.add_argument(
        "--precision",
        choices=["auto", "float64", "float32"],
        default="auto",
        help="internal precision of the denominator pass (auto: the loss default, float32 for float32 scores)",
    )
    ap.add_argument("--skip-student", action="store_true")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    run(args)


if __name__ == "__main__":
    main()
