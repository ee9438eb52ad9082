"""Stage 6: decode every test set with every model, score it, measure speed and latency, report.

:func:`run` is what ``python -m distill.bin.decode`` calls. For each row of ``models`` (a trained model
in one deployable *form*: ``fp32`` torch, ``int8`` torch dynamic quantization, ``onnx``, ``onnx-int8``):

* **WER.** Each test set is decoded from a batched forward pass (utterances sorted by duration, at most
  ``batch_seconds`` of padded audio per batch) with every method of ``methods`` (``greedy`` CTC, WFST
  one-best over ``HLG.fst`` and/or ``HP.fst``), scored with :mod:`distill.scoring` and written as
  icefall-style ``recogs-/errs-/wer-summary-<test set>-<method>.txt`` under ``out_dir/<row>/``. A
  streaming model is evaluated at each chunk size of ``chunks`` with its chunk-masked forward, which
  gives the same scores as streaming (the models' tests prove it; here the greedy output of the
  streaming pass below is compared with it and the agreement reported).
* **Speed (RTF).** On the CPU with one thread (``torch.set_num_threads(1)``, onnxruntime with one
  intra-op thread), batch 1, over the first ``speed_max_utts`` utterances (at most ``speed_max_seconds``
  of audio) of ``speed_test_set``: process CPU time of the acoustic model (front-end included) divided
  by the audio duration, after one untimed warm-up utterance. Streaming models are timed in the
  streaming pass, which feeds the audio in ``piece_ms`` pieces to a
  :class:`~distill.models.streaming.StreamingRecognizer` (ONNX forms: the exported chunk step) with
  greedy decoding; it also measures the compute of each chunk and the first-/last-token latencies
  (:func:`distill.decode.streaming.stream_decode`).
* **Size.** What the form needs on disk: the model directory's weight files (fp32), the int8 state dict
  (``torch.save``), the ONNX file; MB = 2^20 bytes.

Bad input: a reference that is not UTF-8 text or is empty stops the stage before any decoding, naming
the utterance; an utterance whose audio cannot be loaded is scored as all deletions (``missing_hyps`` of
the scorer), listed in the ``errs-`` files, ``results.json`` and RESULTS.md, and the run continues. A row
whose model does not exist is reported as "not trained". An utterance shorter than one frame (test sets are
not length-filtered) gets an empty hypothesis, with a warning, listed as ``short_utts``.

Long utterances (over ``max_whole_seconds``) are read in pieces and decoded in bounded memory
(:mod:`distill.decode.long_audio`): streamed by streaming chunk sizes (this form's chunk step, left context
bounded to ``max_whole_seconds``), in overlapping windows by full attention; every method decodes the
stitched scores as one utterance. They are listed as ``long_utts`` and not timed.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import gzip
import json
import logging
import math
import statistics
import time
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, Sequence

import numpy as np

from distill.config import ConfigError, path_field
from distill.data.tokenizer import check_same_tokens
from distill.decode.long_audio import LongAudioOptions

log = logging.getLogger(__name__)

__all__ = ["ModelRow", "DecodeConfig", "TestSet", "check_config", "read_test_sets", "row_names",
           "evaluate_model", "run"]

FORMS = ("fp32", "int8", "onnx", "onnx-int8")
METHODS = ("greedy", "hlg", "hp")
GRAPH_FILES = {"hlg": "HLG.fst", "hp": "HP.fst"}
SAMPLE_RATE = 16000


@dataclasses.dataclass
class ModelRow:
    """One model in one deployable form; a streaming model gives one RESULTS.md row per chunk size."""

    name: str
    path: str  # a model directory (Hugging Face format, e.g. exp/stage1/model) or a fairseq .pt
    form: Literal["fp32", "int8", "onnx", "onnx-int8"] = "fp32"
    # chunk sizes in 20 ms frames; null: the model's own (none for an offline model); 0 = full attention
    chunks: Optional[list[int]] = None


@dataclasses.dataclass
class DecodeConfig:
    """Stage 6: decode and score every test set with every model; write RESULTS.md, results.json, plots."""

    lang_dir: str = path_field("data/lang")
    graph_dir: str = "data/lang_test"  # HLG.fst / HP.fst from distill.bin.build_decode_graph
    # RESULTS.md, results.json and plots go here; training logs: <exp_root>/*/train_log.jsonl
    exp_root: str = path_field("exp", output_dir=True)
    out_dir: str = path_field("exp/decode", output_dir=True)  # per-model recogs-/errs-/wer-summary- files
    models: list[ModelRow] = dataclasses.field(default_factory=list)
    methods: list[Literal["greedy", "hlg", "hp"]] = dataclasses.field(default_factory=lambda: ["greedy", "hlg"])
    primary_method: Optional[Literal["greedy", "hlg", "hp"]] = None  # the WER column; default hlg if decoded
    teacher: str = "teacher"  # the row the relative WER degradation refers to
    test_sets: Optional[list[str]] = None  # default: every test part of <lang_dir>/cuts.yaml
    max_utts: Optional[int] = None  # decode only the first N utterances of each test set (quick runs)
    device: str = "cpu"  # cpu | cuda[:N] | auto; int8 and ONNX forms always run on the CPU
    num_threads: int = 0  # torch / onnxruntime CPU threads of the WER pass (0 = default)
    batch_seconds: float = 200.0  # padded audio per forward batch
    max_batch_size: int = 64
    nj: int = 1  # WFST decoding processes
    beam: float = 16.0
    max_active: int = 7000
    min_active: int = 20
    acoustic_scale: float = 1.0
    normalize: Optional[Literal["gigaspeech"]] = None  # scoring normalisation of both sides
    scoring_mode: Literal["sclite", "levenshtein"] = "sclite"
    speed_test_set: Optional[str] = None  # RTF / latency subset; default: the first test set
    speed_max_utts: int = 50
    speed_max_seconds: float = 300.0
    piece_ms: float = 40.0  # audio piece fed per call in the streaming pass
    # test utterances longer than this are read in blocks and decoded in bounded memory: streamed by a
    # streaming row (left context bounded to max_whole_seconds), in overlapping windows by an offline
    # one (distill.decode.long_audio)
    max_whole_seconds: float = 60.0
    window_seconds: float = 30.0  # offline rows, long utterances: window length
    window_overlap_seconds: float = 4.0  # overlap of consecutive windows (half of it is context each side)
    title: str = "Results"
    log_file: Optional[str] = None


def check_config(cfg: DecodeConfig) -> None:
    """Raise ConfigError for values the schema cannot check (duplicate rows, bad chunk sizes, …)."""
    if not cfg.methods:
        raise ConfigError("key 'methods': give at least one of greedy, hlg, hp")
    if len(set(cfg.methods)) != len(cfg.methods):
        raise ConfigError(f"key 'methods': {cfg.methods} names a method twice")
    if cfg.primary_method is not None and cfg.primary_method not in cfg.methods:
        raise ConfigError(f"key 'primary_method': '{cfg.primary_method}' is not among methods {cfg.methods}")
    for key in ("batch_seconds", "speed_max_seconds", "piece_ms", "beam", "acoustic_scale"):
        if not getattr(cfg, key) > 0:
            raise ConfigError(f"key '{key}' must be > 0, got {getattr(cfg, key)}")
    try:
        long_options(cfg)
    except ValueError as e:
        raise ConfigError(f"keys 'max_whole_seconds', 'window_seconds', 'window_overlap_seconds': {e}") from None
    for key in ("nj", "max_batch_size", "speed_max_utts"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"key '{key}' must be >= 1, got {getattr(cfg, key)}")
    if cfg.max_utts is not None and cfg.max_utts < 1:
        raise ConfigError(f"key 'max_utts' must be >= 1 or null, got {cfg.max_utts}")
    seen: dict[str, str] = {}
    for i, row in enumerate(cfg.models):
        if not row.name or any(c.isspace() or c in "/|" for c in row.name):
            raise ConfigError(f"key 'models[{i}].name': {row.name!r} must be non-empty, without spaces, '/' or '|'")
        if row.chunks is not None:
            if not row.chunks or any(c < 0 for c in row.chunks) or len(set(row.chunks)) != len(row.chunks):
                raise ConfigError(f"key 'models[{i}].chunks': {row.chunks} must be distinct sizes >= 0 (frames)")
        for name in row_names(row):
            if name in seen:
                raise ConfigError(f"key 'models[{i}]': result row '{name}' also comes from {seen[name]}")
            seen[name] = f"models[{i}]"


def long_options(cfg: DecodeConfig) -> LongAudioOptions:
    """How the config decodes utterances over ``max_whole_seconds`` (ValueError when inconsistent)."""
    return LongAudioOptions(cfg.max_whole_seconds, cfg.window_seconds, cfg.window_overlap_seconds)


def row_names(row: ModelRow, frame_ms: float = 20.0) -> list[str]:
    """RESULTS.md row names of a config row: its name, or ``<name>-<latency>ms`` per chunk size when it
    lists several (``<name>-full`` for chunk 0)."""
    if row.chunks is None or len(row.chunks) <= 1:
        return [row.name]
    return [f"{row.name}-{_chunk_label(c, frame_ms)}" for c in row.chunks]


def _chunk_label(chunk: int, frame_ms: float) -> str:
    return "full" if chunk == 0 else f"{chunk * frame_ms:g}ms"


# ---------------------------------------------------------------------------------------------------
# test sets
# ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class TestSet:
    """A test part's cuts (file order), references and the utterances whose audio failed to load."""

    name: str
    path: Path
    cuts: list
    refs: dict[str, str]
    failed: dict[str, str] = dataclasses.field(default_factory=dict)  # utt id -> reason
    short: set[str] = dataclasses.field(default_factory=set)  # shorter than one frame: empty hypotheses

    @property
    def seconds(self) -> float:
        return float(sum(c.duration for c in self.cuts))

    def long_cuts(self, max_seconds: float) -> list:
        """The cuts longer than ``max_seconds`` (decoded in pieces), in file order."""
        return [c for c in self.cuts if c.duration > max_seconds]


