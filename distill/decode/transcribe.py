"""Transcribe audio files with any wav2vec 2.0 CTC model: what ``python -m distill.bin.transcribe`` runs.

:func:`transcribe` prints ``utt-id text`` lines on stdout, reports an utterance that cannot be read or
decoded on stderr (naming it) and goes on with the others, and ends with a summary on stderr; it
returns the command's exit status. Short audio gives an empty line with a warning; a recording longer
than ``max_whole_seconds`` is decoded in bounded memory (:mod:`distill.decode.long_audio`). The options
are those of the command line (:class:`TranscribeOptions`; ``python -m distill.bin.transcribe --help``).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.data.pipe import DEFAULT_PIPE_TIMEOUT
from distill.data.tokenizer import Tokenizer, check_same_tokens, read_token_inventory
from distill.decode.audio import AudioError, AudioFile, read_wav_list, read_wav_scp
from distill.decode.greedy import ctc_greedy
from distill.decode.long_audio import (
    LongAudioOptions,
    bounded_left_chunks,
    decode_pieces,
    streamed_scores,
    windowed_scores,
)
from distill.decode.streaming import stream_decode, summarize_latencies
from distill.decode.wfst import WfstDecoder, WfstOptions
from distill.models import load_pretrained
from distill.models.config import conv_output_length
from distill.models.streaming import StreamingRecognizer

__all__ = ["TranscribeOptions", "transcribe"]


@dataclasses.dataclass
class TranscribeOptions:
    """What to transcribe and how: the options of ``distill.bin.transcribe`` (same names, same defaults)."""

    model: str  # HF model directory or fairseq .pt checkpoint
    audio: list[str] = dataclasses.field(default_factory=list)  # audio files (id: the file name without extension)
    file_list: str | None = None  # a file with one audio path per line
    wav_scp: str | None = None  # Kaldi wav.scp: 'utt-id path' or 'utt-id command |' lines
    pipe_timeout: float = DEFAULT_PIPE_TIMEOUT  # seconds a wav.scp command may run
    lang_dir: str | None = None  # tokens (bpe.model or tokens.txt); default: those the model directory carries
    graph: str | None = None  # WFST (token graph or HLG.fst) to decode with instead of greedy
    words: str | None = None  # word table of the graph (default: from its sidecar / directory)
    beam: float = 16.0
    max_active: int = 7000
    min_active: int = 20
    acoustic_scale: float = 1.0
    nj: int = 1  # WFST decoding processes (non-streaming)
    batch_size: int = 4  # utterances per forward pass (non-streaming)
    streaming: bool = False  # chunk-wise streaming recognition
    chunk_frames: int = 24  # streaming chunk in 20 ms frames (24 = 480 ms)
    left_chunks: int | None = None  # streaming left context in chunks (None: all)
    piece_ms: float = 40.0  # streaming: audio piece fed per call
    latency_json: str | None = None  # streaming: per-utterance latencies and a summary go here
    max_whole_seconds: float = LongAudioOptions.max_whole_seconds  # longer recordings: decoded in bounded memory
    window_seconds: float = LongAudioOptions.window_seconds  # offline model, long recording: window length
    window_overlap_seconds: float = LongAudioOptions.overlap_seconds  # overlap of consecutive windows
    device: str = "cpu"
    num_threads: int = 0  # torch CPU threads (0 = torch default)

    def long_audio(self) -> LongAudioOptions:
        """How long recordings are decoded (ValueError when the three values are inconsistent)."""
        return LongAudioOptions(self.max_whole_seconds, self.window_seconds, self.window_overlap_seconds)


def _inputs(opts: TranscribeOptions) -> list[tuple[str, str, bool]]:
    items: list[tuple[str, str, bool]] = []
    if opts.wav_scp:
        items += [(u, s, True) for u, s in read_wav_scp(opts.wav_scp)]
    if opts.audio or opts.file_list:
        items += [(u, s, False) for u, s in read_wav_list(opts.audio, opts.file_list)]
    ids = [u for u, _, _ in items]
    if len(set(ids)) != len(ids):
        dup = next(u for u in ids if ids.count(u) > 1)
        raise ValueError(f"utterance id '{dup}' is given twice (wav.scp and file list)")
    return items


def _load_tokenizer(opts: TranscribeOptions) -> Tokenizer:
    """The ``--lang-dir``'s tokenizer, else the one the model directory carries."""
    if opts.lang_dir:
        if not Path(opts.lang_dir).is_dir():
            raise ValueError(f"lang dir '{opts.lang_dir}' does not exist")
        return Tokenizer.load(opts.lang_dir)
    if read_token_inventory(opts.model) is None:
        raise ValueError(
            f"model '{opts.model}' carries no tokens (bpe.model or tokens.txt): pass --lang-dir "
            "with the lang dir it was trained on"
        )
    return Tokenizer.load(opts.model)


