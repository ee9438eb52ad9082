"""Transcribe audio files with any wav2vec 2.0 CTC model: what ``python -m distill.bin.transcribe`` runs.

:func:`transcribe` prints ``utt-id text`` lines on stdout, reports an utterance that cannot be read or
decoded on stderr (naming it) and goes on with the others, and ends with a summary on stderr; it
returns the command's exit status. Short audio gives an empty line with a warning; a recording longer
than ``max_whole_seconds`` is decoded in bounded memory (:mod:`distill.decode.long_audio`). The options
are those of the command line (:class:`TranscribeOptions`; ``python -m distill.bin.transcribe --help``).

:func:`load` loads the model, its tokens and the decoder once (:class:`Loaded`); the command line and the
Python API (:class:`distill.decode.recognizer.Recognizer`) decode through its methods, so they give the
same text. ``--timestamps`` prints one JSON line per utterance instead (:func:`json_line`); ``--partial``
prints ``utt-id [partial] text`` lines on stderr while ``--streaming`` consumes the audio.
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
    SAMPLE_RATE,
    LongAudioOptions,
    bounded_left_chunks,
    streamed_scores,
    windowed_scores,
)
from distill.decode.streaming import stream_decode, summarize_latencies
from distill.decode.timestamps import Decoded, PieceDecoder, Word, word_times
from distill.decode.wfst import WfstDecoder, WfstOptions
from distill.models import load_pretrained
from distill.models.config import conv_output_length
from distill.models.streaming import StreamingRecognizer

__all__ = ["Loaded", "NotStreamingError", "TranscribeOptions", "json_line", "load", "transcribe"]


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
    streaming: bool = False  # chunk-wise streaming recognition (a streaming model only)
    chunk_frames: int | None = None  # streaming chunk in 20 ms frames (None: the model's own)
    left_chunks: int | None = None  # streaming left context in chunks (None: the model's own)
    piece_ms: float = 40.0  # streaming: audio piece fed per call
    partial: bool = False  # streaming: print partial results on stderr as the audio is consumed
    timestamps: bool = False  # print JSON lines with word times instead of 'utt-id text' lines
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


class NotStreamingError(ValueError):
    """Streaming was asked of a model that was not trained for it (a full-context model)."""


def _load_tokenizer(opts: TranscribeOptions) -> Tokenizer:
    """The ``--lang-dir``'s tokenizer, else the one the model directory carries."""
    if opts.lang_dir:
        if not Path(opts.lang_dir).is_dir():
            raise ValueError(f"lang dir '{opts.lang_dir}' does not exist")
        return Tokenizer.load(opts.lang_dir)
    if read_token_inventory(opts.model) is None:
        raise ValueError(
            f"model '{opts.model}' carries no tokens (no tokens.txt or bpe.model next to its config.json): pass "
            "--lang-dir (lang_dir=) with the lang dir it was trained on, or copy that dir's tokens.txt "
            "(and bpe.model) into the model directory"
        )
    return Tokenizer.load(opts.model)