def _read_cut_dicts(path: Path) -> list[dict]:
    """The cut dicts of a ``.jsonl[.gz]`` file. Invalid UTF-8 survives as surrogate escapes, so that
    :func:`distill.scoring.validate_refs` can name the utterance instead of the reader failing."""
    opener = gzip.open if path.suffix == ".gz" else open
    out = []
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.decode("utf-8", errors="surrogateescape").strip()
            if not line:
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not a JSON cut: {e}") from None
            if not isinstance(d, dict) or "id" not in d:
                raise ValueError(f"{path}:{lineno}: not a cut (no 'id')")
            out.append(d)
    return out


def read_test_sets(lang_dir: str | Path, names: Optional[Sequence[str]] = None, max_utts: Optional[int] = None,
                   normalize: Optional[str] = None) -> dict[str, TestSet]:
    """Stage 1's test parts (``<lang_dir>/cuts.yaml``), references validated: a reference that is not
    UTF-8 text or is empty (after ``normalize``) raises ValueError naming the test set and utterance."""
    from lhotse import CutSet

    from distill.data.manifests import read_cuts_index
    from distill.scoring import validate_refs

    idx = read_cuts_index(lang_dir).get("test")
    if not idx or not isinstance(idx, dict):
        raise ValueError(f"{Path(lang_dir) / 'cuts.yaml'} lists no test sets: run stage 1 with test parts")
    chosen = list(idx) if names is None else list(names)
    unknown = [n for n in chosen if n not in idx]
    if unknown:
        raise ValueError(f"test set(s) {unknown} not in {Path(lang_dir) / 'cuts.yaml'} (has: {', '.join(idx)})")
    out: dict[str, TestSet] = {}
    for name in chosen:
        path = Path(idx[name])
        dicts = _read_cut_dicts(path)
        if max_utts is not None:
            dicts = dicts[:max_utts]
        if not dicts:
            raise ValueError(f"test set '{name}' ({path}) has no utterances")
        refs: dict[str, str] = {}
        for d in dicts:
            if d["id"] in refs:
                raise ValueError(f"test set '{name}' ({path}): utterance '{d['id']}' appears twice")
            sups = d.get("supervisions") or []
            refs[d["id"]] = " ".join(str(s.get("text") or "") for s in sups)
        try:
            validate_refs(refs, normalize)
        except (ValueError, TypeError) as e:
            raise ValueError(f"test set '{name}' ({path}): {e}") from None
        out[name] = TestSet(name, path, list(CutSet.from_dicts(dicts)), refs)
    return out