def _load_model(path: str, device: str) -> Any:
    return load_pretrained(path).to(device).eval()


def _skip(utt: str, e: BaseException, stats: dict[str, int]) -> None:
    """Report a failed utterance on stderr (one line naming it) and count it."""
    why = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
    stats["skipped"] += 1
    print(f"skipping utterance '{utt}': {' '.join(why.split())[:500]}", file=sys.stderr, flush=True)


def _read_all(
    items: Sequence[tuple[str, str, bool]],
    stats: dict[str, int],
    pipe_timeout: float = DEFAULT_PIPE_TIMEOUT,
    long: LongAudioOptions | None = None,
) -> Iterator[tuple[str, Any]]:
    """Each readable utterance's samples (16 kHz mono float32) or, for a recording longer than
    ``long.max_whole_seconds``, its open :class:`~distill.decode.audio.AudioFile` (read in blocks and
    closed by the caller); unreadable ones are reported and skipped."""
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

    def __init__(
        self,
        model: Any,
        opts: TranscribeOptions,
        wfst: Any,
        text_of: _Texts,
        long: LongAudioOptions,
        stats: dict[str, int],
    ) -> None:
        self.model, self.opts, self.wfst, self.text_of, self.long, self.stats = model, opts, wfst, text_of, long, stats
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
        cfg = self.model.config
        for utt, w in batch:
            if conv_output_length(len(w), cfg) == 0:
                self.stats["short"] += 1
                print(
                    f"warning: utterance '{utt}' is shorter than one frame ({1000 * len(w) / 16000:.1f} ms < "
                    f"{1000 * cfg.receptive_field / 16000:g} ms): empty hypothesis",
                    file=sys.stderr,
                    flush=True,
                )

    def batch(self, batch: Sequence[tuple[str, np.ndarray]]) -> None:
        """One forward pass over ``batch``; when it fails, each utterance again on its own."""
        try:
            lens = torch.tensor([len(w) for _, w in batch])
            wave = torch.zeros(len(batch), int(lens.max()))
            for i, (_, w) in enumerate(batch):
                wave[i, : len(w)] = torch.from_numpy(w)
            with torch.inference_mode():
                out = self.model(wave.to(self.opts.device), lens.to(self.opts.device))
            scores, olens = out.scores.float().cpu(), out.lengths.cpu()
            if self.wfst is None:
                hyps = ctc_greedy(scores, olens)
            else:
                hyps = [r.symbols for r in self.wfst.decode_batch(scores, olens, nj=self.opts.nj)]
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
        try:
            r = stream_decode(self.rec, wave, self.decoder, piece_ms=self.opts.piece_ms)
        except Exception as e:  # noqa: BLE001 - any per-utterance failure: report it, go on with the others
            _skip(utt, e, self.stats)
            return
        self.audio_s += r.audio_seconds
        self.results.append(r)
        self.latencies[utt] = {
            "first_token_ms": None if r.first_token_latency is None else 1000 * r.first_token_latency,
            "last_token_ms": None if r.last_token_latency is None else 1000 * r.last_token_latency,
            "finalize_ms": 1000 * r.finalize_latency,
            "rtf": r.rtf,
        }
        self.emit(utt, r.symbols)

    def long_recording(self, utt: str, audio: Any) -> None:
        """A recording over ``--max-whole-seconds``: streamed (streaming model or ``--streaming``) or
        decoded in overlapping windows, read from its source in blocks."""
        cfg = self.model.config
        t0 = time.perf_counter()
        try:
            with audio:
                rec = self._long_recognizer() if self.opts.streaming or cfg.chunk_frames > 0 else None
                if rec is not None:
                    how = f"streamed, left context {rec.step.left_chunks} chunks of {rec.chunk} frames"
                    pieces = streamed_scores(rec, audio, self.long)
                else:
                    how = f"in {self.long.window_seconds:g} s windows overlapping by {self.long.overlap_seconds:g} s"
                    pieces = windowed_scores(audio, self._window_scores, cfg, self.long, align=cfg.chunk_frames or 1)
                print(
                    f"note: utterance '{utt}' is {audio.seconds:.1f} s long (> --max-whole-seconds "
                    f"{self.long.max_whole_seconds:g}): decoded {how}",
                    file=sys.stderr,
                    flush=True,
                )
                symbols = decode_pieces(pieces, {"hyp": self.decoder})["hyp"]
        except Exception as e:  # noqa: BLE001 - any per-utterance failure: report it, go on with the others
            _skip(utt, e, self.stats)
            return
        self.audio_s += audio.seconds
        if self.opts.streaming:  # no per-token latencies: their history would grow with the recording
            self.latencies[utt] = {"long_recording": True, "rtf": (time.perf_counter() - t0) / max(audio.seconds, 1e-9)}
        self.emit(utt, symbols)

    def _long_recognizer(self) -> Any:
        """The recogniser for long recordings (None when the model cannot stream): ``--streaming``'s
        chunk and left context or the model's own, an unbounded left context bounded
        (:func:`~distill.decode.long_audio.bounded_left_chunks`)."""
        if self._long_rec is None:
            cfg, a = self.model.config, self.opts
            chunk, left = (a.chunk_frames, a.left_chunks) if a.streaming else (cfg.chunk_frames, cfg.left_chunks)
            try:
                self._long_rec = StreamingRecognizer(
                    self.model, chunk, bounded_left_chunks(left, chunk, cfg.frame_shift, self.long)
                )
            except ValueError:  # e.g. a group-norm CNN: windows instead
                self._long_rec = False
        return self._long_rec or None

    def _window_scores(self, wave: np.ndarray) -> Any:
        with torch.inference_mode():
            out = self.model(torch.from_numpy(wave)[None].to(self.opts.device))
        return out.scores[0, : int(out.lengths[0])].float().cpu()


