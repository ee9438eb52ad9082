"""Stage 1: normalise transcripts, train the tokenizer, filter cuts; write the lang dir.

Writes ``tokens.txt words.txt lexicon.txt [bpe.model] train_text.txt train_token_ids.txt``, the
filtered cuts (``cuts_train.jsonl.gz``, ``cuts_dev.jsonl.gz``, ``cuts_test_<part>.jsonl.gz``; the
supervision text is normalised, the original is kept in ``custom["orig_text"]``) indexed by
``cuts.yaml``, and ``summary.json`` with what was dropped and why. CLI: ``python -m distill.bin.prepare_lang``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from lhotse import CutSet
from lhotse.serialization import load_jsonl
from lhotse.utils import compute_num_samples
from tqdm import tqdm

from distill.config import dump_config, path_field
from distill.data import report as R
from distill.data.filters import ctc_min_frames, w2v2_num_frames
from distill.data.manifests import read_splits_index, write_cuts_index
from distill.data.prep_common import DataPrepError
from distill.data.text import TextNormalizer, TextNormConfig
from distill.data.tokenizer import Tokenizer, build_char_tokenizer, train_bpe, write_lang_files

__all__ = ["FilterConfig", "PrepareLangConfig", "TokenizerConfig", "prepare_lang", "read_cut_dicts"]

log = logging.getLogger("prepare_lang")


@dataclasses.dataclass
class TokenizerConfig:
    type: Literal["bpe", "char"] = "bpe"
    vocab_size: int = 500
    model_type: Literal["bpe", "unigram"] = "bpe"
    character_coverage: float = 1.0
    # train BPE on a random sample of at most this many transcripts (sentencepiece's own advice: ~1 M
    # sentences; bounds memory and time on GigaSpeech XL's 8 M); 0 = all
    max_sentences: int = 1_000_000


@dataclasses.dataclass
class FilterConfig:
    min_duration: float = 0.5
    max_duration: float = 30.0
    # drop utterances whose tokens cannot fit the W2V2 output frames as a CTC path
    ctc_fit: bool = True
    # check the CTC fit on audio sped up by this factor (1.1 when training uses speed perturbation)
    max_speed_factor: float = 1.0
    # logical splits the duration/CTC filters apply to (test sets are kept whole by default)
    apply_to: list[str] = dataclasses.field(default_factory=lambda: ["train", "dev"])


@dataclasses.dataclass
class PrepareLangConfig:
    """Stage 1: text normalisation, tokenizer, cut filtering → lang_dir."""

    manifest_dir: str = path_field("data/manifests")
    lang_dir: str = path_field("data/lang", output_dir=True)
    text: TextNormConfig = dataclasses.field(default_factory=TextNormConfig)
    tokenizer: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)
    filter: FilterConfig = dataclasses.field(default_factory=FilterConfig)
    nj: int = 2
    log_file: str | None = None


class _Sizes:
    """Hours and utterances of the written cuts per split (test: per part), for ``cuts.yaml``."""

    def __init__(self) -> None:
        self.seconds: dict[str, Any] = {}
        self.count: dict[str, Any] = {}

    def add(self, split: str, cut: dict[str, Any], part: str | None = None) -> None:
        for table, value in ((self.seconds, cut["duration"]), (self.count, 1)):
            if part is None:
                table[split] = table.get(split, 0) + value
            else:
                table.setdefault(split, {})[part] = table.get(split, {}).get(part, 0) + value

    def index(self) -> dict[str, Any]:
        def hours(v: Any) -> Any:
            return {p: hours(x) for p, x in v.items()} if isinstance(v, dict) else round(v / 3600, 4)

        return {"hours": {k: hours(v) for k, v in self.seconds.items()}, "utterances": dict(self.count)}


def read_cut_dicts(path: str | Path) -> Iterator[dict[str, Any]]:
    """The cuts of a stage-0 (or stage-1) cuts file as the JSON dicts lhotse wrote, one per utterance.

    Stage 1 only reads and rewrites a cut's supervision text, so it works on these dicts: lhotse's
    object round trip (``from_dict`` + ``to_dict``) costs more than all the rest of the stage, which
    matters at millions of cuts (docs/data.md, "Scale"). The files stay lhotse's format.
    """
    for n, d in enumerate(load_jsonl(path), 1):
        sups = d.get("supervisions")
        if not isinstance(sups, list) or len(sups) != 1 or "recording" not in d:
            raise DataPrepError(
                f"{path}: cut {n} ({d.get('id')!r}) must have a recording and exactly one "
                "supervision, as stage 0 writes them; re-run stage 0"
            )
        yield d


def _normalised(
    cuts: Iterable[dict[str, Any]],
    part: str,
    logical: str,
    norm: TextNormalizer,
    cfg: PrepareLangConfig,
    report: R.PrepReport,
    seen: dict[str, str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Cuts (dicts, :func:`read_cut_dicts`) with normalised text that pass the text and duration rules;
    the rest dropped and counted.

    ``seen`` (cut id → part) de-duplicates parts merged into one split (GigaSpeech subsets nest); it is
    only needed, and only passed, when a split has several parts.
    """
    filt = cfg.filter
    use_dur = logical in filt.apply_to
    garbage = set(cfg.text.garbage_tags)
    for cut in cuts:
        cid, duration = cut["id"], cut["duration"]
        if seen is not None:
            if cid in seen:
                report.drop(part, R.DUPLICATE_ID, cid, f"already taken from part '{seen[cid]}'")
                continue
            seen[cid] = part
        sup = cut["supervisions"][0]
        text = sup.get("text") or ""
        orig = (sup.get("custom") or {}).get("orig_text", text)
        if norm.is_garbage(text):
            report.drop(part, R.GARBAGE_ONLY, cid, text)
            continue
        new = norm(text)
        if not new:
            report.drop(part, R.EMPTY_AFTER_NORM, cid, repr(orig))
            continue
        if garbage and any(w in garbage for w in text.split()):
            report.note(part, R.NOTE_TAGS_REMOVED, cid, text)
        if use_dur and duration < filt.min_duration:
            report.drop(part, R.TOO_SHORT, cid, f"{duration:.2f} s < {filt.min_duration} s")
            continue
        if use_dur and duration > filt.max_duration:
            report.drop(part, R.TOO_LONG, cid, f"{duration:.2f} s > {filt.max_duration} s")
            continue
        custom = dict(sup.get("custom") or {})
        custom["orig_text"] = orig
        yield {**cut, "supervisions": [{**sup, "text": new, "custom": custom}]}