def load_audio(cut: Any) -> np.ndarray:
    """16 kHz mono float32 samples of a cut; raises on any problem (no samples, NaN, unreadable)."""
    from distill.data.audio import load_cut_audio, resample

    wav = load_cut_audio(cut)
    if cut.sampling_rate != SAMPLE_RATE:
        wav = resample(wav, int(cut.sampling_rate), SAMPLE_RATE)
    wav = np.ascontiguousarray(wav, dtype=np.float32)
    if wav.size == 0:
        raise ValueError("no samples")
    if not np.isfinite(wav).all():
        raise ValueError("audio contains NaN or inf")
    return wav


def _load(ts: TestSet, cut: Any) -> Optional[np.ndarray]:
    try:
        return load_audio(cut)
    except Exception as e:  # noqa: BLE001 - any loader error: count the utterance as all-deletion, go on
        _record_failure(ts, cut.id, e)
        return None


def _record_failure(ts: TestSet, uid: str, e: BaseException) -> None:
    """Record (once, with a warning) that an utterance's audio cannot be loaded: scored as all deletions."""
    if uid not in ts.failed:
        # lhotse appends call context ("[extra info] ...") and a hint; keep the causes, on one line
        lines = [ln for ln in str(e).splitlines() if not ln.startswith(("[extra info]", "Set LHOTSE_"))]
        msg = " ".join(" ".join(lines).split())
        ts.failed[uid] = f"{type(e).__name__}: {msg[:400]}{'...' if len(msg) > 400 else ''}"
        log.warning("test set %s: audio of utterance '%s' cannot be loaded (%s); it is scored as all "
                    "deletions", ts.name, uid, ts.failed[uid])


def _note_short(ts: TestSet, uids: Sequence[str], lengths: Any) -> None:
    """Record (once, with a warning) the utterances with no output frame: their hypotheses are empty."""
    for uid, n in zip(uids, lengths.tolist()):
        if n == 0 and uid not in ts.short:
            ts.short.add(uid)
            log.warning("test set %s: utterance '%s' is shorter than one frame: its hypothesis is empty",
                        ts.name, uid)


class _CutReadError(Exception):
    """A piece of a long cut's audio cannot be read (the cause is chained)."""


class CutAudio:
    """A test cut read in pieces (a :class:`~distill.decode.long_audio.SampleSource`): each piece is the
    cut truncated to the range plus 20 ms each side (so that a resampled recording has no edge effects at
    piece boundaries), loaded by :func:`load_audio`; never the whole cut at once."""

    MARGIN = 320

    def __init__(self, cut: Any) -> None:
        self.cut = cut
        self.num_samples = int(round(cut.duration * SAMPLE_RATE))

    def read(self, start: int, n: int) -> np.ndarray:
        n = max(0, min(n, self.num_samples - start))
        if n == 0:
            return np.zeros(0, np.float32)
        a, b = max(0, start - self.MARGIN), min(self.num_samples, start + n + self.MARGIN)
        try:
            piece = self.cut.truncate(offset=a / SAMPLE_RATE, duration=(b - a) / SAMPLE_RATE, preserve_id=True)
            w = load_audio(piece)
        except Exception as e:  # noqa: BLE001 - any loader error: the utterance counts as unreadable
            raise _CutReadError(f"{type(e).__name__}: {e}") from e
        return np.ascontiguousarray(w[start - a : start - a + n])


def plan_batches(ts: TestSet, batch_seconds: float, max_batch: int, max_seconds: float = math.inf) -> list[list]:
    """Groups of cuts, longest first, each at most ``batch_seconds`` of padded audio and ``max_batch``
    cuts (a longer cut is a batch of its own); cuts over ``max_seconds`` are left out (long recordings,
    decoded in pieces)."""
    groups: list[list] = []
    for cut in sorted((c for c in ts.cuts if c.duration <= max_seconds), key=lambda c: c.duration, reverse=True):
        g = groups[-1] if groups else None
        # sorted longest first: a group's first cut is its longest
        if g is None or len(g) + 1 > max_batch or g[0].duration * (len(g) + 1) > batch_seconds:
            groups.append([cut])
        else:
            g.append(cut)
    return groups


def _batches(ts: TestSet, groups: list[list]) -> Iterator[list[tuple[str, np.ndarray]]]:
    """Loaded (id, samples) batches of ``groups``; utterances whose audio fails are left out (recorded)."""
    for group in groups:
        batch = [(c.id, w) for c in group if (w := _load(ts, c)) is not None]
        if batch:
            yield batch


def speed_subset(ts: TestSet, max_utts: int, max_seconds: float, min_samples: int = 0,
                 max_utt_seconds: float = math.inf) -> list[tuple[str, np.ndarray]]:
    """The first utterances of ``ts`` (file order, loadable ones) up to ``max_utts`` / ``max_seconds``
    of audio (at least one). Utterances shorter than ``min_samples`` (no output frame) or longer than
    ``max_utt_seconds`` (decoded in pieces) are not timed."""
    out: list[tuple[str, np.ndarray]] = []
    total = 0.0
    for cut in ts.cuts:
        if cut.duration > max_utt_seconds:
            continue
        if len(out) >= max_utts or (out and total + cut.duration > max_seconds):
            break
        w = _load(ts, cut)
        if w is None or len(w) < min_samples:
            continue
        out.append((cut.id, w))
        total += len(w) / SAMPLE_RATE
    return out


