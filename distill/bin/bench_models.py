"""Benchmark the model family on CPU: parameters, size on disk, real-time factor, streaming latency.

    python -m distill.bin.bench_models [--config conf/bench.yaml] [key=value ...]
    python -m distill.bin.bench_models models=[w2v2-large,student-10x384-rcnn] repeats=1

Random weights (speed does not depend on them). For each thread setting (1 and all cores) it times
the full-utterance forward on ``seconds`` of audio (median of ``repeats`` after a warm-up) for the
teacher, the students, the deployable student (``deploy``) in fp32 / int8 torch and fp32 / int8 ONNX
(Fbank computed by kaldi-native-fbank, timed), and the per-chunk compute of streaming forms. Prints
Markdown tables with ratios against ``teacher``; ``output`` also writes them to a file.
"""

from __future__ import annotations

from distill.bench.models import BenchConfig, run
from distill.config import parse_cli
from distill.log import setup_logging


def main(argv: list[str] | None = None) -> None:
    cfg = parse_cli(BenchConfig, argv)
    setup_logging(cfg.log_file)
    run(cfg)


if __name__ == "__main__":
    main()
