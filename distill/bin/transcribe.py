"""Transcribe audio files with any wav2vec 2.0 CTC model; prints ``utt-id text`` lines on stdout.

    python -m distill.bin.transcribe --model exp/student --lang-dir data/lang a.wav b.flac
    python -m distill.bin.transcribe --model teacher_hf/ --lang-dir data/lang --wav-scp data/test/wav.scp \\
        [--graph data/lang_test/HLG.fst] [--streaming --chunk-frames 24 --piece-ms 40]

Input: audio paths as arguments and/or ``--file-list`` (one path a line; the id is the file name
without extension), or a Kaldi ``--wav-scp`` (``utt-id path`` or ``utt-id cmd |``). Audio at other
rates is resampled to 16 kHz, multi-channel audio is averaged to mono. An utterance that cannot be read
or decoded (for any reason) is reported on stderr, naming it, and skipped; the others go on and the
summary on stderr counts them (exit status 1 only when nothing could be transcribed). Audio shorter than
one frame (25 ms) gives an empty line and a warning. A recording longer than ``--max-whole-seconds`` is
read in blocks and decoded in bounded memory (:mod:`distill.decode.long_audio`): streamed by a streaming
model (or with ``--streaming``), in overlapping windows by an offline model.

Model: a Hugging Face wav2vec 2.0 directory (``config.json`` + weights, e.g. one written by training
or ``distill.models.save_pretrained``) or a fairseq ``.pt``. ``--lang-dir`` gives the tokens
(``bpe.model`` or ``tokens.txt``); by default those the model directory carries (training and
``distill.bin.package_model`` write them). A model directory that carries tokens other than the
``--lang-dir``'s is refused.
Decoding: greedy CTC (default), or WFST one-best over ``--graph`` (a token graph or an HLG built by
``distill.bin.build_decode_graph``). ``--streaming`` runs the chunk-wise recogniser and, with
``--latency-json``, writes per-utterance latencies (defined in docs/decoding.md).
The work is :func:`distill.decode.transcribe.transcribe`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from distill.decode.transcribe import TranscribeOptions, transcribe

log = logging.getLogger("distill.bin.transcribe")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m distill.bin.transcribe",
        description="Transcribe audio with a wav2vec 2.0 CTC model (utt-id text on stdout).",
    )
    d = TranscribeOptions(model="")  # the defaults
    ap.add_argument("audio", nargs="*", help="audio files (the utterance id is the file name without extension)")
    ap.add_argument("--file-list", help="a file with one audio path per line")
    ap.add_argument("--wav-scp", help="Kaldi wav.scp: 'utt-id path' or 'utt-id command |' lines")
    ap.add_argument(
        "--pipe-timeout",
        type=float,
        default=d.pipe_timeout,
        metavar="SECONDS",
        help="kill a wav.scp 'command |' (and its child processes) that runs longer than this and "
        "skip its utterance (default: %(default)g)",
    )
    ap.add_argument("--model", required=True, help="HF model directory or fairseq .pt checkpoint")
    ap.add_argument("--lang-dir", help="lang dir with bpe.model or tokens.txt (default: the model directory)")
    ap.add_argument("--graph", help="decode with this WFST (token graph or HLG.fst) instead of greedy")
    ap.add_argument("--words", help="word table of --graph (default: from the graph's sidecar / directory)")
    ap.add_argument("--beam", type=float, default=d.beam)
    ap.add_argument("--max-active", type=int, default=d.max_active)
    ap.add_argument("--min-active", type=int, default=d.min_active)
    ap.add_argument("--acoustic-scale", type=float, default=d.acoustic_scale)
    ap.add_argument("--nj", type=int, default=d.nj, help="WFST decoding processes (non-streaming)")
    ap.add_argument("--batch-size", type=int, default=d.batch_size, help="utterances per forward pass (non-streaming)")
    ap.add_argument("--streaming", action="store_true", help="chunk-wise streaming recognition")
    ap.add_argument(
        "--chunk-frames", type=int, default=d.chunk_frames, help="streaming chunk in 20 ms frames (24 = 480 ms)"
    )
    ap.add_argument(
        "--left-chunks", type=int, default=d.left_chunks, help="streaming left context in chunks (default all)"
    )
    ap.add_argument("--piece-ms", type=float, default=d.piece_ms, help="streaming: audio piece size fed per call")
    ap.add_argument("--latency-json", help="streaming: write per-utterance latencies and a summary here")
    ap.add_argument(
        "--max-whole-seconds",
        type=float,
        default=d.max_whole_seconds,
        metavar="SECONDS",
        help="a longer recording is read in blocks and decoded in bounded memory: streamed by a "
        "streaming model (left context bounded to this many seconds unless --left-chunks), "
        "in overlapping windows by an offline model (default: %(default)g)",
    )
    ap.add_argument(
        "--window-seconds",
        type=float,
        default=d.window_seconds,
        metavar="SECONDS",
        help="offline model, long recording: window length (default: %(default)g)",
    )
    ap.add_argument(
        "--window-overlap-seconds",
        type=float,
        default=d.window_overlap_seconds,
        metavar="SECONDS",
        help="offline model, long recording: overlap of consecutive windows, half of it kept as "
        "context on each side (default: %(default)g)",
    )
    ap.add_argument("--device", default=d.device)
    ap.add_argument("--num-threads", type=int, default=d.num_threads, help="torch CPU threads (0 = torch default)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not (args.audio or args.file_list or args.wav_scp):
        ap.error("give audio files, --file-list or --wav-scp")
    if args.batch_size < 1 or args.nj < 1 or args.chunk_frames < 1 or args.piece_ms <= 0:
        ap.error("--batch-size, --nj, --chunk-frames and --piece-ms must be positive")
    opts = TranscribeOptions(**vars(args))
    try:
        opts.long_audio()
    except ValueError as e:
        ap.error(f"--max-whole-seconds / --window-seconds / --window-overlap-seconds: {e}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s [%(name)s] %(message)s")
    return transcribe(opts)


if __name__ == "__main__":
    sys.exit(main())