# ---------------------------------------------------------------------------------------------------
# a model in one form
# ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """``torch.set_num_threads(n)`` inside the block (n <= 0: unchanged)."""
    import torch

    if n <= 0:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def weights_size_mb(path: Path) -> float:
    """Size of a model's weight files: a directory's ``*.safetensors``/``*.bin``/``*.pt``, or the file."""
    if path.is_file():
        return path.stat().st_size / 2**20
    files = [p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt") and p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


class _DropOrtAdvice(logging.Filter):
    """onnxruntime's quantizer logs pre-processing advice as a root WARNING on every call."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please consider to run pre-processing before quantization")


@contextlib.contextmanager
def _quiet_ort() -> Iterator[None]:
    f = _DropOrtAdvice()
    logging.getLogger().addFilter(f)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(f)


class _TimedStep:
    """Wraps a streaming chunk step and records the CPU and wall time and output frames of each call."""

    def __init__(self, step: Any) -> None:
        self._step = step
        self.calls: list[tuple[float, float, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._step, name)

    def __call__(self, *args: Any) -> Any:
        c0, w0 = time.process_time(), time.perf_counter()
        out = self._step(*args)
        self.calls.append((time.process_time() - c0, time.perf_counter() - w0, int(out[0].shape[1])))
        return out


class Acoustic:
    """A model in one form: batched scores for WER, batch-1 CPU forward for RTF, a streaming recogniser.

    ``model`` is the fp32 model on the CPU, already switched to the chunk size to evaluate (streaming)."""

    def __init__(self, model: Any, form: str, work_dir: Path, device: str, num_threads: int,
                 source: Path, chunk: int = 0) -> None:
        import torch

        from distill.models.export import export_onnx, quantize_onnx, quantize_torch

        self.form, self.chunk, self.work_dir = form, chunk, work_dir
        self.cfg = model.config
        self.cpu_model = model.eval()
        self.params = int(model.num_parameters())
        self.fbank = self.cfg.frontend == "fbank"
        self.device = torch.device(device if form == "fp32" else "cpu")
        self.sessions: dict[int, Any] = {}
        self._long_rec: Any = None  # the recogniser of long recordings (streaming chunk sizes)
        work_dir.mkdir(parents=True, exist_ok=True)
        if form == "fp32":
            self.model = copy.deepcopy(model).to(self.device).eval() if self.device.type != "cpu" else model
            self.size_mb = weights_size_mb(source)
        elif form == "int8":
            self.model = quantize_torch(model).eval()
            self.cpu_model = self.model
            p = work_dir / "model_int8.pt"
            torch.save(self.model.state_dict(), p)
            self.size_mb = p.stat().st_size / 2**20
        else:
            self.model = None
            onnx_path = export_onnx(model, work_dir / "model.onnx")
            if form == "onnx-int8":
                with _quiet_ort():
                    onnx_path = quantize_onnx(onnx_path, work_dir / "model.int8.onnx")
            self.onnx_path = onnx_path
            self.size_mb = onnx_path.stat().st_size / 2**20
        self.num_threads = num_threads

    def _onnx_session(self, threads: int) -> Any:
        from distill.models.export import onnx_session

        if threads not in self.sessions:
            self.sessions[threads] = onnx_session(self.onnx_path, threads)
        return self.sessions[threads]

    # -- batched scores for WER ---------------------------------------------------------------------
    def scores(self, waves: Sequence[np.ndarray]) -> tuple[Any, Any]:
        """Scores [B,T,V] (float32 CPU tensor) and valid frames [B] of a list of waveforms."""
        import torch

        from distill.models.config import conv_output_length
        from distill.models.export import run_onnx

        olens = conv_output_length(torch.tensor([len(w) for w in waves]), self.cfg)
        if int(olens.max()) == 0:  # no utterance reaches one frame (an exported graph cannot even take them)
            return torch.zeros(len(waves), 0, self.cfg.vocab_size), olens.long()
        if self.model is not None:
            lens = torch.tensor([len(w) for w in waves])
            wave = torch.zeros(len(waves), int(lens.max()))
            for i, w in enumerate(waves):
                wave[i, : len(w)] = torch.from_numpy(w)
            with torch.inference_mode(), torch_threads(self.num_threads if self.device.type == "cpu" else 0):
                out = self.model(wave.to(self.device), lens.to(self.device))
            return out.scores.float().cpu(), out.lengths.cpu()
        x, lens = self._onnx_inputs(waves)
        scores, olens = run_onnx(self._onnx_session(self.num_threads), x, lens)
        return scores.float(), olens.long()

    def _onnx_inputs(self, waves: Sequence[np.ndarray]) -> tuple[Any, Any]:
        import torch

        from distill.models.streaming import compute_fbank_knf

        feats = [compute_fbank_knf(w, self.cfg.fbank_num_mel_bins) for w in waves] if self.fbank else \
            [torch.from_numpy(w) for w in waves]
        lens = torch.tensor([len(f) for f in feats], dtype=torch.long)
        shape = (len(feats), max(1, int(lens.max()))) + tuple(feats[0].shape[1:])
        x = torch.zeros(shape)
        for i, f in enumerate(feats):
            x[i, : len(f)] = f
        return x, lens

    # -- one-thread CPU timing ----------------------------------------------------------------------
    def time_offline(self, utts: Sequence[tuple[str, np.ndarray]]) -> dict[str, Any]:
        """Batch-1 forward of each utterance on one CPU thread (one untimed warm-up call first)."""
        import torch

        from distill.models.export import run_onnx

        if self.model is None:
            sess = self._onnx_session(1)

            def fwd(w: np.ndarray) -> None:
                run_onnx(sess, *self._onnx_inputs([w]))
        else:
            m = self.cpu_model

            def fwd(w: np.ndarray) -> None:
                x = torch.from_numpy(w)[None]
                with torch.inference_mode():
                    m(x, torch.tensor([x.shape[1]]))

        cpu = wall = audio = 0.0
        with torch_threads(1):
            fwd(utts[0][1])
            for _, w in utts:
                c0, w0 = time.process_time(), time.perf_counter()
                fwd(w)
                cpu += time.process_time() - c0
                wall += time.perf_counter() - w0
                audio += len(w) / SAMPLE_RATE
        return {"how": "offline forward, batch 1", "threads": 1, "utts": len(utts), "audio_s": round(audio, 3),
                "cpu_s": cpu, "wall_s": wall, "rtf_cpu": cpu / audio, "rtf_wall": wall / audio}

    # -- streaming ----------------------------------------------------------------------------------
    def streaming_step(self, left_chunks: Optional[int]) -> _TimedStep:
        """The chunk step this form deploys (torch, or the exported ONNX step on one thread), timed."""
        from distill.models.export import OnnxStreamingStep, export_streaming_onnx, quantize_onnx
        from distill.models.streaming import StreamingStep

        step = StreamingStep(self.cpu_model, self.chunk, left_chunks)
        if self.form in ("onnx", "onnx-int8"):
            stem = f"step-c{self.chunk}" + ("" if left_chunks is None else f"-l{left_chunks}")
            p = export_streaming_onnx(self.cpu_model, self.work_dir / f"{stem}.onnx", self.chunk, left_chunks)
            if self.form == "onnx-int8":
                with _quiet_ort():
                    p = quantize_onnx(p, self.work_dir / f"{stem}.int8.onnx")
            step = OnnxStreamingStep(step, p, threads=1)
        return _TimedStep(step)

    def long_pieces(self, source: Any, opts: LongAudioOptions) -> Iterator[Any]:
        """Scores [n, V] of a long recording, in bounded memory (:mod:`distill.decode.long_audio`): a
        streaming chunk size streams it through this form's chunk step, with the left context bounded;
        full attention decodes it in overlapping windows."""
        from distill.decode.long_audio import bounded_left_chunks, streamed_scores, windowed_scores
        from distill.models.streaming import StreamingRecognizer

        if self.chunk == 0:
            def window(w: np.ndarray) -> Any:
                scores, lengths = self.scores([w])
                return scores[0, : int(lengths[0])]

            return windowed_scores(source, window, self.cfg, opts)
        if self._long_rec is None:
            left = bounded_left_chunks(self.cfg.left_chunks, self.chunk, self.cfg.frame_shift, opts)
            step = self.streaming_step(left)._step  # untimed: the timing pass is time_streaming's
            self._long_rec = StreamingRecognizer(self.cpu_model, self.chunk, left, step=step)
        return streamed_scores(self._long_rec, source, opts)

    def time_streaming(self, utts: Sequence[tuple[str, np.ndarray]], piece_ms: float
                       ) -> tuple[dict[str, Any], dict[str, list[int]]]:
        """Streaming pass (one CPU thread, greedy): latencies, per-chunk compute, RTF; and the greedy
        tokens of each utterance."""
        from distill.decode.streaming import stream_decode, summarize_latencies
        from distill.models.streaming import StreamingRecognizer

        step = self.streaming_step(self.cfg.left_chunks)
        rec = StreamingRecognizer(self.cpu_model, self.chunk, self.cfg.left_chunks, step=step)
        results, tokens = [], {}
        cpu = 0.0
        with torch_threads(1):
            stream_decode(rec, utts[0][1], "greedy", piece_ms=piece_ms)  # warm-up
            step.calls.clear()
            for uid, w in utts:
                c0 = time.process_time()
                r = stream_decode(rec, w, "greedy", piece_ms=piece_ms)
                cpu += time.process_time() - c0
                results.append(r)
                tokens[uid] = list(r.symbols)
        summary = summarize_latencies(results)
        audio = sum(r.audio_seconds for r in results)
        full = [c for c in step.calls if c[2] == self.chunk]
        summary.update(
            how=f"StreamingRecognizer ({'ONNX step' if self.model is None else 'torch'}), {piece_ms:g} ms pieces, "
                "greedy, batch 1",
            threads=1, audio_s=round(audio, 3), cpu_s=cpu, rtf_cpu=cpu / audio if audio else None,
            rtf_wall=summary.pop("rtf"), chunk_frames=self.chunk, left_chunks=self.cfg.left_chunks,
            piece_ms=piece_ms, chunk_compute_ms=_stats([1000 * c[0] for c in full]),
            chunk_compute_wall_ms=_stats([1000 * c[1] for c in full]), num_chunks=len(full))
        return summary, tokens


def _stats(vals: list[float]) -> dict[str, Optional[float]]:
    if not vals:
        return {"mean": None, "p50": None, "p90": None, "max": None}
    s = sorted(vals)
    return {"mean": statistics.fmean(s), "p50": s[len(s) // 2], "p90": s[min(len(s) - 1, int(0.9 * len(s)))],
            "max": s[-1]}


# ---------------------------------------------------------------------------------------------------
# one model row
# ---------------------------------------------------------------------------------------------------
class Decoders:
    """Turns scores into text with each method: greedy CTC, and kaldi-decoder over HLG / HP."""

    def __init__(self, methods: Sequence[str], graph_dir: Path, tokenizer: Any, opts: Any, nj: int,
                 lang_dir: Optional[Path] = None) -> None:
        from distill.decode.wfst import WfstDecoder

        self.methods = list(methods)
        self.tok = tokenizer
        self.lang_dir = lang_dir  # the tokenizer's lang dir: its token inventory is compared with each model's
        self.nj = nj
        self.wfst: dict[str, Any] = {}
        for m in self.methods:
            if m == "greedy":
                continue
            g = graph_dir / GRAPH_FILES[m]
            if not g.is_file():
                raise FileNotFoundError(
                    f"decoding method '{m}' needs {g}: build it with python -m distill.bin.build_decode_graph "
                    f"--config conf/decode_graph.yaml lang_dir=<lang_dir> out_dir={graph_dir}")
            dec = WfstDecoder(g, opts)
            dec.check_vocab(tokenizer.vocab_size, where=f"the tokens of the lang dir ({tokenizer.vocab_size})")
            self.wfst[m] = dec

    def check(self, vocab: int, path: str | Path) -> None:
        """Refuse a model whose outputs are not the lang dir's tokens (the inventories when both carry one,
        else the sizes); :class:`~distill.data.tokenizer.TokenMismatchError` names both."""
        check_same_tokens(path, "model", self.lang_dir, "lang dir", a_size=vocab, b_size=self.tok.vocab_size)

    def decode(self, scores: Any, lengths: Any) -> tuple[dict[str, list[str]], list[list[int]]]:
        """Texts per method for a batch, and the greedy token ids."""
        from distill.decode.greedy import ctc_greedy

        greedy = ctc_greedy(scores, lengths)
        out: dict[str, list[str]] = {}
        for m in self.methods:
            if m == "greedy":
                out[m] = [self.text(m, ids) for ids in greedy]
                continue
            res = self.wfst[m].decode_batch(scores, lengths, nj=self.nj)
            out[m] = [self.text(m, r.symbols) for r in res]
        return out, greedy

    def decode_pieces(self, pieces: Iterator[Any]) -> tuple[dict[str, str], list[int]]:
        """One long utterance's text per method from its score pieces [n, V], each method decoding the
        stitched scores incrementally as one utterance; and the greedy token ids."""
        from distill.decode.long_audio import decode_pieces

        decs: dict[str, Any] = {m: self.wfst.get(m, "greedy") for m in self.methods}
        decs[""] = "greedy"
        syms = decode_pieces(pieces, decs)
        return {m: self.text(m, syms[m]) for m in self.methods}, syms[""]

    def text(self, method: str, symbols: Sequence[int]) -> str:
        """Text of a method's output symbols: words of a word graph, else tokens."""
        dec = self.wfst.get(method)
        if dec is not None and dec.info.kind == "word":
            return " ".join(dec.symbols_to_words(symbols))
        return self.tok.decode(symbols)

    def close(self) -> None:
        for d in self.wfst.values():
            d.__exit__(None, None, None)


