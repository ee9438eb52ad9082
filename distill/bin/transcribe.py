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
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from distill.data.pipe import DEFAULT_PIPE_TIMEOUT
from distill.data.tokenizer import Tokenizer, check_same_tokens, read_token_inventory
from distill.decode.long_audio import LongAudioOptions

log = logging.getLogger("distill.bin.transcribe")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m distill.bin.transcribe",
                                 description="Transcribe audio with a wav2vec 2.0 CTC model (utt-id text on stdout).")
    ap.add_argument("audio", nargs="*", help="audio files (the utterance id is the file name without extension)")
    ap.add_argument("--file-list", help="a file with one audio path per line")
    ap.add_argument("--wav-scp", help="Kaldi wav.scp: 'utt-id path' or 'utt-id command |' lines")
    ap.add_argument("--pipe-timeout", type=float, default=DEFAULT_PIPE_TIMEOUT, metavar="SECONDS",
                    help="kill a wav.scp 'command |' (and its child processes) that runs longer than this and "
                         "skip its utterance (default: %(default)g)")
    ap.add_argument("--model", required=True, help="HF model directory or fairseq .pt checkpoint")
    ap.add_argument("--lang-dir", help="lang dir with bpe.model or tokens.txt (default: the model directory)")
    ap.add_argument("--graph", help="decode with this WFST (token graph or HLG.fst) instead of greedy")
    ap.add_argument("--words", help="word table of --graph (default: from the graph's sidecar / directory)")
    ap.add_argument("--beam", type=float, default=16.0)
    ap.add_argument("--max-active", type=int, default=7000)
    ap.add_argument("--min-active", type=int, default=20)
    ap.add_argument("--acoustic-scale", type=float, default=1.0)
    ap.add_argument("--nj", type=int, default=1, help="WFST decoding processes (non-streaming)")
    ap.add_argument("--batch-size", type=int, default=4, help="utterances per forward pass (non-streaming)")
    ap.add_argument("--streaming", action="store_true", help="chunk-wise streaming recognition")
    ap.add_argument("--chunk-frames", type=int, default=24, help="streaming chunk in 20 ms frames (24 = 480 ms)")
    ap.add_argument("--left-chunks", type=int, default=None, help="streaming left context in chunks (default all)")
    ap.add_argument("--piece-ms", type=float, default=40.0, help="streaming: audio piece size fed per call")
    ap.add_argument("--latency-json", help="streaming: write per-utterance latencies and a summary here")
    long = LongAudioOptions()
    ap.add_argument("--max-whole-seconds", type=float, default=long.max_whole_seconds, metavar="SECONDS",
                    help="a longer recording is read in blocks and decoded in bounded memory: streamed by a "
                         "streaming model (left context bounded to this many seconds unless --left-chunks), "
                         "in overlapping windows by an offline model (default: %(default)g)")
    ap.add_argument("--window-seconds", type=float, default=long.window_seconds, metavar="SECONDS",
                    help="offline model, long recording: window length (default: %(default)g)")
    ap.add_argument("--window-overlap-seconds", type=float, default=long.overlap_seconds, metavar="SECONDS",
                    help="offline model, long recording: overlap of consecutive windows, half of it kept as "
                         "context on each side (default: %(default)g)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--num-threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    return ap


def _inputs(args: argparse.Namespace) -> list[tuple[str, str, bool]]:
    from distill.decode.audio import read_wav_list, read_wav_scp

    items: list[tuple[str, str, bool]] = []
    if args.wav_scp:
        items += [(u, s, True) for u, s in read_wav_scp(args.wav_scp)]
    if args.audio or args.file_list:
        items += [(u, s, False) for u, s in read_wav_list(args.audio, args.file_list)]
    ids = [u for u, _, _ in items]
    if len(set(ids)) != len(ids):
        dup = next(u for u in ids if ids.count(u) > 1)
        raise ValueError(f"utterance id '{dup}' is given twice (wav.scp and file list)")
    return items


def _load_tokenizer(args: argparse.Namespace) -> Tokenizer:
    """The ``--lang-dir``'s tokenizer, else the one the model directory carries."""
    if args.lang_dir:
        if not Path(args.lang_dir).is_dir():
            raise ValueError(f"lang dir '{args.lang_dir}' does not exist")
        return Tokenizer.load(args.lang_dir)
    if read_token_inventory(args.model) is None:
        raise ValueError(f"model '{args.model}' carries no tokens (bpe.model or tokens.txt): pass --lang-dir "
                         "with the lang dir it was trained on")
    return Tokenizer.load(args.model)


def _load_model(path: str, device: str) -> Any:
    try:
        from distill.models import load_pretrained  # type: ignore[attr-defined]
    except ImportError:
        from distill.models.checkpoint import load_pretrained
    return load_pretrained(path).to(device).eval()


def _skip(utt: str, e: BaseException, stats: dict[str, int]) -> None:
    """Report a failed utterance on stderr (one line naming it) and count it."""
    why = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
    stats["skipped"] += 1
    print(f"skipping utterance '{utt}': {' '.join(why.split())[:500]}", file=sys.stderr, flush=True)


def _read_all(items: Sequence[tuple[str, str, bool]], stats: dict[str, int],
              pipe_timeout: float = DEFAULT_PIPE_TIMEOUT,
              long: Optional[LongAudioOptions] = None) -> Iterator[tuple[str, Any]]:
    """Each readable utterance's samples (16 kHz mono float32) or, for a recording longer than
    ``long.max_whole_seconds``, its open :class:`~distill.decode.audio.AudioFile` (read in blocks and
    closed by the caller); unreadable ones are reported and skipped."""
    from distill.decode.audio import AudioError, AudioFile

    for utt, src, pipe in items:
        try:
            f = AudioFile(src, allow_pipe=pipe, timeout=pipe_timeout)
        except AudioError as e:
            _skip(utt, e, stats)
            continue
        if long is not None and long.is_long(f.num_samples):
            yield utt, f
            continue
        try:
            with f:
                wave = f.read_all()
        except AudioError as e:
            _skip(utt, e, stats)
            continue
        yield utt, wave


def _batches(it: Iterator[tuple[str, Any]], size: int) -> Iterator[list[tuple[str, Any]]]:
    """Groups of up to ``size`` utterances in input order; a long recording (not an array) goes alone."""
    batch: list[tuple[str, Any]] = []
    for x in it:
        if not isinstance(x[1], np.ndarray):
            if batch:
                yield batch
            yield [x]
            batch = []
            continue
        batch.append(x)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class _Texts:
    """Turns decoder output into text: token ids via the tokenizer, word ids via the word table."""

    def __init__(self, tok: Any, wfst: Any) -> None:
        self.tok, self.wfst = tok, wfst

    def __call__(self, symbols: Sequence[int]) -> str:
        if self.wfst is not None and self.wfst.info.kind == "word":
            return " ".join(self.wfst.symbols_to_words(symbols))
        return self.tok.decode(symbols)


class _Transcriber:
    """Decodes utterances and prints their ``utt-id text`` lines; an utterance that fails for any reason
    is reported (naming it) and skipped, and the others go on. Audio shorter than one frame gives an
    empty line with a warning; a long recording (an ``AudioFile``) is decoded in bounded memory
    (:mod:`distill.decode.long_audio`)."""

    def __init__(self, model: Any, args: argparse.Namespace, wfst: Any, text_of: _Texts, long: LongAudioOptions,
                 stats: dict[str, int]) -> None:
        self.model, self.args, self.wfst, self.text_of, self.long, self.stats = model, args, wfst, text_of, long, stats
        self.decoder: Any = wfst if wfst is not None else "greedy"
        self.audio_s = 0.0
        self.rec: Any = None  # --streaming recogniser (the user's left context)
        self._long_rec: Any = None  # recogniser for long recordings (bounded left context); False: cannot stream
        self.results: list[Any] = []
        self.latencies: dict[str, Any] = {}

    def emit(self, utt: str, symbols: Sequence[int]) -> None:
        print(f"{utt} {self.text_of(symbols)}".rstrip(), flush=True)
        self.stats["done"] += 1

    def check_short(self, batch: Sequence[tuple[str, np.ndarray]]) -> None:
        """Warn about (and count) utterances too short for one output frame: their text is empty."""
        from distill.models.config import conv_output_length

        cfg = self.model.config
        for utt, w in batch:
            if conv_output_length(len(w), cfg) == 0:
                self.stats["short"] += 1
                print(f"warning: utterance '{utt}' is shorter than one frame ({1000 * len(w) / 16000:.1f} ms < "
                      f"{1000 * cfg.receptive_field / 16000:g} ms): empty hypothesis", file=sys.stderr, flush=True)

    def batch(self, batch: Sequence[tuple[str, np.ndarray]]) -> None:
        """One forward pass over ``batch``; when it fails, each utterance again on its own."""
        import torch

        from distill.decode.greedy import ctc_greedy

        try:
            lens = torch.tensor([len(w) for _, w in batch])
            wave = torch.zeros(len(batch), int(lens.max()))
            for i, (_, w) in enumerate(batch):
                wave[i, : len(w)] = torch.from_numpy(w)
            with torch.inference_mode():
                out = self.model(wave.to(self.args.device), lens.to(self.args.device))
            scores, olens = out.scores.float().cpu(), out.lengths.cpu()
            if self.wfst is None:
                hyps = ctc_greedy(scores, olens)
            else:
                hyps = [r.symbols for r in self.wfst.decode_batch(scores, olens, nj=self.args.nj)]
        except Exception as e:  # noqa: BLE001 - any per-utterance failure: report it, go on with the others
            if len(batch) == 1:
                _skip(batch[0][0], e, self.stats)
            else:
                for item in batch:
                    self.batch([item])
            return
        self.audio_s += float(lens.sum()) / 16000
        for (utt, _), h in zip(batch, hyps):
            self.emit(utt, h)

    def stream(self, utt: str, wave: np.ndarray) -> None:
        """``--streaming``: the chunk-wise recogniser with latency measurement."""
        from distill.decode.streaming import stream_decode

        try:
            r = stream_decode(self.rec, wave, self.decoder, piece_ms=self.args.piece_ms)
        except Exception as e:  # noqa: BLE001 - any per-utterance failure: report it, go on with the others
            _skip(utt, e, self.stats)
            return
        self.audio_s += r.audio_seconds
        self.results.append(r)
        self.latencies[utt] = {
            "first_token_ms": None if r.first_token_latency is None else 1000 * r.first_token_latency,
            "last_token_ms": None if r.last_token_latency is None else 1000 * r.last_token_latency,
            "finalize_ms": 1000 * r.finalize_latency, "rtf": r.rtf}
        self.emit(utt, r.symbols)

    def long_recording(self, utt: str, audio: Any) -> None:
        """A recording over ``--max-whole-seconds``: streamed (streaming model or ``--streaming``) or
        decoded in overlapping windows, read from its source in blocks."""
        from distill.decode.long_audio import decode_pieces, streamed_scores, windowed_scores

        cfg = self.model.config
        t0 = time.perf_counter()
        try:
            with audio:
                rec = self._long_recognizer() if self.args.streaming or cfg.chunk_frames > 0 else None
                if rec is not None:
                    how = f"streamed, left context {rec.step.left_chunks} chunks of {rec.chunk} frames"
                    pieces = streamed_scores(rec, audio, self.long)
                else:
                    how = f"in {self.long.window_seconds:g} s windows overlapping by {self.long.overlap_seconds:g} s"
                    pieces = windowed_scores(audio, self._window_scores, cfg, self.long, align=cfg.chunk_frames or 1)
                print(f"note: utterance '{utt}' is {audio.seconds:.1f} s long (> --max-whole-seconds "
                      f"{self.long.max_whole_seconds:g}): decoded {how}", file=sys.stderr, flush=True)
                symbols = decode_pieces(pieces, {"hyp": self.decoder})["hyp"]
        except Exception as e:  # noqa: BLE001 - any per-utterance failure: report it, go on with the others
            _skip(utt, e, self.stats)
            return
        self.audio_s += audio.seconds
        if self.args.streaming:  # no per-token latencies: their history would grow with the recording
            self.latencies[utt] = {"long_recording": True,
                                   "rtf": (time.perf_counter() - t0) / max(audio.seconds, 1e-9)}
        self.emit(utt, symbols)

    def _long_recognizer(self) -> Any:
        """The recogniser for long recordings (None when the model cannot stream): ``--streaming``'s
        chunk and left context or the model's own, an unbounded left context bounded
        (:func:`~distill.decode.long_audio.bounded_left_chunks`)."""
        from distill.decode.long_audio import bounded_left_chunks
        from distill.models.streaming import StreamingRecognizer

        if self._long_rec is None:
            cfg, a = self.model.config, self.args
            chunk, left = (a.chunk_frames, a.left_chunks) if a.streaming else (cfg.chunk_frames, cfg.left_chunks)
            try:
                self._long_rec = StreamingRecognizer(self.model, chunk, bounded_left_chunks(
                    left, chunk, cfg.frame_shift, self.long))
            except ValueError:  # e.g. a group-norm CNN: windows instead
                self._long_rec = False
        return self._long_rec or None

    def _window_scores(self, wave: np.ndarray) -> Any:
        import torch

        with torch.inference_mode():
            out = self.model(torch.from_numpy(wave)[None].to(self.args.device))
        return out.scores[0, : int(out.lengths[0])].float().cpu()


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not (args.audio or args.file_list or args.wav_scp):
        ap.error("give audio files, --file-list or --wav-scp")
    if args.batch_size < 1 or args.nj < 1 or args.chunk_frames < 1 or args.piece_ms <= 0:
        ap.error("--batch-size, --nj, --chunk-frames and --piece-ms must be positive")
    try:
        long = LongAudioOptions(args.max_whole_seconds, args.window_seconds, args.window_overlap_seconds)
    except ValueError as e:
        ap.error(f"--max-whole-seconds / --window-seconds / --window-overlap-seconds: {e}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s [%(name)s] %(message)s")
    import torch

    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    stats = {"done": 0, "skipped": 0, "short": 0}
    wfst = None
    try:
        items = _inputs(args)
        tok = _load_tokenizer(args)
        model = _load_model(args.model, args.device)
        v = model.config.vocab_size
        check_same_tokens(args.model, "model", args.lang_dir or args.model, "lang dir", a_size=v,
                          b_size=tok.vocab_size)
        if args.graph:
            from distill.decode.wfst import WfstDecoder, WfstOptions

            opts = WfstOptions(beam=args.beam, max_active=args.max_active, min_active=args.min_active,
                               acoustic_scale=args.acoustic_scale)
            wfst = WfstDecoder(args.graph, opts, words=args.words)
            wfst.check_vocab(v, where=f"model '{args.model}' outputs")
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text_of = _Texts(tok, wfst)
    t_start = time.perf_counter()
    run = _Transcriber(model, args, wfst, text_of, long, stats)
    try:
        utts = _read_all(items, stats, args.pipe_timeout, long)
        if args.streaming:
            from distill.decode.streaming import summarize_latencies
            from distill.models.streaming import StreamingRecognizer

            try:
                run.rec = StreamingRecognizer(model, chunk_frames=args.chunk_frames, left_chunks=args.left_chunks)
            except ValueError as e:
                print(f"error: model '{args.model}' cannot stream: {e}", file=sys.stderr)
                return 2
            for utt, wave in utts:
                if isinstance(wave, np.ndarray):
                    run.check_short([(utt, wave)])
                    run.stream(utt, wave)
                else:
                    run.long_recording(utt, wave)
            if args.latency_json:
                Path(args.latency_json).parent.mkdir(parents=True, exist_ok=True)
                summary = summarize_latencies(run.results)
                summary["chunk_ms"] = args.chunk_frames * 20
                Path(args.latency_json).write_text(json.dumps({"summary": summary, "utts": run.latencies},
                                                              indent=2) + "\n")
        else:
            for batch in _batches(utts, args.batch_size):
                if isinstance(batch[0][1], np.ndarray):
                    run.check_short(batch)
                    run.batch(batch)
                else:
                    run.long_recording(*batch[0])
    finally:
        if wfst is not None:
            wfst.close()
    audio_s = run.audio_s
    elapsed = time.perf_counter() - t_start
    rtf = f", RTF {elapsed / audio_s:.3f}" if audio_s > 0 else ""
    short = f" ({stats['short']} shorter than one frame: empty)" if stats["short"] else ""
    print(f"transcribed {stats['done']} utterances{short}, skipped {stats['skipped']} ({audio_s:.1f} s of audio{rtf})",
          file=sys.stderr)
    return 1 if stats["done"] == 0 and stats["skipped"] > 0 else 0


if __name__ == "__main__":
    sys.exit(main())
