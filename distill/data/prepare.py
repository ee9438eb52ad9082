"""Stage 0: corpus → lhotse manifests (recordings, supervisions, cuts per part) + ``splits.yaml``.

The corpus modules (:mod:`~distill.data.librispeech`, :mod:`~distill.data.gigaspeech`,
:mod:`~distill.data.kaldi_dir`) read a release; this module maps parts to logical splits, runs the
right one and writes the index and the report. CLI: ``python -m distill.bin.prepare_manifests``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Literal

from distill.config import ConfigError, dump_config, missing_path, path_field
from distill.data import gigaspeech, kaldi_dir, librispeech
from distill.data import report as R
from distill.data.manifests import LOGICAL_SPLITS, write_part, write_splits_index
from distill.data.pipe import DEFAULT_PIPE_TIMEOUT
from distill.data.prep_common import DataPrepError

__all__ = ["PrepareManifestsConfig", "check_inputs", "prepare_manifests", "resolve_splits", "split_of"]

log = logging.getLogger("prepare_manifests")


def _default_splits() -> dict[str, list[str]]:
    return {"train": ["train-clean-100"], "dev": ["dev-clean"], "test": ["test-clean", "test-other"]}


@dataclasses.dataclass
class PrepareManifestsConfig:
    """Stage 0: corpus → lhotse manifests under out_dir, indexed by splits.yaml."""

    corpus: Literal["librispeech", "gigaspeech", "kaldi"]
    corpus_dir: str | None = None
    out_dir: str = path_field("data/manifests", output_dir=True)
    # logical split → corpus parts (LibriSpeech parts, GigaSpeech subsets, or Kaldi data dir names)
    splits: dict[str, list[str]] = dataclasses.field(default_factory=_default_splits)
    # a flat list of parts replacing `splits`; each goes to train/dev/test by its name (see split_of)
    parts: list[str] | None = None
    nj: int = 2
    download: bool = False
    # header: read headers only; tail: also decode 0.1 s at each end (catches truncation); full: decode all
    audio_check: Literal["header", "tail", "full"] = "tail"
    # seconds a Kaldi wav.scp `cmd |` may run before it is killed with its child processes (utterance dropped)
    pipe_timeout: float = DEFAULT_PIPE_TIMEOUT
    log_file: str | None = None


def split_of(part: str) -> str:
    """The logical split of a part name: train*/dev*/test* (LibriSpeech, Kaldi dirs) or a GigaSpeech subset."""
    low = part.lower()
    if part in gigaspeech.TRAIN_SUBSETS or low.startswith("train"):
        return "train"
    for name in ("dev", "test"):
        if low.startswith(name):
            return name
    if low.startswith("valid"):
        return "dev"
    raise DataPrepError(
        f"cannot tell whether part '{part}' is for train, dev or test from its name; "
        "map parts explicitly with `splits:` in conf/data.yaml"
    )


def resolve_splits(cfg: PrepareManifestsConfig) -> dict[str, list[str]]:
    """``cfg.splits``, or ``cfg.parts`` grouped by :func:`split_of`; checked."""
    if cfg.parts:
        splits: dict[str, list[str]] = {}
        for p in cfg.parts:
            splits.setdefault(split_of(p), []).append(p)
    else:
        splits = {k: list(v) for k, v in cfg.splits.items()}
    unknown = [k for k in splits if k not in LOGICAL_SPLITS]
    if unknown or not splits.get("train"):
        raise DataPrepError(f"`splits` must map train (required), dev and test to lists of parts; got {splits}")
    return splits


def check_inputs(cfg: PrepareManifestsConfig) -> None:
    """What can be checked before anything is written; :class:`ConfigError` naming the key."""
    if cfg.download and cfg.corpus != "librispeech":
        raise ConfigError(f"key 'download': only supported for librispeech, not {cfg.corpus}")
    if cfg.corpus_dir is None and not cfg.download:
        raise ConfigError("missing required key 'corpus_dir' (or download=true for LibriSpeech)")
    if cfg.corpus_dir is not None and not cfg.download and not Path(cfg.corpus_dir).exists():
        raise ConfigError(f"key 'corpus_dir': {missing_path(cfg.corpus_dir)}")
    if not (math.isfinite(cfg.pipe_timeout) and cfg.pipe_timeout > 0):
        raise ConfigError(f"key 'pipe_timeout': expected a positive number of seconds, got {cfg.pipe_timeout!r}")
    try:
        resolve_splits(cfg)
    except DataPrepError as e:
        raise ConfigError(f"key '{'parts' if cfg.parts else 'splits'}': {e}") from None


def prepare_manifests(cfg: PrepareManifestsConfig) -> R.PrepReport:
    """Prepare all parts named in ``cfg.splits``; returns the report (also written to summary.json)."""
    t0 = time.time()
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = resolve_splits(cfg)
    parts: list[str] = []
    for names in splits.values():
        parts += [p for p in names if p not in parts]
    if cfg.corpus_dir is None and not cfg.download:
        raise DataPrepError("corpus_dir is not set: pass corpus_dir=<dir> (or download=true for LibriSpeech)")
    corpus_dir = Path(cfg.corpus_dir or "download")
    report = R.PrepReport("prepare_manifests")
    if cfg.download and cfg.corpus != "librispeech":
        raise DataPrepError(f"download=true is only supported for librispeech, not {cfg.corpus}")
    if cfg.corpus == "librispeech":
        manifests = librispeech.prepare(corpus_dir, parts, report, cfg.nj, cfg.audio_check, cfg.download)
    elif cfg.corpus == "gigaspeech":
        manifests = None  # streamed: written while the metadata is read
        index = gigaspeech.write_manifests(corpus_dir, parts, report, out_dir, cfg.nj, cfg.audio_check)
    else:
        manifests = kaldi_dir.prepare(
            corpus_dir, parts, report, out_dir / "kaldi_clean", cfg.nj, cfg.audio_check, cfg.pipe_timeout
        )
    if manifests is not None:
        index = {part: write_part(out_dir, cfg.corpus, part, *manifests[part]) for part in parts}
    for part in parts:
        report.extra[part].update(hours=index[part]["hours"])
    write_splits_index(out_dir, cfg.corpus, splits, index)
    report.write_json(out_dir / "summary.json")
    dump_config(cfg, out_dir / "prepare_manifests.yaml")
    report.log_summary()
    for part in splits["train"]:
        if index[part]["num_utterances"] == 0:
            raise DataPrepError(f"training part '{part}' has no usable utterance; see {out_dir / 'summary.json'}")
    log.info("stage 0 done in %.1f s: %s", time.time() - t0, out_dir / "splits.yaml")
    return report