class Loaded:
    """A model (eval mode, on ``opts.device``), its tokenizer and its decoder (greedy, or ``wfst`` over
    ``opts.graph``), loaded once by :func:`load`: what ``transcribe`` and the Python API decode with."""

    def __init__(self, model: Any, tok: Tokenizer, wfst: WfstDecoder | None, opts: TranscribeOptions) -> None:
        self.model, self.tok, self.wfst, self.opts = model, tok, wfst, opts
        self.decoder: Any = wfst if wfst is not None else "greedy"
        self.frame_shift_s = model.config.frame_shift / SAMPLE_RATE
        self._long_rec: Any = None  # recogniser for long recordings (bounded left context); False: cannot stream

    def text(self, symbols: Sequence[int]) -> str:
        """Text of decoder output: token ids via the tokenizer, word ids via the graph's word table."""
        if self.wfst is not None and self.wfst.info.kind == "word":
            return " ".join(self.wfst.symbols_to_words(symbols))
        return self.tok.decode(symbols)

    def words(self, d: Decoded) -> list[Word]:
        """The words of ``d`` with start and end times (:mod:`distill.decode.timestamps`)."""
        table = None
        if self.wfst is not None and self.wfst.info.kind == "word":
            table = self.wfst.symbols_to_words(d.symbols)
        return word_times(d, self.tok.pieces, self.frame_shift_s, table)

    def decode_waves(self, waves: Sequence[np.ndarray]) -> list[Decoded]:
        """One forward pass over ``waves`` (16 kHz mono float32), then the decoder."""
        lens = torch.tensor([len(w) for w in waves])
        wave = torch.zeros(len(waves), int(lens.max()))
        for i, w in enumerate(waves):
            wave[i, : len(w)] = torch.from_numpy(w)
        with torch.inference_mode():
            out = self.model(wave.to(self.opts.device), lens.to(self.opts.device))
        scores, olens = out.scores.float().cpu(), out.lengths.cpu()
        if self.wfst is not None:
            return [Decoded.of_wfst(r) for r in self.wfst.decode_batch(scores, olens, nj=self.opts.nj)]
        best = scores.argmax(dim=-1)
        return [Decoded(h, best[i, : int(olens[i])].tolist(), []) for i, h in enumerate(ctc_greedy(scores, olens))]

    def streaming_recognizer(self, chunk_frames: int | None = None, left_chunks: int | None = None) -> Any:
        """A :class:`~distill.models.streaming.StreamingRecognizer` with the model's own chunk and left
        context unless given; a full-context model raises :class:`NotStreamingError`."""
        cfg = self.model.config
        if cfg.chunk_frames <= 0:
            raise NotStreamingError(
                f"model '{self.opts.model}' was not trained for streaming: it is a full-context model "
                "(chunk_frames 0 in its config); transcribe it whole (no --streaming), or use a streaming "
                "student (stage 5)"
            )
        chunk = chunk_frames or cfg.chunk_frames
        left = cfg.left_chunks if left_chunks is None else left_chunks
        try:
            return StreamingRecognizer(self.model, chunk_frames=chunk, left_chunks=left)
        except ValueError as e:
            raise NotStreamingError(f"model '{self.opts.model}' cannot stream: {e}") from None

    def decode_long(self, audio: Any) -> tuple[Decoded, str]:
        """A recording over ``max_whole_seconds`` (an open ``AudioFile``), read in blocks: streamed by a
        streaming model (or ``--streaming``), else decoded in overlapping windows. Returns the result and
        how it was decoded."""
        cfg, lo = self.model.config, self.opts.long_audio()
        rec = self._long_recognizer() if self.opts.streaming or cfg.chunk_frames > 0 else None
        if rec is not None:
            how = f"streamed, left context {rec.step.left_chunks} chunks of {rec.chunk} frames"
            pieces = streamed_scores(rec, audio, lo)
        else:
            how = f"in {lo.window_seconds:g} s windows overlapping by {lo.overlap_seconds:g} s"
            pieces = windowed_scores(audio, self._window_scores, cfg, lo, align=cfg.chunk_frames or 1)
        dec = PieceDecoder(self.decoder)
        for piece in pieces:
            dec.accept(piece)
        return dec.finish(), how

    def _long_recognizer(self) -> Any:
        """The recogniser for long recordings (None when the model cannot stream): the streaming chunk
        and left context, an unbounded left context bounded (:func:`~distill.decode.long_audio.bounded_left_chunks`)."""
        if self._long_rec is None:
            cfg, a = self.model.config, self.opts
            chunk = (a.chunk_frames if a.streaming else None) or cfg.chunk_frames
            left = a.left_chunks if a.streaming and a.left_chunks is not None else cfg.left_chunks
            try:
                self._long_rec = StreamingRecognizer(
                    self.model, chunk, bounded_left_chunks(left, chunk, cfg.frame_shift, a.long_audio())
                )
            except ValueError:  # e.g. a group-norm CNN: windows instead
                self._long_rec = False
        return self._long_rec or None

    def _window_scores(self, wave: np.ndarray) -> Any:
        with torch.inference_mode():
            out = self.model(torch.from_numpy(wave)[None].to(self.opts.device))
        return out.scores[0, : int(out.lengths[0])].float().cpu()

    def close(self) -> None:
        if self.wfst is not None:
            self.wfst.close()


def load(opts: TranscribeOptions) -> Loaded:
    """Load ``opts``' model, tokens and decoder; OSError / ValueError / KeyError say what is wrong."""
    if opts.num_threads > 0:
        torch.set_num_threads(opts.num_threads)
    tok = _load_tokenizer(opts)
    model = load_pretrained(opts.model).to(opts.device).eval()
    v = model.config.vocab_size
    check_same_tokens(opts.model, "model", opts.lang_dir or opts.model, "lang dir", a_size=v, b_size=tok.vocab_size)
    wfst = None
    if opts.graph:
        wfst_opts = WfstOptions(
            beam=opts.beam, max_active=opts.max_active, min_active=opts.min_active, acoustic_scale=opts.acoustic_scale
        )
        wfst = WfstDecoder(opts.graph, wfst_opts, words=opts.words)
        wfst.check_vocab(v, where=f"model '{opts.model}' outputs")
    return Loaded(model, tok, wfst, opts)


def json_line(utt: str, text: str, words: Sequence[Word]) -> str:
    """The ``--timestamps`` line of one utterance: ``{"utt", "text", "words": [{"word", "start", "end"}]}``
    (seconds)."""
    ws = [{"word": w.word, "start": w.start_s, "end": w.end_s} for w in words]
    return json.dumps({"utt": utt, "text": text, "words": ws}, ensure_ascii=False)


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