def _variants(row: ModelRow, model: Any) -> list[int]:
    """Chunk sizes to evaluate (0 = offline / full attention)."""
    if row.chunks is not None:
        return list(row.chunks)
    return [int(model.config.chunk_frames)]


def evaluate_model(row: ModelRow, cfg: DecodeConfig, test_sets: dict[str, TestSet], decoders: Decoders,
                   device: str) -> list[dict[str, Any]]:
    """Evaluate one config row (one result per chunk size); see the module docstring."""
    from distill.models import load_pretrained
    from distill.scoring import write_scoring_files, write_wer_summary

    primary = _primary(cfg)
    base = load_pretrained(row.path).float().eval()
    decoders.check(base.config.vocab_size, row.path)
    frame_ms = 1000 * base.config.frame_shift / SAMPLE_RATE
    names = row_names(row, frame_ms)
    speed_set = test_sets[cfg.speed_test_set or next(iter(test_sets))]
    long = long_options(cfg)
    speed_utts = speed_subset(speed_set, cfg.speed_max_utts, cfg.speed_max_seconds, base.config.receptive_field,
                              long.max_whole_seconds)
    if not speed_utts:
        raise ValueError(f"no loadable utterance of one frame to max_whole_seconds ({long.max_whole_seconds:g} s) "
                         f"in test set '{speed_set.name}' to measure speed on")
    speed_ids = {u for u, _ in speed_utts}
    results = []
    for name, chunk in zip(names, _variants(row, base)):
        t0 = time.time()
        model = copy.deepcopy(base)
        if chunk > 0:
            model.set_streaming(chunk, model.config.left_chunks if model.config.chunk_frames > 0 else None)
        elif model.config.chunk_frames > 0:
            model.set_streaming(0)  # full attention, the causal positional conv stays
        out = Path(cfg.out_dir) / name
        ac = Acoustic(model, row.form, out, device, cfg.num_threads, Path(row.path), chunk)
        log.info("model %s (%s, %s): %.2f M parameters, %.1f MB, %s", name, row.path, row.form, ac.params / 1e6,
                 ac.size_mb, f"chunk {chunk} frames ({chunk * frame_ms:g} ms)" if chunk else "full context")
        wers: dict[str, dict[str, float]] = {}
        details: dict[str, dict[str, Any]] = {}
        batch_greedy: dict[str, list[int]] = {}
        for ts in test_sets.values():
            hyps: dict[str, dict[str, str]] = {m: {} for m in cfg.methods}
            groups = plan_batches(ts, cfg.batch_seconds, cfg.max_batch_size, long.max_whole_seconds)
            for batch in _progress(_batches(ts, groups), f"{name} {ts.name}", len(groups)):
                scores, lengths = ac.scores([w for _, w in batch])
                _note_short(ts, [uid for uid, _ in batch], lengths)
                texts, greedy = decoders.decode(scores, lengths)
                for i, (uid, _) in enumerate(batch):
                    for m in cfg.methods:
                        hyps[m][uid] = texts[m][i]
                    if ts is speed_set and uid in speed_ids:
                        batch_greedy[uid] = greedy[i]
            for cut in ts.long_cuts(long.max_whole_seconds):
                log.info("%s %s: utterance '%s' (%.1f s) is longer than max_whole_seconds: decoded %s", name,
                         ts.name, cut.id, cut.duration, "streamed" if chunk else "in overlapping windows")
                try:
                    texts1, _ = decoders.decode_pieces(ac.long_pieces(CutAudio(cut), long))
                except _CutReadError as e:
                    _record_failure(ts, cut.id, e.__cause__ or e)  # scored as all deletions
                    continue
                for m in cfg.methods:
                    hyps[m][cut.id] = texts1[m]
            wers[ts.name], details[ts.name] = {}, {}
            for m in cfg.methods:
                res = write_scoring_files(out, ts.name, m, ts.refs, hyps[m], mode=cfg.scoring_mode,
                                          normalize=cfg.normalize)
                wers[ts.name][m] = res["wer"]
                details[ts.name][m] = {k: res[k] for k in ("ins", "del", "sub", "ref_words", "num_utts",
                                                            "num_sent_errs")}
            write_wer_summary(out, ts.name, "all", wers[ts.name])
        result: dict[str, Any] = {
            "name": name, "params": ac.params, "size_mb": round(ac.size_mb, 3),
            "latency_ms": chunk * frame_ms if chunk else None,
            "wer": {t: round(w[primary], 2) for t, w in wers.items()},
            "status": "ok", "path": row.path, "form": row.form, "chunk_frames": chunk or None,
            "primary_method": primary, "wer_by_method": {t: {m: round(v, 2) for m, v in w.items()}
                                                         for t, w in wers.items()},
            "errors": details,
            "failed_utts": {t.name: sorted(t.failed) for t in test_sets.values() if t.failed},
            "short_utts": {t.name: sorted(t.short) for t in test_sets.values() if t.short},
            "long_utts": {t.name: sorted(c.id for c in t.long_cuts(long.max_whole_seconds))
                          for t in test_sets.values() if t.long_cuts(long.max_whole_seconds)},
            "decode_dir": str(out),
        }
        if chunk:
            stream, tokens = ac.time_streaming(speed_utts, cfg.piece_ms)
            same = sum(tokens[u] == batch_greedy.get(u) for u in tokens)
            stream["same_greedy_as_batch"] = f"{same}/{len(tokens)}"
            stream["test_set"] = speed_set.name
            result["streaming"] = stream
            result["speed"] = {k: stream[k] for k in ("how", "threads", "audio_s", "cpu_s", "rtf_cpu", "rtf_wall")}
            result["speed"]["utts"] = stream["num_utts"]
        else:
            result["speed"] = ac.time_offline(speed_utts)
        result["speed"]["test_set"] = speed_set.name
        result["rtf"] = round(result["speed"]["rtf_cpu"], 5)
        result["seconds"] = round(time.time() - t0, 1)
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        log.info("model %s: WER %s (%s), RTF %.4f (1 thread)%s", name,
                 ", ".join(f"{t} {w:.2f}" for t, w in result["wer"].items()), primary, result["rtf"],
                 "" if not chunk else f", compute/chunk {_ms(result['streaming']['chunk_compute_ms'])} ms, "
                 f"first-token {_ms(result['streaming']['first_token_ms'])} ms")
        results.append(result)
    return results


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def _ms(s: dict) -> str:
    return "-" if s.get("mean") is None else f"{s['mean']:.1f}"


