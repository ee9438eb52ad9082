"""Transcribe audio files with any wav2vec 2.0 CTC model; prints ``utt-id text`` lines on stdout.

    python -m distill.bin.transcribe --model exp/student a.wav b.flac            # tokens from the model dir
    python -m distill.bin.transcribe --model teacher_hf/ --lang-dir data/lang --wav-scp wav.scp \\
        [--graph data/lang_test/HLG.fst] [--timestamps] [--streaming --partial --piece-ms 40]

Input: audio paths, ``--file-list`` (one path a line; the id is the file name without extension) or a
Kaldi ``--wav-scp`` (``utt-id path`` or ``utt-id cmd |``), resampled to 16 kHz mono. A bad utterance is
reported on stderr and skipped (exit status 1 only when nothing could be transcribed); a recording longer
than ``--max-whole-seconds`` is decoded in bounded memory. Model: an HF wav2vec 2.0 directory (its
``tokens.txt`` gives the tokens unless ``--lang-dir``) or a fairseq ``.pt``. Greedy CTC, or WFST one-best
over ``--graph``. ``--streaming`` (a streaming model only; exit status 2 otherwise) runs the chunk-wise
recogniser, ``--partial`` shows partial results on stderr, ``--timestamps`` prints JSON lines with word
times (format in ``--help``). Details: docs/decoding.md; the work is
:func:`distill.decode.transcribe.transcribe`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from distill.decode.transcribe import TranscribeOptions, transcribe


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m distill.bin.transcribe",
        description="Transcribe audio with a wav2vec 2.0 CTC model (utt-id text on stdout).",
        epilog="--timestamps prints one JSON line per utterance instead of 'utt-id text': "
        '{"utt": ID, "text": TEXT, "words": [{"word": W, "start": SECONDS, "end": SECONDS}, ...]} '
        "(times from the CTC frames, 20 ms apart). --partial prints 'utt-id [partial] text' lines on stderr "
        "whenever --streaming's text changes; the final lines on stdout stay as they are.",
    )
    d = TranscribeOptions(model="")  # the defaults
    ap.add_argument("audio", nargs="*", help="audio files (the utterance id is the file name without extension)")
    ap.add_argument("--model", required=True, help="HF model directory or fairseq .pt checkpoint (required)")
    for flag, help_ in (
        ("--file-list", "a file with one audio path per line (default: none)"),
        ("--wav-scp", "Kaldi wav.scp: 'utt-id path' or 'utt-id command |' lines (default: none)"),
        ("--lang-dir", "lang dir with tokens.txt (and bpe.model) (default: the tokens the model directory carries)"),
        ("--graph", "decode with this WFST (token graph or HLG.fst) instead of greedy (default: greedy CTC)"),
        ("--words", "word table of --graph (default: from the graph's sidecar / directory)"),
        ("--latency-json", "streaming: write per-utterance latencies and a summary here (default: none)"),
    ):
        ap.add_argument(flag, help=help_)
    for flag, kind, help_ in (
        ("--pipe-timeout", float, "kill a wav.scp 'command |' (and its children) running longer, skip it"),
        ("--beam", float, "WFST beam"),
        ("--max-active", int, "WFST max active states"),
        ("--min-active", int, "WFST min active states"),
        ("--acoustic-scale", float, "WFST acoustic scale"),
        ("--nj", int, "WFST decoding processes (non-streaming)"),
        ("--batch-size", int, "utterances per forward pass (non-streaming)"),
        ("--piece-ms", float, "streaming: audio fed per call, in ms"),
        ("--max-whole-seconds", float, "longer recordings: read in blocks, streamed (streaming model) or windowed"),
        ("--window-seconds", float, "offline model, long recording: window length"),
        ("--window-overlap-seconds", float, "offline model, long recording: overlap of consecutive windows"),
        ("--num-threads", int, "torch CPU threads, 0 = torch's choice"),
    ):
        default = getattr(d, flag[2:].replace("-", "_"))
        ap.add_argument(flag, type=kind, default=default, help=f"{help_} (default: %(default)g)")
    for flag, help_ in (
        ("--chunk-frames", "streaming chunk in 20 ms frames, 24 = 480 ms (default: the model's own)"),
        ("--left-chunks", "streaming left context in chunks (default: the model's own)"),
    ):
        ap.add_argument(flag, type=int, default=None, help=help_)
    for flag, help_ in (
        ("--timestamps", "print a JSON line with word start/end times per utterance instead of 'utt-id text'"),
        ("--streaming", "chunk-wise streaming recognition; only for a model trained for streaming"),
        ("--partial", "with --streaming: print 'utt-id [partial] text' on stderr as the audio is consumed"),
    ):
        ap.add_argument(flag, action="store_true", help=f"{help_} (default: off)")
    ap.add_argument("--device", default=d.device, help="torch device (default: %(default)s)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not (args.audio or args.file_list or args.wav_scp):
        ap.error("give audio files, --file-list or --wav-scp")
    if args.batch_size < 1 or args.nj < 1 or (args.chunk_frames or 1) < 1 or args.piece_ms <= 0:
        ap.error("--batch-size, --nj, --chunk-frames and --piece-ms must be positive")
    if args.partial and not args.streaming:
        ap.error("--partial needs --streaming")
    opts = TranscribeOptions(**vars(args))
    try:
        opts.long_audio()
    except ValueError as e:
        ap.error(f"--max-whole-seconds / --window-seconds / --window-overlap-seconds: {e}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s [%(name)s] %(message)s")
    return transcribe(opts)


if __name__ == "__main__":
    sys.exit(main())