def _tokenised(
    cuts: Iterable[dict[str, Any]],
    part: str,
    logical: str,
    tok: Tokenizer,
    cfg: PrepareLangConfig,
    report: R.PrepReport,
) -> Iterator[tuple[dict[str, Any], list[int]]]:
    """Cuts with their token ids; those whose tokens cannot fit a CTC path are dropped and counted."""
    check = cfg.filter.ctc_fit and logical in cfg.filter.apply_to
    unk_chars: Counter[str] = Counter()
    for cut in cuts:
        text = cut["supervisions"][0]["text"]
        ids = tok.encode(text)
        missing = tok.uncovered_chars(text)
        if missing:
            unk_chars.update(missing)
            report.note(part, R.NOTE_UNK, cut["id"], "".join(sorted(missing)))
        if check:
            # lhotse's Cut.num_samples, from the dict
            num_samples = compute_num_samples(cut["duration"], cut["recording"]["sampling_rate"])
            frames = w2v2_num_frames(int(num_samples / cfg.filter.max_speed_factor))
            need = ctc_min_frames(ids)
            if need > frames:
                report.drop(
                    part, R.CTC_NO_FIT, cut["id"], f"{need} frames needed for {len(ids)} tokens, {frames} available"
                )
                continue
        report.keep(part)
        yield cut, ids
    if unk_chars:
        report.extra[part]["unk_chars"] = dict(unk_chars.most_common())