def _progress(it: Iterator, desc: str, total: int) -> Iterator:
    from tqdm import tqdm

    return tqdm(it, desc=desc, total=total, unit="batch", leave=False, mininterval=5.0)


def _primary(cfg: DecodeConfig) -> str:
    if cfg.primary_method is not None:
        return cfg.primary_method
    return "hlg" if "hlg" in cfg.methods else cfg.methods[0]


# ---------------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------------
def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' requested but CUDA is not available")
    return device


def training_curves(exp_root: Path) -> dict[str, list[dict]]:
    """Per training run (``<exp_root>/<run>/train_log.jsonl``): records with ``train loss``, ``dev loss``
    and ``dev WER (%)`` by update, for :func:`distill.decode.report.plot_training_curves`."""
    from distill.decode.report import read_train_log

    runs: dict[str, list[dict]] = {}
    for p in sorted(exp_root.glob("*/train_log.jsonl")):
        recs = []
        for r in read_train_log(p):
            loss = r.get("loss")
            finite = isinstance(loss, (int, float)) and math.isfinite(loss)
            if r.get("type", "train") == "train" and finite:
                recs.append({"step": r["step"], "train loss": loss})
            elif r.get("type") == "valid":
                rec = {"step": r["step"]}
                if finite:
                    rec["dev loss"] = loss
                if isinstance(r.get("wer"), (int, float)):
                    rec["dev WER (%)"] = r["wer"]
                recs.append(rec)
        if recs:
            runs[p.parent.name] = recs
    return runs


