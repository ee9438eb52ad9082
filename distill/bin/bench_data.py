"""Scale benchmark of stages 0–2 and the training data path on synthetic GigaSpeech-format metadata
(not a test): wall time and peak RSS per stage at several corpus sizes, and how they grow.

    python -m distill.bin.bench_data --hours 100 1000 10000 [--work-dir DIR] [--nj 2] [--keep-outputs]

For each size it writes a GigaSpeech release (``GigaSpeech.json`` + ``audio/``) whose recordings all
point at a few shared real Opus files, so the metadata has the real size (GigaSpeech XL: 10,000 h,
~8.3 M segments of ~4.3 s in ~38 k recordings of ~16 min) while the audio is a few megabytes (stage
0 probes each file once). Releases are kept in the work dir and reused by later runs.
Transcripts are Zipf-distributed pseudo-words (vocabulary growing with size as in real text) with
GigaSpeech's punctuation and garbage tags. Train segments carry nested subset tags ({XL} always,
{L}/{M}/{S}/{XS} for 25/10/2.5/0.1 %), plus small DEV and TEST parts.

Then it runs what ``egs/gigaspeech/run.sh`` runs for stages 0–2, with the recipe's configs, each as
a child process (``distill.bin.prepare_manifests``, ``prepare_lang``, ``build_den_graph``) so that the
peak RSS of each stage is its own (``os.wait4``), and a fourth step, ``sampler``, that opens the
stage-1 training cuts lazily the way the trainer does (``make_dataloader``), reports the time to the
first batches and checks the DDP split: for ``world_size`` ranks, the first ``K`` batches of each
rank are disjoint and together are exactly the first ``K x world_size`` batches of the shared batch
stream. Results are printed as a Markdown table (wall and CPU seconds, peak RSS, and the growth
exponent of time and RSS between sizes: 1.0 = linear) and written to ``<work_dir>/results.json``
(with the disk size of the outputs); each stage's log is kept under ``<work_dir>/<hours>h/``.
Results and what they mean for a 10,000 h run: docs/data.md, "Scale".
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from distill.bench.data import REPO, SEGMENTS_PER_RECORDING, run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, nargs="+", default=[100.0, 1000.0, 10000.0])
    ap.add_argument(
        "--work-dir",
        default=str(Path(tempfile.gettempdir()) / "distill_bench_data"),
        help="releases (reused across runs; 10,000 h: 2 GB) and stage outputs",
    )
    ap.add_argument(
        "--conf-dir",
        default=str(REPO / "egs" / "gigaspeech" / "conf"),
        help="the stage configs (data.yaml, lang.yaml, den.yaml); default: the GigaSpeech recipe's",
    )
    ap.add_argument("--nj", type=int, default=2)
    ap.add_argument("--vocab-size", type=int, default=200_000, help="pseudo-words the transcripts draw from")
    ap.add_argument("--pool-files", type=int, default=2, help="real Opus files all recordings share")
    ap.add_argument("--segments-per-recording", type=int, default=SEGMENTS_PER_RECORDING)
    ap.add_argument(
        "--stages",
        default="0,1,2,sampler",
        help="comma-separated subset of 0,1,2,sampler (a later stage reads the earlier ones' outputs: --keep-outputs)",
    )
    ap.add_argument("--keep-outputs", action="store_true", help="keep the manifests/lang dir of each size")
    ap.add_argument("--check-sampler", metavar="CUTS", help=argparse.SUPPRESS)
    ap.add_argument("--sampler-max-duration", type=float, default=600.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.check_sampler:
        # the sampler step, run as a child of the benchmark; imported here because it loads torch and
        # lhotse (~200 MB), which the driver measuring the stages' peak RSS must not (see run_child)
        from distill.bench.sampler import check_sampler

        print(json.dumps(check_sampler(args.check_sampler, args.sampler_max_duration)))
        return 0
    return run(
        args.hours,
        args.work_dir,
        args.conf_dir,
        nj=args.nj,
        vocab_size=args.vocab_size,
        pool_files=args.pool_files,
        segments_per_recording=args.segments_per_recording,
        stages=args.stages,
        keep_outputs=args.keep_outputs,
    )


if __name__ == "__main__":
    sys.exit(main())