def prepare_lang(cfg: PrepareLangConfig) -> R.PrepReport:
    """Stage 1 on ``cfg.manifest_dir`` into ``cfg.lang_dir``; returns the report (also written to summary.json)."""
    t0 = time.time()
    index = read_splits_index(cfg.manifest_dir)
    splits: dict[str, list[str]] = index["splits"]
    parts = index["parts"]
    lang_dir = Path(cfg.lang_dir)
    lang_dir.mkdir(parents=True, exist_ok=True)
    norm = TextNormalizer(cfg.text)
    report = R.PrepReport("prepare_lang")

    # pass 1 over train: normalise + duration filter → candidates and tokenizer training text
    text_path = lang_dir / ".tokenizer_text.txt"
    cand_paths = {part: lang_dir / f".train_candidates_{part}.jsonl.gz" for part in splits["train"]}
    n_cand = 0
    seen: dict[str, str] | None = {} if len(splits["train"]) > 1 else None
    with open(text_path, "w", encoding="utf-8") as tf:
        for part in splits["train"]:
            with CutSet.open_writer(cand_paths[part]) as w:
                cuts = read_cut_dicts(parts[part]["cuts"])
                for cut in tqdm(
                    _normalised(cuts, part, "train", norm, cfg, report, seen),
                    desc=f"normalise {part}",
                    unit="cut",
                    mininterval=10,
                    disable=None,
                ):
                    w.write(cut)
                    tf.write(cut["supervisions"][0]["text"] + "\n")
                    n_cand += 1
    seen = None
    log.info("pass 1: %d training transcripts normalised (%.1f s)", n_cand, time.time() - t0)
    t1 = time.time()
    if n_cand == 0:
        report.write_json(lang_dir / "summary.json")
        report.log_summary()
        raise DataPrepError(
            f"no training utterance left after normalisation and duration filtering; see {lang_dir / 'summary.json'}"
        )

    if cfg.tokenizer.type == "bpe":
        sample = cfg.tokenizer.max_sentences
        if 0 < sample < n_cand:
            log.info(
                "tokenizer: training on a random sample of %d of the %d training transcripts "
                "(tokenizer.max_sentences; 0 = all)",
                sample,
                n_cand,
            )
        tok = train_bpe(
            text_path,
            lang_dir,
            cfg.tokenizer.vocab_size,
            cfg.tokenizer.model_type,
            cfg.tokenizer.character_coverage,
            cfg.nj,
            max_sentences=sample,
        )
    else:
        (lang_dir / "bpe.model").unlink(missing_ok=True)
        (lang_dir / "bpe.vocab").unlink(missing_ok=True)
        with open(text_path, encoding="utf-8") as f:
            tok = build_char_tokenizer(line.rstrip("\n") for line in f)
    log.info("tokenizer: %s, %d tokens (%.1f s)", tok.kind, tok.vocab_size, time.time() - t1)

    # pass 2 over train: CTC fit → final train cuts, transcripts, token ids
    words: Counter[str] = Counter()
    size = _Sizes()
    with (
        CutSet.open_writer(lang_dir / "cuts_train.jsonl.gz") as w,
        open(lang_dir / "train_text.txt", "w", encoding="utf-8") as ft,
        open(lang_dir / "train_token_ids.txt", "w", encoding="utf-8") as fi,
    ):
        for part in splits["train"]:
            cuts = tqdm(
                read_cut_dicts(cand_paths[part]), desc=f"tokenise {part}", unit="cut", mininterval=10, disable=None
            )
            for cut, ids in _tokenised(cuts, part, "train", tok, cfg, report):
                w.write(cut)
                size.add("train", cut)
                text = cut["supervisions"][0]["text"]
                ft.write(text + "\n")
                fi.write(" ".join(map(str, ids)) + "\n")
                words.update(text.split())
            cand_paths[part].unlink()
    text_path.unlink()
    if not words:
        report.write_json(lang_dir / "summary.json")
        report.log_summary()
        raise DataPrepError(f"no training utterance fits the CTC length rule; see {lang_dir / 'summary.json'}")
    write_lang_files(lang_dir, tok, words)

    entries: dict[str, object] = {"train": "cuts_train.jsonl.gz"}
    if splits.get("dev"):
        seen = {} if len(splits["dev"]) > 1 else None
        with CutSet.open_writer(lang_dir / "cuts_dev.jsonl.gz") as w:
            for part in splits["dev"]:
                cuts = _normalised(read_cut_dicts(parts[part]["cuts"]), part, "dev", norm, cfg, report, seen)
                for cut, _ in _tokenised(cuts, part, "dev", tok, cfg, report):
                    w.write(cut)
                    size.add("dev", cut)
        entries["dev"] = "cuts_dev.jsonl.gz"
    if splits.get("test"):
        entries["test"] = {}
        for part in splits["test"]:
            name = f"cuts_test_{part}.jsonl.gz"
            with CutSet.open_writer(lang_dir / name) as w:
                cuts = _normalised(read_cut_dicts(parts[part]["cuts"]), part, "test", norm, cfg, report)
                for cut, _ in _tokenised(cuts, part, "test", tok, cfg, report):
                    w.write(cut)
                    size.add("test", cut, part)
            entries["test"][part] = name
    entries.update(size.index())
    write_cuts_index(lang_dir, entries)
    report.extra[splits["train"][0]].update(vocab_size=tok.vocab_size, num_words=len(words))
    report.write_json(lang_dir / "summary.json")
    dump_config(cfg, lang_dir / "prepare_lang.yaml")
    report.log_summary()
    log.info("stage 1 done in %.1f s: %s", time.time() - t0, lang_dir / "cuts.yaml")
    return report
