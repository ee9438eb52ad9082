"""Stage 6's configuration: the model rows, :class:`DecodeConfig`, its checks and the names of result rows."""

from __future__ import annotations

import dataclasses
from typing import Literal

from distill.config import ConfigError, path_field
from distill.decode.long_audio import LongAudioOptions

__all__ = [
    "FORMS",
    "METHODS",
    "GRAPH_FILES",
    "SAMPLE_RATE",
    "ModelRow",
    "DecodeConfig",
    "check_config",
    "long_options",
    "row_names",
    "primary_method",
]

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
    chunks: list[int] | None = None


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
    primary_method: Literal["greedy", "hlg", "hp"] | None = None  # the WER column; default hlg if decoded
    teacher: str = "teacher"  # the row the relative WER degradation refers to
    test_sets: list[str] | None = None  # default: every test part of <lang_dir>/cuts.yaml
    max_utts: int | None = None  # decode only the first N utterances of each test set (quick runs)
    device: str = "cpu"  # cpu | cuda[:N] | auto; int8 and ONNX forms always run on the CPU
    num_threads: int = 0  # torch / onnxruntime CPU threads of the WER pass (0 = default)
    batch_seconds: float = 200.0  # padded audio per forward batch
    max_batch_size: int = 64
    nj: int = 1  # WFST decoding processes
    beam: float = 16.0
    max_active: int = 7000
    min_active: int = 20
    acoustic_scale: float = 1.0
    normalize: Literal["gigaspeech"] | None = None  # scoring normalisation of both sides
    scoring_mode: Literal["sclite", "levenshtein"] = "sclite"
    speed_test_set: str | None = None  # RTF / latency subset; default: the first test set
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
    log_file: str | None = None


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


def primary_method(cfg: DecodeConfig) -> str:
    """The method of RESULTS.md's WER column: ``primary_method``, else hlg if decoded, else the first."""
    if cfg.primary_method is not None:
        return cfg.primary_method
    return "hlg" if "hlg" in cfg.methods else cfg.methods[0]