def _appendix(results: list[dict], cfg: DecodeConfig, test_sets: dict[str, TestSet], device: str) -> str:
    primary = _primary(cfg)
    ok = [r for r in results if r.get("status") == "ok"]
    lines = ["## WER by decoding method", "",
             f"The WER column above is `{primary}`. greedy: best label per frame; hlg: kaldi-decoder one-best "
             f"over HLG (lexicon + word n-gram); hp: over CTC ∘ token bigram P. Beam {cfg.beam:g}, max-active "
             f"{cfg.max_active}, acoustic scale {cfg.acoustic_scale:g}; scoring: {cfg.scoring_mode}"
             f"{', ' + cfg.normalize + ' normalisation' if cfg.normalize else ''}.", "",
             "| model | test set | " + " | ".join(cfg.methods) + " | utterances | words |",
             "| --- | --- | " + " | ".join("---:" for _ in cfg.methods) + " | ---: | ---: |"]
    for r in ok:
        for ts, w in r["wer_by_method"].items():
            d = r["errors"][ts][primary]
            lines.append(f"| {r['name']} | {ts} | " + " | ".join(f"{w[m]:.2f}" for m in cfg.methods)
                         + f" | {d['num_utts']} | {d['ref_words']} |")
    lines.append("")
    stream = [r for r in ok if r.get("streaming")]
    if stream:
        s0 = stream[0]["streaming"]
        lines += ["## Streaming: measured compute and latency", "",
                  f"Streaming pass over the first {s0['num_utts']} utterances ({s0['audio_s']:.1f} s) of "
                  f"`{s0['test_set']}`: audio fed in {cfg.piece_ms:g} ms pieces as if live, chunk-wise "
                  "`StreamingRecognizer` (ONNX forms: the exported chunk step), greedy decoding, 1 CPU thread. "
                  "Compute per chunk: CPU time of one full chunk step. Token latency: time the token is final "
                  "minus the end of the audio that produced it (docs/decoding.md). `same as batch`: utterances "
                  "whose streaming greedy output equals the greedy output of the chunk-masked batch forward "
                  "used for the WER.", "",
                  "| model | algorithmic latency | compute per chunk, ms (mean / p90) | first-token latency, ms "
                  "(mean / p90) | last-token latency, ms (mean / p90) | finalize, ms | streaming RTF | same as batch |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

        def mp(s: dict) -> str:
            return "-" if s.get("mean") is None else f"{s['mean']:.1f} / {s['p90']:.1f}"

        for r in stream:
            s = r["streaming"]
            lines.append(f"| {r['name']} | {r['latency_ms']:g} ms | {mp(s['chunk_compute_ms'])} | "
                         f"{mp(s['first_token_ms'])} | {mp(s['last_token_ms'])} | "
                         f"{'-' if s['finalize_ms']['mean'] is None else format(s['finalize_ms']['mean'], '.1f')} | "
                         f"{s['rtf_cpu']:.4f} | {s['same_greedy_as_batch']} |")
        lines.append("")
    failed = {t.name: t.failed for t in test_sets.values() if t.failed}
    if failed:
        lines += ["## Utterances whose audio could not be loaded", "",
                  "Scored as all deletions for every model (listed at the end of each `errs-` file too):", ""]
        for ts, f in failed.items():
            for uid, why in sorted(f.items()):
                lines.append(f"- `{ts}` / `{uid}`: {why}")
        lines.append("")
    speed_set = cfg.speed_test_set or next(iter(test_sets))
    not_trained = [r["name"] for r in results if r.get("status") == "not trained"]
    sets = ", ".join(f"`{t.name}` ({len(t.cuts)} utterances, {_duration(t.seconds)})" for t in test_sets.values())
    lines += ["## Set-up", "",
              f"- Test sets: {sets}" + (f" (first {cfg.max_utts} utterances of each)" if cfg.max_utts else "") + ".",
              f"- WER pass on `{device}` (int8 and ONNX forms on the CPU), batches of at most "
              f"{cfg.batch_seconds:g} s of padded audio; WFST decoding with {cfg.nj} process(es).",
              f"- RTF (1 CPU thread): process CPU time / audio duration, batch 1, over the first "
              f"{cfg.speed_max_utts} utterances (at most {cfg.speed_max_seconds:g} s) of `{speed_set}`, after one "
              "untimed warm-up utterance. Offline models: the full forward (front-end included); streaming "
              "models: the streaming pass. Decoding is not included (greedy costs nothing; WFST decoding "
              "is timed in docs/decoding.md).",
              "- Size: the form's weights on disk (fp32: the model directory's weight files; int8: the "
              "quantized state dict; ONNX: the .onnx file), MB = 2^20 bytes. Params: of the fp32 model.",
              f"- Per-model outputs: `{Path(cfg.out_dir)}/<model>/` (recogs-, errs-, wer-summary-, result.json)."]
    if not_trained:
        lines.append(f"- Not trained (model not found): {', '.join(not_trained)}.")
    short = {t.name: sorted(t.short) for t in test_sets.values() if t.short}
    if short:
        lines.append("- Shorter than one frame, so decoded as empty hypotheses: " + "; ".join(
            f"`{ts}`: {len(ids)} ({', '.join(f'`{u}`' for u in ids[:5])}{', ...' if len(ids) > 5 else ''})"
            for ts, ids in short.items()) + ".")
    long = {t.name: len(t.long_cuts(cfg.max_whole_seconds)) for t in test_sets.values()}
    if any(long.values()):
        lines.append(f"- Longer than {cfg.max_whole_seconds:g} s, so read in pieces and decoded in bounded memory "
                     "(streaming rows: streamed, an unbounded left context bounded to that length; full-attention "
                     f"rows: {cfg.window_seconds:g} s windows overlapping by {cfg.window_overlap_seconds:g} s): "
                     + "; ".join(f"`{ts}`: {n}" for ts, n in long.items() if n) + ".")
    return "\n".join(lines) + "\n"


def run(cfg: DecodeConfig) -> dict[str, Any]:
    """Run stage 6; returns ``{"results": [...], "paths": {...}, "markdown": str}``."""
    from distill.data.tokenizer import Tokenizer
    from distill.decode.report import write_results
    from distill.decode.wfst import WfstOptions

    check_config(cfg)
    device = _resolve_device(cfg.device)
    tok = Tokenizer.load(cfg.lang_dir)
    test_sets = read_test_sets(cfg.lang_dir, cfg.test_sets, cfg.max_utts, cfg.normalize)
    if cfg.speed_test_set is not None and cfg.speed_test_set not in test_sets:
        raise ValueError(f"speed_test_set '{cfg.speed_test_set}' is not among the test sets {list(test_sets)}")
    log.info("test sets: %s", ", ".join(f"{t.name} ({len(t.cuts)} utterances, {t.seconds:.1f} s)"
                                         for t in test_sets.values()))
    opts = WfstOptions(beam=cfg.beam, max_active=cfg.max_active, min_active=cfg.min_active,
                       acoustic_scale=cfg.acoustic_scale)
    decoders = Decoders(cfg.methods, Path(cfg.graph_dir), tok, opts, cfg.nj, Path(cfg.lang_dir))
    results: list[dict[str, Any]] = []
    expected: list[str] = []
    if not cfg.models:
        log.warning("no models configured (key 'models'): RESULTS.md will have no rows")
    try:
        for row in cfg.models:
            names = row_names(row)
            expected += names
            if not Path(row.path).exists():
                log.warning("model '%s': %s does not exist: reported as not trained", row.name, row.path)
                results += [{"name": n, "params": None, "size_mb": None, "rtf": None, "latency_ms": None,
                             "wer": {}, "status": "not trained", "path": row.path, "form": row.form}
                            for n in names]
                continue
            try:
                results += evaluate_model(row, cfg, test_sets, decoders, device)
            except (ValueError, RuntimeError, OSError) as e:
                raise ValueError(f"model '{row.name}' ({row.path}, {row.form}): {e}") from e
    finally:
        decoders.close()
    runs = training_curves(Path(cfg.exp_root))
    keys = [k for k in ("train loss", "dev loss", "dev WER (%)") if any(k in r for rs in runs.values() for r in rs)]
    appendix = _appendix(results, cfg, test_sets, device)
    paths = write_results(results, cfg.exp_root, teacher=cfg.teacher, expected=expected, train_logs=runs or None,
                          title=cfg.title, appendix=appendix, curve_keys=keys or None)
    return {"results": results, "paths": paths, "markdown": paths["markdown"].read_text(encoding="utf-8")}
