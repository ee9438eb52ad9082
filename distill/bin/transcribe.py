"""Transcribe audio files with any wav2vec 2.0 CTC model; prints ``utt-id text`` lines on stdout.

    python -m distill.bin.transcribe --model exp/student --lang-dir data/lang a.wav b.flac
    python -m distill.bin.transcribe --model teacher_hf/ --lang-dir data/lang --wav-scp data/test/wav.scp \\
        [--graph data/lang_test/HLG.fst] [--streaming --chunk-frames 24 --piece-ms 40]

Input: audio paths as arguments and/or ``--file-list`` (one path a line; the id is the file name
without extension), or a Kaldi ``--wav-scp`` (``utt-id path`` or ``utt-id cmd |``). Audio at other
rates is resampled to 16 kHz, multi-channel audio is averaged to mono. An utterance whose audio cannot
be read is reported on stderr and skipped; the summary on stderr counts them (exit status 1 only when
nothing could be transcribed).

Model: a Hugging Face wav2vec 2.0 directory (``config.json`` + weights, e.g. one written by training
or ``distill.models.save_pretrained``) or a fairseq ``.pt``. ``--lang-dir`` gives the tokens
(``bpe.model`` or ``tokens.txt``); by default the model directory itself is tried.
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

log = logging.getLogger("distill.bin.transcribe")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m distill.bin.transcribe",
                                 description="Transcribe audio with a wav2vec 2.0 CTC model (utt-id text on stdout).")
    ap.add_argument("audio", nargs="*", help="audio files (the utterance id is the file name without extension)")
    ap.add_argument("--file-list", help="a file with one audio path per line")
    ap.add_argument("--wav-scp", help="Kaldi wav.scp: 'utt-id path' or 'utt-id command |' lines")
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


def _load_tokenizer(args: argparse.Namespace) -> Any:
    from distill.data.tokenizer import Tokenizer

    lang = Path(args.lang_dir) if args.lang_dir else Path(args.model)
    if not lang.is_dir():
        raise ValueError(f"no lang dir: pass --lang-dir (looked in '{lang}')")
    return Tokenizer.load(lang)


def _load_model(path: str, device: str) -> Any:
    try:
        from distill.models import load_pretrained  # type: ignore[attr-defined]
    except ImportError:
        from distill.models.checkpoint import load_pretrained
    return load_pretrained(path).to(device).eval()


def _read_all(items: Sequence[tuple[str, str, bool]], stats: dict[str, int]) -> Iterator[tuple[str, Any]]:
    from distill.decode.audio import AudioError, read_audio

    for utt, src, pipe in items:
        try:
            yield utt, read_audio(src, allow_pipe=pipe)
        except AudioError as e:
            stats["skipped"] += 1
            print(f"skipping utterance '{utt}': {e}", file=sys.stderr, flush=True)


def _batches(it: Iterator[tuple[str, Any]], size: int) -> Iterator[list[tuple[str, Any]]]:
    batch: list[tuple[str, Any]] = []
    for x in it:
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not (args.audio or args.file_list or args.wav_scp):
        ap.error("give audio files, --file-list or --wav-scp")
    if args.batch_size < 1 or args.nj < 1 or args.chunk_frames < 1 or args.piece_ms <= 0:
        ap.error("--batch-size, --nj, --chunk-frames and --piece-ms must be positive")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s [%(name)s] %(message)s")
    import torch

    from distill.decode.greedy import ctc_greedy

    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    stats = {"done": 0, "skipped": 0}
    wfst = None
    try:
        items = _inputs(args)
        tok = _load_tokenizer(args)
        model = _load_model(args.model, args.device)
        v = model.config.vocab_size
        if v != tok.vocab_size:
            raise ValueError(f"the model has {v} outputs but the lang dir has {tok.vocab_size} tokens")
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
    audio_s = 0.0
    latencies: dict[str, Any] = {}
    try:
        if args.streaming:
            from distill.decode.streaming import stream_decode, summarize_latencies
            from distill.models.streaming import StreamingRecognizer

            try:
                rec = StreamingRecognizer(model, chunk_frames=args.chunk_frames, left_chunks=args.left_chunks)
            except ValueError as e:
                print(f"error: model '{args.model}' cannot stream: {e}", file=sys.stderr)
                return 2
            results = []
            for utt, wave in _read_all(items, stats):
                try:
                    r = stream_decode(rec, wave, wfst if wfst is not None else "greedy", piece_ms=args.piece_ms)
                except (ValueError, RuntimeError) as e:
                    stats["skipped"] += 1
                    print(f"skipping utterance '{utt}': {e}", file=sys.stderr, flush=True)
                    continue
                audio_s += r.audio_seconds
                results.append(r)
                latencies[utt] = {"first_token_ms": None if r.first_token_latency is None else 1000 * r.first_token_latency,
                                  "last_token_ms": None if r.last_token_latency is None else 1000 * r.last_token_latency,
                                  "finalize_ms": 1000 * r.finalize_latency, "rtf": r.rtf}
                print(f"{utt} {text_of(r.symbols)}".rstrip(), flush=True)
                stats["done"] += 1
            if args.latency_json:
                Path(args.latency_json).parent.mkdir(parents=True, exist_ok=True)
                summary = summarize_latencies(results)
                summary["chunk_ms"] = args.chunk_frames * 20
                Path(args.latency_json).write_text(json.dumps({"summary": summary, "utts": latencies}, indent=2) + "\n")
        else:
            for batch in _batches(_read_all(items, stats), args.batch_size):
                lens = torch.tensor([len(w) for _, w in batch])
                wave = torch.zeros(len(batch), int(lens.max()))
                for i, (_, w) in enumerate(batch):
                    wave[i, : len(w)] = torch.from_numpy(w)
                audio_s += float(lens.sum()) / 16000
                with torch.inference_mode():
                    out = model(wave.to(args.device), lens.to(args.device))
                scores, olens = out.scores.float().cpu(), out.lengths.cpu()
                if wfst is None:
                    hyps = ctc_greedy(scores, olens)
                else:
                    hyps = [r.symbols for r in wfst.decode_batch(scores, olens, nj=args.nj)]
                for (utt, _), h in zip(batch, hyps):
                    print(f"{utt} {text_of(h)}".rstrip(), flush=True)
                    stats["done"] += 1
    finally:
        if wfst is not None:
            wfst.close()
    elapsed = time.perf_counter() - t_start
    rtf = f", RTF {elapsed / audio_s:.3f}" if audio_s > 0 else ""
    print(f"transcribed {stats['done']} utterances, skipped {stats['skipped']} ({audio_s:.1f} s of audio{rtf})",
          file=sys.stderr)
    return 1 if stats["done"] == 0 and stats["skipped"] > 0 else 0


if __name__ == "__main__":
    sys.exit(main())