class _Transcriber:
    """Decodes utterances and prints their ``utt-id text`` lines (or ``--timestamps`` JSON lines); an
    utterance that fails for any reason is reported (naming it) and skipped, and the others go on. Audio
    shorter than one frame gives an empty line with a warning; a long recording (an ``AudioFile``) is
    decoded in bounded memory (:meth:`Loaded.decode_long`)."""

    def __init__(self, loaded: Loaded, stats: dict[str, int]) -> None:
        self.lo, self.opts, self.stats = loaded, loaded.opts, stats
        self.audio_s = 0.0
        self.rec: Any = None  # --streaming recogniser
        self.results: list[Any] = []
        self.latencies: dict[str, Any] = {}

    def emit(self, utt: str, d: Decoded) -> None:
        text = self.lo.text(d.symbols)
        line = json_line(utt, text, self.lo.words(d)) if self.opts.timestamps else f"{utt} {text}".rstrip()
        print(line, flush=True)
        self.stats["done"] += 1

    def check_short(self, batch: Sequence[tuple[str, np.ndarray]]) -> None:
        """Warn about (and count) utterances too short for one output frame: their text is empty."""
        cfg = self.lo.model.config
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
            hyps = self.lo.decode_waves([w for _, w in batch])
        except Exception as e:  # noqa: BLE001 - any per-utterance failure: report it, go on with the others
            if len(batch) == 1:
                _skip(batch[0][0], e, self.stats)
            else:
                for item in batch:
                    self.batch([item])
            return
        self.audio_s += sum(len(w) for _, w in batch) / SAMPLE_RATE
        for (utt, _), h in zip(batch, hyps):
            self.emit(utt, h)

    def stream(self, utt: str, wave: np.ndarray) -> None:
        """``--streaming``: the chunk-wise recogniser with latency measurement (and ``--partial`` lines)."""

        shown = [""]

        def partial(symbols: list[int]) -> None:  # a line when the text changes
            text = self.lo.text(symbols)
            if text != shown[0]:
                shown[0] = text
                print(f"{utt} [partial] {text}", file=sys.stderr, flush=True)

        try:
            cb = partial if self.opts.partial else None
            r = stream_decode(self.rec, wave, self.lo.decoder, piece_ms=self.opts.piece_ms, on_partial=cb)
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
        self.emit(utt, Decoded(r.symbols, r.frame_labels, r.symbol_frames))

    def long_recording(self, utt: str, audio: Any) -> None:
        """A recording over ``--max-whole-seconds``, read from its source in blocks."""
        t0 = time.perf_counter()
        try:
            with audio:
                d, how = self.lo.decode_long(audio)
        except Exception as e:  # noqa: BLE001 - any per-utterance failure: report it, go on with the others
            _skip(utt, e, self.stats)
            return
        print(
            f"note: utterance '{utt}' is {audio.seconds:.1f} s long (> --max-whole-seconds "
            f"{self.opts.max_whole_seconds:g}): decoded {how}",
            file=sys.stderr,
            flush=True,
        )
        self.audio_s += audio.seconds
        if self.opts.streaming:  # no per-token latencies: their history would grow with the recording
            self.latencies[utt] = {"long_recording": True, "rtf": (time.perf_counter() - t0) / max(audio.seconds, 1e-9)}
        self.emit(utt, d)


def transcribe(opts: TranscribeOptions) -> int:
    """Transcribe ``opts``' audio (see the module docstring); returns the exit status: 2 when the inputs,
    tokens, model or graph cannot be used (or ``--streaming`` a model not trained for it), 1 when nothing
    could be transcribed, else 0."""
    long = opts.long_audio()
    stats = {"done": 0, "skipped": 0, "short": 0}
    try:
        items = _inputs(opts)
        lo = load(opts)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    tr = _Transcriber(lo, stats)
    try:
        if opts.streaming:
            try:
                tr.rec = lo.streaming_recognizer(opts.chunk_frames, opts.left_chunks)
            except NotStreamingError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
        utts = _read_all(items, stats, opts.pipe_timeout, long)
        if opts.streaming:
            for utt, wave in utts:
                if isinstance(wave, np.ndarray):
                    tr.check_short([(utt, wave)])
                    tr.stream(utt, wave)
                else:
                    tr.long_recording(utt, wave)
            if opts.latency_json:
                Path(opts.latency_json).parent.mkdir(parents=True, exist_ok=True)
                summary = summarize_latencies(tr.results)
                summary["chunk_ms"] = 1000 * tr.rec.chunk * lo.frame_shift_s
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
        lo.close()
    audio_s = tr.audio_s
    elapsed = time.perf_counter() - t_start
    rtf = f", RTF {elapsed / audio_s:.3f}" if audio_s > 0 else ""
    short = f" ({stats['short']} shorter than one frame: empty)" if stats["short"] else ""
    print(
        f"transcribed {stats['done']} utterances{short}, skipped {stats['skipped']} ({audio_s:.1f} s of audio{rtf})",
        file=sys.stderr,
    )
    return 1 if stats["done"] == 0 and stats["skipped"] > 0 else 0