def transcribe(opts: TranscribeOptions) -> int:
    """Transcribe ``opts``' audio (see the module docstring); returns the exit status: 2 when the inputs,
    tokens, model or graph cannot be used, 1 when nothing could be transcribed, else 0."""
    long = opts.long_audio()
    if opts.num_threads > 0:
        torch.set_num_threads(opts.num_threads)
    stats = {"done": 0, "skipped": 0, "short": 0}
    wfst = None
    try:
        items = _inputs(opts)
        tok = _load_tokenizer(opts)
        model = _load_model(opts.model, opts.device)
        v = model.config.vocab_size
        check_same_tokens(opts.model, "model", opts.lang_dir or opts.model, "lang dir", a_size=v, b_size=tok.vocab_size)
        if opts.graph:
            wfst_opts = WfstOptions(
                beam=opts.beam,
                max_active=opts.max_active,
                min_active=opts.min_active,
                acoustic_scale=opts.acoustic_scale,
            )
            wfst = WfstDecoder(opts.graph, wfst_opts, words=opts.words)
            wfst.check_vocab(v, where=f"model '{opts.model}' outputs")
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text_of = _Texts(tok, wfst)
    t_start = time.perf_counter()
    tr = _Transcriber(model, opts, wfst, text_of, long, stats)
    try:
        utts = _read_all(items, stats, opts.pipe_timeout, long)
        if opts.streaming:
            try:
                tr.rec = StreamingRecognizer(model, chunk_frames=opts.chunk_frames, left_chunks=opts.left_chunks)
            except ValueError as e:
                print(f"error: model '{opts.model}' cannot stream: {e}", file=sys.stderr)
                return 2
            for utt, wave in utts:
                if isinstance(wave, np.ndarray):
                    tr.check_short([(utt, wave)])
                    tr.stream(utt, wave)
                else:
                    tr.long_recording(utt, wave)
            if opts.latency_json:
                Path(opts.latency_json).parent.mkdir(parents=True, exist_ok=True)
                summary = summarize_latencies(tr.results)
                summary["chunk_ms"] = opts.chunk_frames * 20
                Path(opts.latency_json).write_text(
                    json.dumps({"summary": summary, "utts": tr.latencies}, indent=2) + "\n"
                )
        else:
            for batch in _batches(utts, opts.batch_size):
                if isinstance(batch[0][1], np.ndarray):
                    tr.check_short(batch)
                    tr.batch(batch)
                else:
                    tr.long_recording(*batch[0])
    finally:
        if wfst is not None:
            wfst.close()
    audio_s = tr.audio_s
    elapsed = time.perf_counter() - t_start
    rtf = f", RTF {elapsed / audio_s:.3f}" if audio_s > 0 else ""
    short = f" ({stats['short']} shorter than one frame: empty)" if stats["short"] else ""
    print(
        f"transcribed {stats['done']} utterances{short}, skipped {stats['skipped']} ({audio_s:.1f} s of audio{rtf})",
        file=sys.stderr,
    )
    return 1 if stats["done"] == 0 and stats["skipped"] > 0 else 0
