"""Manifest files on disk and the two small index files that let later stages ignore the corpus.

* ``<manifest_dir>/splits.yaml`` (stage 0): the corpus, each logical split (``train``, ``dev``,
  ``test``) as a list of corpus parts, and each part's recordings/supervisions/cuts files.
* ``<lang_dir>/cuts.yaml`` (stage 1): the filtered, normalised cuts: ``train`` and ``dev`` (one file
  each, parts merged) and ``test`` (one file per test part, scored separately).

Paths inside both files are relative to the index file's directory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from lhotse import CutSet, RecordingSet, SupervisionSet

from distill.data.prep_common import DataPrepError, cuts_from_manifests

SPLITS_FILE = "splits.yaml"
CUTS_FILE = "cuts.yaml"
LOGICAL_SPLITS = ("train", "dev", "test")


def part_files(corpus: str, part: str) -> dict[str, str]:
    """lhotse's naming: ``<corpus>_{recordings,supervisions,cuts}_<part>.jsonl.gz``."""
    return {k: f"{corpus}_{k}_{part}.jsonl.gz" for k in ("recordings", "supervisions", "cuts")}


def write_part(out_dir: Path, corpus: str, part: str, recs: RecordingSet, sups: SupervisionSet) -> dict[str, Any]:
    """Write one part's manifests (recordings, supervisions, one cut per utterance); return its index entry."""
    files = part_files(corpus, part)
    recs.to_file(out_dir / files["recordings"])
    sups.to_file(out_dir / files["supervisions"])
    cuts = cuts_from_manifests(recs, sups)
    cuts.to_file(out_dir / files["cuts"])
    hours = sum(s.duration for s in sups) / 3600
    return {**files, "num_utterances": len(sups), "num_recordings": len(recs), "hours": round(hours, 4)}


def write_splits_index(out_dir: Path, corpus: str, splits: dict[str, list[str]], parts: dict[str, Any]) -> Path:
    path = out_dir / SPLITS_FILE
    data = {"corpus": corpus, "sampling_rate": 16000, "splits": splits, "parts": parts}
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def read_splits_index(manifest_dir: str | Path) -> dict[str, Any]:
    """Stage 0's index, with each part's file names resolved to paths."""
    manifest_dir = Path(manifest_dir)
    path = manifest_dir / SPLITS_FILE
    if not path.is_file():
        raise DataPrepError(f"{path} not found: run stage 0 (distill.bin.prepare_manifests) first")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    for entry in data["parts"].values():
        for k in ("recordings", "supervisions", "cuts"):
            entry[k] = manifest_dir / entry[k]
    return data


def write_cuts_index(lang_dir: Path, entries: dict[str, Any]) -> Path:
    path = lang_dir / CUTS_FILE
    path.write_text(yaml.safe_dump(entries, sort_keys=False), encoding="utf-8")
    return path


def read_cuts_index(lang_dir: str | Path) -> dict[str, Any]:
    """``{"train": Path, "dev": Path | None, "test": {part: Path}}`` from stage 1's ``cuts.yaml``."""
    lang_dir = Path(lang_dir)
    path = lang_dir / CUTS_FILE
    if not path.is_file():
        raise DataPrepError(f"{path} not found: run stage 1 (distill.bin.prepare_lang) first")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out[k] = {name: lang_dir / p for name, p in v.items()}
        else:
            out[k] = lang_dir / v if v else None
    return out


def load_cuts(lang_dir: str | Path, split: str) -> CutSet | dict[str, CutSet]:
    """Stage 1's cuts for ``split`` (lazy): a CutSet for ``train``/``dev``, a dict of CutSets for ``test``."""
    idx = read_cuts_index(lang_dir)
    if split not in idx or idx[split] is None:
        raise DataPrepError(f"{Path(lang_dir) / CUTS_FILE} has no '{split}' entry (has: {', '.join(idx)})")
    v = idx[split]
    if isinstance(v, dict):
        return {name: CutSet.from_jsonl_lazy(p) for name, p in v.items()}
    return CutSet.from_jsonl_lazy(v)
