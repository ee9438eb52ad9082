#!/usr/bin/env python3
"""Deterministic, offline generator of the synthetic multi-speaker English demo corpus.

Sentences come from ``local/data/austen_sentences.txt`` (Jane Austen's novels, public domain; see
``local/data/README.md``). Each "speaker" is one concrete synthesiser setting, (engine, voice, variant,
pitch, rate): espeak-ng with many accents and voice variants, and festival with its English voices
(kal_diphone, ked_diphone and the 32 kHz HTS voice cmu_us_slt_arctic_hts). All audio is 16 kHz mono
16-bit; sox does every resampling.

Splits are honest: test and dev sentences never occur in train, and test/dev speakers never occur in
train. Whole espeak-ng voice variants and the festival voice ked_diphone are held out for dev/test, the
other festival voices appear in dev/test only with pitch/rate settings unseen in train; every engine
of dev/test is also in train. Test and dev sentences are drawn only from sentences with at most
``--max-test-oov`` words outside the training text (default 0), so a model trained on train can
recognise every test word.

``--size large`` (for training a stronger teacher offline) is the whole ``default`` corpus plus ~8.7 h of
train from 370 more train speakers (settings on wider pitch/rate grids) reading sentences not in the
default corpus; its dev and test are byte-identical to default's, and half of its train utterances are
augmented (room reverb, band limit, noise at 5-30 dB SNR, loudness).

    python local/make_demo_corpus.py --out DIR [--seed 0] [--size {tiny,small,default,large}]
        [--train-hours H] [--layouts kaldi,librispeech,gigaspeech] [--nj 2]

Output under DIR:
    wav/<split>/<spk>/<utt>.wav                     the synthesised audio (always)
    kaldi/{train,dev,test}/{wav.scp,text,utt2spk,spk2utt,utt2dur,reco2dur}
    LibriSpeech/{train-clean-100,dev-clean,test-clean}/<spk>/<chapter>/*.flac + *.trans.txt
    GigaSpeech/GigaSpeech.json + audio/podcast/P*/POD*.opus
    speakers.tsv, utterances.tsv, summary.json      what was made (and how ids map across layouts)

Same seed and parameters give byte-identical text files and identical audio samples. A re-run with the
same parameters finds the done-marker and does nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import soundfile as sf

try:
    from distill.log import setup_logging
except ImportError:  # the generator also runs outside the package's environment

    def setup_logging(log_file: str | Path | None = None, level: int = logging.INFO) -> logging.Logger:
        logging.basicConfig(
            level=level,
            format="%(asctime)s %(levelname)s [%(name)s] %(message)s",
            handlers=[logging.StreamHandler(sys.stderr)] + ([logging.FileHandler(log_file)] if log_file else []),
        )
        return logging.getLogger()


try:
    from tqdm import tqdm
except ImportError:

    def tqdm(it: Iterable, **_: object) -> Iterable:  # type: ignore[misc]
        return it


log = logging.getLogger("make_demo_corpus")

#: Bump when the output for given parameters changes, so old outputs are not taken as complete.
GENERATOR_VERSION = 1
SAMPLE_RATE = 16000
SPLITS = ("train", "dev", "test")
LAYOUTS = ("kaldi", "librispeech", "gigaspeech")
DEFAULT_SENTENCES = Path(__file__).resolve().parent / "data" / "austen_sentences.txt"
LIBRISPEECH_PARTS = {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"}
GIGASPEECH_SUBSETS = {"train": ["{XL}", "{L}", "{M}", "{S}", "{XS}"], "dev": ["{DEV}"], "test": ["{TEST}"]}
GIGASPEECH_TAGS = {",": "<COMMA>", ".": "<PERIOD>", "?": "<QUESTIONMARK>", "!": "<EXCLAMATIONPOINT>"}
GARBAGE_TAGS = ("<SIL>", "<MUSIC>", "<NOISE>")

ESPEAK_ACCENTS = (
    "en-us",
    "en",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
#: espeak-ng voice variants by family; odd ones (whisper, robots, clipping or duplicate ones) left out.
ESPEAK_VARIANTS = {
    "male": (
        "m1",
        "m2",
        "m3",
        "m4",
        "m5",
        "m6",
        "m7",
        "m8",
        "Alex",
        "Andy",
        "Denis",
        "Diogo",
        "Henrique",
        "Hugo",
        "Lee",
        "Mario",
        "Michael",
        "Mike",
        "Nguyen",
        "adam",
        "announcer",
        "benjamin",
        "boris",
        "david",
        "edward",
        "edward2",
        "grandpa",
        "iven3",
        "iven4",
        "marcelo",
        "max",
        "michel",
        "miguel",
        "pablo",
        "quincy",
        "rob",
        "robert",
        "travis",
        "victor",
        "zac",
    ),
    "female": (
        "f1",
        "f2",
        "f3",
        "f4",
        "f5",
        "Alicia",
        "Andrea",
        "Annie",
        "anika",
        "aunty",
        "belinda",
        "grandma",
        "linda",
        "shelby",
        "steph",
        "steph2",
        "steph3",
    ),
    "klatt": ("klatt", "klatt2", "klatt3", "klatt4", "klatt5"),
}
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
#: festival voices whose native rate is not 16 kHz (resampled with sox).
FESTIVAL_NATIVE_RATE = {"kal_diphone": 16000, "ked_diphone": 16000, "cmu_us_slt_arctic_hts": 32000}
#: Pitch/rate grids. espeak-ng: -p (0-99) and -s (words/min). festival diphone voices: target F0 mean
#: (Hz) and Duration_Stretch (>1 slower). HTS: -fm half-tone shift and -r speed factor (>1 faster).
PITCH_RATE_GRID = {
    "espeak-ng": (tuple(range(30, 71, 5)), tuple(range(145, 191, 5))),
    "diphone": ((90, 95, 100, 105, 110, 115, 120, 125, 130), (0.95, 1.0, 1.05, 1.1, 1.15, 1.2, 1.25)),
    "hts": ((-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0), (0.9, 0.95, 1.0, 1.05, 1.1, 1.15)),
}
#: Rough speaking time per word plus fixed overhead (s), to pick enough training sentences for a target
#: number of hours before any audio exists; the summary reports the real duration.
EST_SEC_PER_WORD, EST_SEC_PER_UTT = 0.29, 0.5


@dataclass(frozen=True)
class SizeSpec:
    """One --size preset: how much data, and how many speakers of each (engine, voice) per split.

    With ``base`` set (``large``), the preset extends another one: the base corpus is planned exactly as
    for ``--size <base>`` (its train, dev and test utterances, ids and audio unchanged), then more train
    sentences (those not in the base corpus, in the same seeded order) are dealt to ``speakers["train"]``
    *additional* train speakers, drawn from the finer ``LARGE_GRID`` and never equal to a base setting,
    until the train estimate reaches ``train_hours``. Dev and test are the base's. ``augment`` is the
    fraction of train utterances whose audio is augmented (room, band limit, noise, loudness; see
    ``augment_plan``); dev and test never are.
    """

    train_hours: float | None
    train_utts: int | None
    dev_utts: int
    test_utts: int
    speakers: dict[str, tuple[tuple[str, str, int], ...]]
    utts_per_audio: int
    base: str | None = None
    augment: float = 0.0


# ("espeak-ng", "*", n): n espeak-ng speakers (accent drawn, variant from the split's variant set).
SIZES: dict[str, SizeSpec] = {
    "tiny": SizeSpec(
        None,
        18,
        6,
        6,
        {
            "train": (("espeak-ng", "*", 3), ("festival", "kal_diphone", 1), ("festival", "cmu_us_slt_arctic_hts", 1)),
            "dev": (("espeak-ng", "*", 1), ("festival", "ked_diphone", 1)),
            "test": (("espeak-ng", "*", 1), ("festival", "ked_diphone", 1), ("festival", "cmu_us_slt_arctic_hts", 1)),
        },
        3,
    ),
    "small": SizeSpec(
        0.2,
        None,
        60,
        60,
        {
            "train": (("espeak-ng", "*", 16), ("festival", "kal_diphone", 2), ("festival", "cmu_us_slt_arctic_hts", 1)),
            "dev": (("espeak-ng", "*", 3), ("festival", "kal_diphone", 1), ("festival", "ked_diphone", 1)),
            "test": (
                ("espeak-ng", "*", 4),
                ("festival", "kal_diphone", 1),
                ("festival", "ked_diphone", 1),
                ("festival", "cmu_us_slt_arctic_hts", 1),
            ),
        },
        8,
    ),
    "default": SizeSpec(
        1.25,
        None,
        300,
        300,
        {
            "train": (("espeak-ng", "*", 40), ("festival", "kal_diphone", 4), ("festival", "cmu_us_slt_arctic_hts", 3)),
            "dev": (
                ("espeak-ng", "*", 6),
                ("festival", "kal_diphone", 1),
                ("festival", "ked_diphone", 1),
                ("festival", "cmu_us_slt_arctic_hts", 1),
            ),
            "test": (
                ("espeak-ng", "*", 8),
                ("festival", "kal_diphone", 1),
                ("festival", "ked_diphone", 2),
                ("festival", "cmu_us_slt_arctic_hts", 1),
            ),
        },
        10,
    ),
    # ~10 h of train: the default corpus (all of it) + 370 more train speakers reading ~8,700 more
    # sentences; dev/test are exactly default's; half of the train utterances augmented.
    "large": SizeSpec(
        10.0,
        None,
        300,
        300,
        {
            "train": (
                ("espeak-ng", "*", 280),
                ("festival", "kal_diphone", 50),
                ("festival", "cmu_us_slt_arctic_hts", 40),
            ),
            "dev": (),
            "test": (),
        },
        10,
        base="default",
        augment=0.5,
    ),
}
#: Pitch/rate grids of the additional train speakers of a size with a base (wider and finer than
#: PITCH_RATE_GRID, which every base size keeps using so that its output is unchanged).
LARGE_GRID = {
    "espeak-ng": (tuple(range(25, 76, 5)), tuple(range(130, 201, 5))),
    "diphone": (
        (80, 85, 90, 95, 100, 105, 110, 115, 120, 125, 130, 135, 140),
        (0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2, 1.25, 1.3),
    ),
    "hts": (
        (-3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0),
        (0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2),
    ),
}


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: a concrete synthesiser setting. ``spk`` is a LibriSpeech-style number."""

    spk: str
    split: str
    engine: str
    voice: str
    variant: str
    pitch: float
    rate: float

    @property
    def chapter(self) -> str:
        return f"{self.spk}0"

    @property
    def kaldi_id(self) -> str:
        return f"{self.spk}-{self.chapter}"

    @property
    def setting(self) -> tuple[str, str, str, float, float]:
        return (self.engine, self.voice, self.variant, self.pitch, self.rate)


@dataclass(frozen=True)
class Utterance:
    utt: str
    split: str
    speaker: Speaker
    sentence: str

    @property
    def text(self) -> str:
        return transcript(self.sentence)


class CorpusError(RuntimeError):
    """A problem with the inputs or a synthesiser; the message names the file or utterance."""


# ---- text ------------------------------------------------------------------------------------------
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")
_SENTENCE = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*[,.;:!?]?(?: [A-Za-z]+(?:'[A-Za-z]+)*[,.;:!?]?)*")


def transcript(sentence: str) -> str:
    """LibriSpeech-style transcript of a pool sentence: upper-case words, apostrophes kept."""
    return " ".join(w.upper() for w in _WORD.findall(sentence))


def gigaspeech_text(sentence: str) -> str:
    """GigaSpeech ``text_tn``: upper-case words with <COMMA>/<PERIOD>/... tags (; and : are dropped)."""
    out = []
    for token in sentence.split():
        m = _WORD.match(token)
        out.append(m.group(0).upper())
        tag = GIGASPEECH_TAGS.get(token[m.end() :])
        if tag:
            out.append(tag)
    return " ".join(out)


def load_sentences(path: Path) -> list[str]:
    """The sentence pool; every line must be a well-formed sentence (see local/data/README.md)."""
    if not path.is_file():
        raise CorpusError(f"sentence file {path} not found")
    sentences, seen = [], set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not _SENTENCE.fullmatch(line):
            raise CorpusError(
                f"{path}:{n}: not a well-formed sentence (letters, apostrophes, single spaces, "
                f"one of ,.;:!? after a word): {line!r}"
            )
        key = transcript(line)
        if key in seen:
            raise CorpusError(f"{path}:{n}: duplicate sentence {key!r}")
        seen.add(key)
        sentences.append(line)
    return sentences


def estimated_seconds(sentence: str) -> float:
    return EST_SEC_PER_UTT + EST_SEC_PER_WORD * len(_WORD.findall(sentence))


def sentence_order(pool: Sequence[str], seed: int) -> list[str]:
    """The seeded order in which sentences are taken (train first, then test and dev)."""
    order = list(pool)
    random.Random(f"sentences-{seed}").shuffle(order)
    return order


def select_sentences(
    pool: Sequence[str],
    seed: int,
    train_hours: float | None,
    train_utts: int | None,
    dev_utts: int,
    test_utts: int,
    max_oov: int,
) -> dict[str, list[str]]:
    """Disjoint train/dev/test sentence lists.

    Train takes sentences of the seeded shuffle until the estimated audio reaches ``train_hours`` (or
    ``train_utts`` sentences). Test, then dev, take the following sentences that have at most
    ``max_oov`` words outside the training text, so held-out words are learnable.
    """
    order = sentence_order(pool, seed)
    train: list[str] = []
    total, i = 0.0, 0
    while i < len(order) and (
        len(train) < train_utts if train_utts is not None else total < 3600.0 * (train_hours or 0.0)
    ):
        train.append(order[i])
        total += estimated_seconds(order[i])
        i += 1
    vocab = {w for s in train for w in transcript(s).split()}
    held: dict[str, list[str]] = {"test": [], "dev": []}
    want = {"test": test_utts, "dev": dev_utts}
    for s in order[i:]:
        split = "test" if len(held["test"]) < want["test"] else "dev"
        if len(held[split]) >= want[split]:
            break
        if sum(w not in vocab for w in transcript(s).split()) <= max_oov:
            held[split].append(s)
    for split in ("test", "dev"):
        if len(held[split]) < want[split]:
            raise CorpusError(
                f"only {len(held[split])} of {want[split]} {split} sentences have at most {max_oov} words "
                f"outside the {len(train)} training sentences; use more training data or --max-test-oov"
            )
    return {"train": train, "dev": held["dev"], "test": held["test"]}


# ---- speakers --------------------------------------------------------------------------------------
def split_variants(seed: int) -> dict[str, list[str]]:
    """espeak-ng variants per split: each family contributes to each split; dev/test ones are held out."""
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    rng = random.Random(f"variants-{seed}")
    for family in sorted(ESPEAK_VARIANTS):
        names = sorted(ESPEAK_VARIANTS[family])
        rng.shuffle(names)
        n_test = max(1, round(0.15 * len(names)))
        n_dev = max(1, round(0.12 * len(names)))
        out["test"] += names[:n_test]
        out["dev"] += names[n_test : n_test + n_dev]
        out["train"] += names[n_test + n_dev :]
    return out


def _draw_settings(
    rng: random.Random,
    entries: Sequence[tuple[str, str, int]],
    pool: Sequence[str],
    grids: dict[str, tuple[tuple, tuple]],
    used: set[tuple],
    what: str,
) -> Iterator[tuple]:
    """Synthesiser settings ``(engine, accent, variant, pitch, rate)`` for ``entries`` of a size spec, in order:
    espeak-ng variants taken round-robin from ``pool``, accents and pitch/rate drawn from ``grids``, none in
    ``used`` (each drawn one is added to it)."""
    n_espeak = 0
    for engine, voice, count in entries:
        for _ in range(count):
            for _attempt in range(1000):
                if engine == "espeak-ng":
                    accent, variant = rng.choice(ESPEAK_ACCENTS), pool[n_espeak % len(pool)]
                    grid = grids["espeak-ng"]
                else:
                    accent, variant = voice, ""
                    grid = grids["hts" if voice.endswith("_hts") else "diphone"]
                setting = (engine, accent, variant, rng.choice(grid[0]), rng.choice(grid[1]))
                if setting not in used:
                    break
            else:
                raise CorpusError(f"cannot find an unused {engine} {voice} setting for {what}")
            used.add(setting)
            n_espeak += engine == "espeak-ng"
            yield setting


def make_speakers(spec: SizeSpec, seed: int) -> list[Speaker]:
    """All speakers, numbered 1001... in split order; no (engine, voice, variant, pitch, rate) twice."""
    rng = random.Random(f"speakers-{seed}")
    variants = split_variants(seed)
    used: set[tuple] = set()
    speakers: list[Speaker] = []
    for split in SPLITS:
        pool = list(variants[split])
        rng.shuffle(pool)
        for setting in _draw_settings(rng, spec.speakers[split], pool, PITCH_RATE_GRID, used, split):
            speakers.append(Speaker(str(1001 + len(speakers)), split, *setting))
    return speakers


def make_utterances(sentences: dict[str, list[str]], speakers: list[Speaker]) -> list[Utterance]:
    """Sentences dealt round-robin to the split's speakers; utt ids ``<spk>-<chapter>-<nnnn>``."""
    utts = []
    for split in SPLITS:
        spks = [s for s in speakers if s.split == split]
        counts = {s.spk: 0 for s in spks}
        for i, sentence in enumerate(sentences[split]):
            spk = spks[i % len(spks)]
            utts.append(Utterance(f"{spk.kaldi_id}-{counts[spk.spk]:04d}", split, spk, sentence))
            counts[spk.spk] += 1
    return sorted(utts, key=lambda u: u.utt)


@dataclass
class Plan:
    """What a corpus holds: sentences per split, speakers, and the utterances in synthesis groups.

    Each group is batched for synthesis on its own (``synth_jobs``), so a base corpus inside a larger
    one is synthesised in exactly the batches of its own size and gets the same audio bytes.
    """

    sentences: dict[str, list[str]]
    speakers: list[Speaker]
    groups: list[list[Utterance]] = field(default_factory=list)

    @property
    def utterances(self) -> list[Utterance]:
        return sorted((u for g in self.groups for u in g), key=lambda u: u.utt)


def extra_speakers(spec: SizeSpec, seed: int, base: Sequence[Speaker]) -> list[Speaker]:
    """The additional train speakers of a size with a base: numbered after the base's, settings from
    ``LARGE_GRID`` and never one of the base's (any split); espeak-ng variants are train variants only."""
    rng = random.Random(f"extra-speakers-{seed}")
    pool = sorted(split_variants(seed)["train"])
    rng.shuffle(pool)
    used = {s.setting for s in base}
    first = 1 + max(int(s.spk) for s in base)
    out: list[Speaker] = []
    for setting in _draw_settings(rng, spec.speakers["train"], pool, LARGE_GRID, used, "the extra train speakers"):
        out.append(Speaker(str(first + len(out)), "train", *setting))
    return out


def plan_corpus(spec: SizeSpec, seed: int, pool: Sequence[str], max_test_oov: int) -> Plan:
    """Sentences, speakers and utterances of a corpus (no audio)."""
    if spec.base is None:
        chosen = select_sentences(
            pool, seed, spec.train_hours, spec.train_utts, spec.dev_utts, spec.test_utts, max_test_oov
        )
        speakers = make_speakers(spec, seed)
        return Plan(chosen, speakers, [make_utterances(chosen, speakers)])
    base = plan_corpus(SIZES[spec.base], seed, pool, max_test_oov)
    base_train = base.sentences["train"]
    held = set(base.sentences["dev"]) | set(base.sentences["test"])
    # the same seeded order as the base took its train sentences from: first the unused ones, then
    # (only when a target needs more than the pool) further passes over all train-eligible sentences
    eligible = [x for x in sentence_order(pool, seed) if x not in held]
    taken = set(base_train)
    stream = [x for x in eligible if x not in taken]
    total = sum(estimated_seconds(x) for x in base_train)
    target = 3600.0 * (spec.train_hours or 0.0) if spec.train_utts is None else None
    extra: list[str] = []
    passes, k = 0, 0
    while len(base_train) + len(extra) < spec.train_utts if target is None else total < target:
        if k == len(stream):
            passes, k = passes + 1, 0
            stream = list(eligible)
            random.Random(f"sentences-{seed}-pass{passes}").shuffle(stream)
        extra.append(stream[k])
        total += estimated_seconds(stream[k])
        k += 1
    speakers = extra_speakers(spec, seed, base.speakers)
    counts = {s.spk: 0 for s in speakers}
    extra_utts = []
    for i, sentence in enumerate(extra):
        spk = speakers[i % len(speakers)]
        extra_utts.append(Utterance(f"{spk.kaldi_id}-{counts[spk.spk]:04d}", "train", spk, sentence))
        counts[spk.spk] += 1
    chosen = {"train": base_train + extra, "dev": base.sentences["dev"], "test": base.sentences["test"]}
    return Plan(chosen, base.speakers + speakers, base.groups + [sorted(extra_utts, key=lambda u: u.utt)])


# ---- synthesis -------------------------------------------------------------------------------------
def _run(cmd: list[str], what: str, stdin: bytes | None = None, cwd: Path | None = None) -> bytes:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, cwd=cwd)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()[-500:]
        raise CorpusError(f"{what}: `{' '.join(cmd[:3])} ...` failed (exit {proc.returncode}): {err}")
    return proc.stdout


def _to_16k(src: bytes | Path, dst: Path, what: str) -> None:
    """Resample/convert to 16 kHz mono 16-bit WAV with sox (no dither: deterministic), 3 dB headroom."""
    inp = ["-t", "wav", "-"] if isinstance(src, bytes) else [str(src)]
    _run(
        [
            "sox",
            "-D",
            *inp,
            "-r",
            str(SAMPLE_RATE),
            "-c",
            "1",
            "-b",
            "16",
            "-e",
            "signed-integer",
            str(dst),
            "gain",
            "-3",
        ],
        what,
        stdin=src if isinstance(src, bytes) else None,
    )


def _espeak_cmd(s: Speaker, text: str, ssml: bool = False) -> list[str]:
    return [
        "espeak-ng",
        *(["-m"] if ssml else []),
        "-v",
        f"{s.voice}+{s.variant}",
        "-p",
        str(int(s.pitch)),
        "-s",
        str(int(s.rate)),
        "--stdout",
        text,
    ]


def split_at_breaks(
    x: np.ndarray, n: int, min_break: float = 1.0, pad: float = 0.25, level: int = 8
) -> list[np.ndarray] | None:
    """Cut a stream of ``n`` utterances separated by long pauses into the utterances.

    Frames of 10 ms whose peak is at most ``level`` are silent; runs of at least ``min_break`` seconds
    separate utterances (sentence-internal pauses are far shorter). Each utterance keeps ``pad`` seconds
    of its surrounding silence. None when the stream does not hold exactly ``n`` utterances.
    """
    frame = SAMPLE_RATE // 100
    nf = len(x) // frame
    if nf == 0:
        return None
    loud = np.abs(x[: nf * frame].astype(np.int32)).reshape(nf, frame).max(axis=1) > level
    edges = np.flatnonzero(np.diff(np.concatenate([[0], (~loud).astype(np.int8), [0]])))
    # silent runs [a, b) (in frames) long enough to be breaks are cut in their middle
    cuts = [0] + [(a + b) // 2 for a, b in zip(edges[::2], edges[1::2]) if b - a >= min_break * 100] + [nf]
    pieces = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        idx = np.flatnonzero(loud[a:b])
        if len(idx) == 0:
            continue
        lo = max(a, a + idx[0] - int(pad * 100))
        hi = min(b, a + idx[-1] + 1 + int(pad * 100))
        pieces.append(x[lo * frame : hi * frame])
    return pieces if len(pieces) == n else None


def synth_espeak(utts: Sequence[Utterance], wav_dir: Path) -> None:
    """One speaker's sentences in one espeak-ng call (SSML breaks between them) and one sox call,
    cut at the breaks: ~3x less CPU than two processes per sentence. Falls back to one call per
    sentence if the cut does not give one piece per sentence."""
    s = utts[0].speaker
    assert all(u.speaker == s for u in utts)
    # text as an argument: fed through stdin, espeak-ng 1.51 sometimes drops a break
    ssml = "<speak>" + "".join(f'{u.sentence} <break time="2000ms"/> ' for u in utts) + "</speak>"
    what = f"speaker {s.kaldi_id} (espeak-ng {s.voice}+{s.variant})"
    wav = _run(_espeak_cmd(s, ssml, ssml=True), what)
    raw = _run(
        [
            "sox",
            "-D",
            "-t",
            "wav",
            "-",
            "-t",
            "raw",
            "-r",
            str(SAMPLE_RATE),
            "-c",
            "1",
            "-b",
            "16",
            "-e",
            "signed-integer",
            "-L",
            "-",
            "gain",
            "-3",
        ],
        f"{what} (sox)",
        stdin=wav,
    )
    pieces = split_at_breaks(np.frombuffer(raw, dtype="<i2"), len(utts))
    if pieces is None:
        log.warning("%s: could not cut the batch into %d sentences; synthesising one by one", what, len(utts))
        for u in utts:
            _to_16k(
                _run(_espeak_cmd(s, u.sentence), f"utterance {u.utt} (espeak-ng)"),
                wav_path(wav_dir, u),
                f"utterance {u.utt} (sox)",
            )
        return
    for u, piece in zip(utts, pieces):
        sf.write(str(wav_path(wav_dir, u)), piece, SAMPLE_RATE, format="WAV", subtype="PCM_16")


def _festival_setup(s: Speaker) -> str:
    if s.voice.endswith("_hts"):
        return (
            f"(voice_{s.voice})\n(set! hts_engine_params (append {s.voice}::hts_engine_params "
            f'(list (list "-fm" {s.pitch}) (list "-r" {s.rate}))))\n'
        )
    return (
        f"(voice_{s.voice})\n(set! int_lr_params '((target_f0_mean {s.pitch}) (target_f0_std 15) "
        f"(model_f0_mean 170) (model_f0_std 34)))\n(Parameter.set 'Duration_Stretch {s.rate})\n"
    )


def synth_festival(utts: Sequence[Utterance], wav_dir: Path) -> None:
    """One festival process for all ``utts`` (one voice): far faster than a process per sentence."""
    with tempfile.TemporaryDirectory(prefix="festival-") as tmp:
        lines, current = [], None
        for i, u in enumerate(utts):
            if u.speaker != current:
                lines.append(_festival_setup(u.speaker))
                current = u.speaker
            assert '"' not in u.sentence and "\\" not in u.sentence
            lines.append(f'(utt.save.wave (utt.synth (Utterance Text "{u.sentence}")) "{i}.wav" \'riff)\n')
        script = Path(tmp) / "synth.scm"
        script.write_text("".join(lines), encoding="ascii")
        _run(["festival", "-b", str(script)], f"festival batch {utts[0].utt}..{utts[-1].utt}", cwd=Path(tmp))
        pieces = []
        for i, u in enumerate(utts):
            try:
                x, rate = sf.read(str(Path(tmp) / f"{i}.wav"), dtype="int16")
            except Exception as e:  # noqa: BLE001 - reported with the utterance id
                raise CorpusError(f"utterance {u.utt}: festival ({u.speaker.voice}) wrote no audio: {e}") from e
            if x.ndim != 1 or len(x) == 0 or rate != FESTIVAL_NATIVE_RATE[u.speaker.voice]:
                raise CorpusError(
                    f"utterance {u.utt}: festival ({u.speaker.voice}) wrote {x.shape} samples at "
                    f"{rate} Hz, expected mono at {FESTIVAL_NATIVE_RATE[u.speaker.voice]} Hz"
                )
            pieces.append(x)
        for u, y in zip(utts, _sox_batch(pieces, rate, f"festival batch {utts[0].utt}..{utts[-1].utt}")):
            sf.write(str(wav_path(wav_dir, u)), y, SAMPLE_RATE, format="WAV", subtype="PCM_16")


def _sox_resample_cmd(rate: int) -> list[str]:
    """sox reading raw 16-bit mono at ``rate`` from stdin, writing raw 16 kHz with 3 dB headroom to stdout."""
    raw16 = ["-b", "16", "-e", "signed-integer", "-L"]
    return ["sox", "-D", "-t", "raw", "-r", str(rate), "-c", "1", *raw16, "-", "-t", "raw", "-r", str(SAMPLE_RATE),
            "-L", "-", "gain", "-3"]  # fmt: skip


def _sox_batch(pieces: Sequence[np.ndarray], rate: int, what: str) -> list[np.ndarray]:
    """Resample (to 16 kHz, 3 dB headroom) many pieces in one sox call: concatenated, then cut again at the
    scaled boundaries. Needs piece lengths that map to whole 16 kHz samples; else one call per piece."""
    if any((len(x) * SAMPLE_RATE) % rate for x in pieces):
        out = []
        for x in pieces:
            raw = _run(_sox_resample_cmd(rate), what, stdin=x.astype("<i2").tobytes())
            out.append(np.frombuffer(raw, dtype="<i2"))
        return out
    raw = _run(_sox_resample_cmd(rate), what, stdin=np.concatenate(pieces).astype("<i2").tobytes())
    y = np.frombuffer(raw, dtype="<i2")
    bounds = np.cumsum([0] + [len(x) * SAMPLE_RATE // rate for x in pieces])
    if len(y) != bounds[-1]:
        raise CorpusError(f"{what}: sox returned {len(y)} samples, expected {bounds[-1]}")
    return [y[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def wav_path(wav_dir: Path, u: Utterance) -> Path:
    return wav_dir / u.split / u.speaker.spk / f"{u.utt}.wav"


def synth_jobs(utts: Sequence[Utterance]) -> list[tuple[float, Callable, list[Utterance]]]:
    """Synthesis batches of ``utts``: (relative CPU cost per utterance, function, utterances)."""
    jobs: list[tuple[float, Callable, list[Utterance]]] = []
    for spk in sorted({u.speaker for u in utts if u.speaker.engine == "espeak-ng"}, key=lambda s: s.spk):
        mine = [u for u in utts if u.speaker == spk]
        for k in range(0, len(mine), 40):
            jobs.append((1.0, synth_espeak, mine[k : k + 40]))
    for voice in FESTIVAL_VOICES:
        mine = sorted((u for u in utts if u.speaker.voice == voice), key=lambda u: (u.speaker.spk, u.utt))
        chunk = 15 if voice.endswith("_hts") else 60
        for k in range(0, len(mine), chunk):
            jobs.append((12.0 if voice.endswith("_hts") else 2.0, synth_festival, mine[k : k + chunk]))
    return jobs


def synthesize(
    utts: Sequence[Utterance], wav_dir: Path, nj: int, groups: Sequence[Sequence[Utterance]] | None = None
) -> None:
    """Synthesise every utterance into ``wav_dir`` with ``nj`` parallel synthesiser processes.

    ``groups`` (a partition of ``utts``) are batched separately; the default is one group.
    """
    for u in utts:
        wav_path(wav_dir, u).parent.mkdir(parents=True, exist_ok=True)
    jobs = [job for group in (groups if groups is not None else [utts]) for job in synth_jobs(group)]
    assert sum(len(j[2]) for j in jobs) == len(utts)
    jobs.sort(key=lambda j: -j[0] * len(j[2]))  # relative CPU cost per utterance; slowest first
    with ThreadPoolExecutor(max(1, nj)) as pool:
        futures = [pool.submit(fn, batch, wav_dir) for _, fn, batch in jobs]
        for f in tqdm(futures, desc="synthesis jobs", unit="job"):
            f.result()


def check_audio(utts: Sequence[Utterance], wav_dir: Path) -> dict[str, int]:
    """Number of samples per utterance; every file must be 16 kHz mono and at least 0.3 s long."""
    n = {}
    for u in utts:
        path = wav_path(wav_dir, u)
        try:
            info = sf.info(str(path))
        except Exception as e:  # noqa: BLE001 - a missing/corrupt file is reported by name
            raise CorpusError(f"utterance {u.utt}: cannot read {path}: {e}") from e
        if info.samplerate != SAMPLE_RATE or info.channels != 1 or info.frames < 0.3 * SAMPLE_RATE:
            raise CorpusError(
                f"utterance {u.utt}: {path} is {info.samplerate} Hz, {info.channels} channel(s), "
                f"{info.frames} samples; expected 16 kHz mono, >= 0.3 s"
            )
        n[u.utt] = info.frames
    return n


# ---- augmentation (train audio of sizes with augment > 0) -----------------------------------------
#: Per augmented utterance: a room (sox reverb) with probability AUG_ROOM_P, a band limit (sox lowpass)
#: with AUG_BAND_P, additive white/pink/brown noise at AUG_SNR_DB with AUG_NOISE_P (always when there is
#: no room), and a loudness change of AUG_GAIN_DB relative to the clean peak (capped below clipping).
AUG_ROOM_P, AUG_BAND_P, AUG_NOISE_P = 0.5, 0.15, 0.6
AUG_SNR_DB, AUG_GAIN_DB = (5.0, 30.0), (-15.0, 5.0)
AUG_LOWPASS_HZ = (3400, 4000, 5000, 6000)
NOISE_COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power spectrum ~ 1 / f^alpha


@dataclass(frozen=True)
class Augment:
    """One utterance's augmentation. reverb: (reverberance %, HF damping %, room scale %, pre-delay ms)."""

    reverb: tuple[int, int, int, int] | None
    lowpass: int | None
    noise: str | None
    snr: float
    gain: float

    def describe(self) -> str:
        parts = []
        if self.reverb:
            parts.append("reverb=" + ",".join(map(str, self.reverb)))
        if self.lowpass:
            parts.append(f"lowpass={self.lowpass}")
        if self.noise:
            parts.append(f"noise={self.noise}@{self.snr}dB")
        parts.append(f"gain={self.gain}dB")
        return " ".join(parts)


def augment_plan(utts: Sequence[Utterance], seed: int, fraction: float) -> dict[str, Augment]:
    """Which train utterances are augmented, and how: drawn per utterance from (seed, utt id), so the
    plan does not depend on --nj, --splits or the other utterances. Dev and test are never augmented."""
    plan = {}
    for u in utts:
        if u.split != "train" or fraction <= 0:
            continue
        rng = random.Random(f"augment-{seed}-{u.utt}")
        if rng.random() >= fraction:
            continue
        reverb = (
            (rng.randint(10, 90), rng.randint(10, 90), rng.randint(20, 100), rng.randint(0, 30))
            if rng.random() < AUG_ROOM_P
            else None
        )
        lowpass = rng.choice(AUG_LOWPASS_HZ) if rng.random() < AUG_BAND_P else None
        noise = rng.choice(sorted(NOISE_COLOURS)) if rng.random() < AUG_NOISE_P or reverb is None else None
        snr = round(rng.uniform(*AUG_SNR_DB), 1)
        gain = round(rng.uniform(*AUG_GAIN_DB), 1)
        plan[u.utt] = Augment(reverb, lowpass, noise, snr, gain)
    return plan


def coloured_noise(n: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-rms noise whose power spectrum falls as 1/f^alpha (white 0, pink 1, brown 2) above 20 Hz."""
    white = rng.standard_normal(n)
    alpha = NOISE_COLOURS[colour]
    if alpha:
        spec = np.fft.rfft(white)
        f = np.maximum(np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE), 20.0)
        white = np.fft.irfft(spec / f ** (alpha / 2), n=n)
    return white / max(float(np.sqrt(np.mean(white**2))), 1e-12)


def apply_augment(x: np.ndarray, aug: Augment, seed: int, utt: str) -> np.ndarray:
    """Augmented int16 samples of the int16 utterance ``x`` (same length)."""
    y = x.astype(np.float64)
    effects = []
    if aug.reverb:
        r, hf, room, pre = aug.reverb
        effects += ["reverb", str(r), str(hf), str(room), "100", str(pre)]
    if aug.lowpass:
        effects += ["lowpass", str(aug.lowpass)]
    if effects:  # 12 dB of headroom for the reverberated sum; sox works in 32-bit integers
        raw = _run(
            [
                "sox",
                "-D",
                "-t",
                "raw",
                "-r",
                str(SAMPLE_RATE),
                "-c",
                "1",
                "-b",
                "16",
                "-e",
                "signed-integer",
                "-L",
                "-",
                "-t",
                "raw",
                "-e",
                "floating-point",
                "-b",
                "32",
                "-L",
                "-",
                "gain",
                "-12",
                *effects,
            ],
            f"augmentation of {utt} (sox)",
            stdin=x.astype("<i2").tobytes(),
        )
        y = np.frombuffer(raw, dtype="<f4").astype(np.float64)[: len(x)] * 32768.0 * 10 ** (12 / 20)
        y = np.concatenate([y, np.zeros(len(x) - len(y))])
    if aug.noise:
        rng = np.random.default_rng([seed, int(hashlib.md5(utt.encode()).hexdigest()[:12], 16)])
        frame = SAMPLE_RATE // 100
        nf = max(1, len(y) // frame)
        energy = np.mean(y[: nf * frame].reshape(nf, frame) ** 2, axis=1) if len(y) >= frame else np.mean(y**2)[None]
        active = energy[energy >= 1e-3 * energy.max()]  # frames within 30 dB of the loudest: the speech
        power = float(np.mean(active)) if active.size else 0.0
        y = y + coloured_noise(len(y), aug.noise, rng) * math.sqrt(power / 10 ** (aug.snr / 10))
    peak = float(np.abs(y).max())
    if peak > 0:
        target = min(float(np.abs(x.astype(np.float64)).max()) * 10 ** (aug.gain / 20), 32000.0)
        y = y * (target / peak)
    return np.clip(np.round(y), -32768, 32767).astype(np.int16)


def augment_audio(plan: dict[str, Augment], utts: Sequence[Utterance], wav_dir: Path, seed: int, nj: int) -> None:
    """Augment the planned utterances' audio in place."""
    todo = [u for u in utts if u.utt in plan]

    def one(u: Utterance) -> None:
        path = wav_path(wav_dir, u)
        x, _ = sf.read(str(path), dtype="int16")
        sf.write(str(path), apply_augment(x, plan[u.utt], seed, u.utt), SAMPLE_RATE, format="WAV", subtype="PCM_16")

    with ThreadPoolExecutor(max(1, nj)) as pool:
        list(tqdm(pool.map(one, todo), total=len(todo), desc="augmentation", unit="utt"))


# ---- layouts ---------------------------------------------------------------------------------------
def _write_lines(path: Path, lines: Iterable[str]) -> None:
    """Lines sorted in LC_ALL=C (byte) order, newline-terminated."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(sorted(line.encode("utf-8") + b"\n" for line in lines)))


def _seconds(samples: int) -> str:
    return repr(samples / SAMPLE_RATE)


def write_kaldi(out: Path, utts: Sequence[Utterance], nsamp: dict[str, int], wav_dir: Path) -> None:
    """Kaldi data dirs with absolute wav paths; the speaker id (reader-chapter) prefixes the utt id."""
    for split in SPLITS:
        mine = [u for u in utts if u.split == split]
        if not mine:
            continue
        d = out / "kaldi" / split
        _write_lines(d / "wav.scp", (f"{u.utt} {wav_path(wav_dir, u).resolve()}" for u in mine))
        _write_lines(d / "text", (f"{u.utt} {u.text}" for u in mine))
        _write_lines(d / "utt2spk", (f"{u.utt} {u.speaker.kaldi_id}" for u in mine))
        _write_lines(d / "utt2dur", (f"{u.utt} {_seconds(nsamp[u.utt])}" for u in mine))
        _write_lines(d / "reco2dur", (f"{u.utt} {_seconds(nsamp[u.utt])}" for u in mine))
        spk2utt: dict[str, list[str]] = {}
        for u in mine:
            spk2utt.setdefault(u.speaker.kaldi_id, []).append(u.utt)
        _write_lines(d / "spk2utt", (f"{k} {' '.join(sorted(v))}" for k, v in spk2utt.items()))


def write_librispeech(out: Path, utts: Sequence[Utterance], nsamp: dict[str, int], wav_dir: Path, nj: int) -> None:
    """LibriSpeech tree: FLAC copies of the audio, ``<spk>-<chapter>.trans.txt``, SPEAKERS/CHAPTERS.TXT."""
    root = out / "LibriSpeech"
    groups: dict[Path, list[Utterance]] = {}
    for u in utts:
        groups.setdefault(root / LIBRISPEECH_PARTS[u.split] / u.speaker.spk / u.speaker.chapter, []).append(u)

    def convert(u: Utterance) -> None:
        data, _ = sf.read(str(wav_path(wav_dir, u)), dtype="int16")
        sf.write(
            str(root / LIBRISPEECH_PARTS[u.split] / u.speaker.spk / u.speaker.chapter / f"{u.utt}.flac"),
            data,
            SAMPLE_RATE,
            format="FLAC",
            subtype="PCM_16",
        )

    for d, mine in groups.items():
        d.mkdir(parents=True, exist_ok=True)
        _write_lines(d / f"{mine[0].speaker.kaldi_id}.trans.txt", (f"{u.utt} {u.text}" for u in mine))
    with ThreadPoolExecutor(max(1, nj)) as pool:
        list(pool.map(convert, utts))
    speakers = sorted({u.speaker for u in utts}, key=lambda s: s.spk)
    minutes = {s.spk: 0.0 for s in speakers}
    for u in utts:
        minutes[u.speaker.spk] += nsamp[u.utt] / SAMPLE_RATE / 60

    def gender(s: Speaker) -> str:
        return "F" if s.variant in ESPEAK_VARIANTS["female"] or s.voice.endswith("_hts") else "M"

    (root / "SPEAKERS.TXT").write_text(
        "; Synthetic speakers of the distillw2v2 demo corpus (see speakers.tsv one level up)\n"
        ";ID  |SEX| SUBSET           |MINUTES| NAME\n"
        + "".join(
            f"{s.spk:<5}| {gender(s)} | {LIBRISPEECH_PARTS[s.split]:<17}| {minutes[s.spk]:5.2f} | "
            f"{s.engine} {s.voice}{'+' + s.variant if s.variant else ''}\n"
            for s in speakers
        )
    )
    (root / "CHAPTERS.TXT").write_text(
        ";ID    |READER|MINUTES| SUBSET           | PROJ.|BOOK ID| CH. TITLE | PROJECT TITLE\n"
        + "".join(
            f"{s.chapter:<7}| {s.spk:<5}| {minutes[s.spk]:5.2f} | {LIBRISPEECH_PARTS[s.split]:<17}|"
            f" 0    | 0     | synthetic | Jane Austen sentences\n"
            for s in speakers
        )
    )


def _garbage(kind: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    n = int(round(seconds * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    if kind == "<SIL>":
        x = 30.0 * rng.standard_normal(n)
    elif kind == "<NOISE>":
        x = 1500.0 * rng.standard_normal(n)
    else:  # <MUSIC>: a few harmonic notes
        notes = rng.choice([220.0, 261.6, 293.7, 329.6, 392.0, 440.0], size=4)
        seg = np.minimum((t * 4).astype(int), 3)
        f = notes[seg]
        x = 3000.0 * (np.sin(2 * np.pi * f * t) + 0.4 * np.sin(4 * np.pi * f * t)) * np.exp(-3 * (t % 0.25))
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def write_gigaspeech(
    out: Path, utts: Sequence[Utterance], nsamp: dict[str, int], wav_dir: Path, utts_per_audio: int, seed: int, nj: int
) -> dict[str, str]:
    """A GigaSpeech release: each opus "podcast" is one speaker's utterances in a row (10 ms grid gaps),
    some with a garbage-only segment (<SIL>/<MUSIC>/<NOISE>). Returns utt id -> segment id."""
    root = out / "GigaSpeech"
    grid = SAMPLE_RATE // 100
    episodes: list[tuple[str, list[Utterance]]] = []
    for split in SPLITS:
        by_spk: dict[str, list[Utterance]] = {}
        for u in utts:
            if u.split == split:
                by_spk.setdefault(u.speaker.spk, []).append(u)
        for spk in sorted(by_spk):
            mine = by_spk[spk]
            for k in range(0, len(mine), utts_per_audio):
                episodes.append((split, mine[k : k + utts_per_audio]))
    sid_of: dict[str, str] = {}
    audios: list[dict] = []
    jobs: list[tuple[np.ndarray, Path, int]] = []
    for index, (split, mine) in enumerate(episodes, 1):
        aid = f"POD{index:010d}"
        rng = np.random.default_rng([seed, index])
        garbage_at = int(rng.integers(0, len(mine) + 1)) if (split != "train" or index % 3 == 0) else -1
        pieces: list[np.ndarray] = []
        segments: list[dict] = []
        pos = 0
        items: list[Utterance | str] = list(mine)
        if garbage_at >= 0:
            items.insert(garbage_at, GARBAGE_TAGS[index % len(GARBAGE_TAGS)])
        for item in items:
            gap = grid * int(rng.integers(20, 60))  # 0.2-0.6 s between segments
            pieces.append(np.zeros(gap, dtype=np.int16))
            pos += gap
            if isinstance(item, str):
                x = _garbage(item, float(rng.integers(80, 150)) / 100, rng)
                text, raw, speaker = item, "", "N/A"
            else:
                x, _ = sf.read(str(wav_path(wav_dir, item)), dtype="int16")
                text, raw, speaker = gigaspeech_text(item.sentence), item.sentence, item.speaker.kaldi_id
            padded = math.ceil(len(x) / grid) * grid
            sid = f"{aid}_S{len(segments):07d}"
            segments.append(
                {
                    "sid": sid,
                    "speaker": speaker,
                    "begin_time": round(pos / SAMPLE_RATE, 2),
                    "end_time": round((pos + padded) / SAMPLE_RATE, 2),
                    "text_raw": raw,
                    "text_tn": text,
                    "subsets": GIGASPEECH_SUBSETS[split],
                }
            )
            if not isinstance(item, str):
                sid_of[item.utt] = sid
            pieces.append(np.concatenate([x, np.zeros(padded - len(x), dtype=np.int16)]))
            pos += padded
        tail = grid * 30
        pieces.append(np.zeros(tail, dtype=np.int16))
        pos += tail
        rel = Path("audio") / "podcast" / f"P{(index - 1) // 100:04d}" / f"{aid}.opus"
        jobs.append((np.concatenate(pieces), root / rel, index))
        audios.append(
            {
                "title": f"Demo podcast {index}: speaker {mine[0].speaker.kaldi_id}",
                "url": "",
                "path": str(rel),
                "aid": aid,
                "source": "podcast",
                "format": "opus",
                "sample_rate": SAMPLE_RATE,
                "codec": "s16le",
                "channels": 1,
                "md5": "",
                "duration": round(pos / SAMPLE_RATE, 3),
                "size": 0,
                "speaker": mine[0].speaker.kaldi_id,
                "category": "Arts",
                "subsets": GIGASPEECH_SUBSETS[split],
                "segments": segments,
            }
        )

    def encode(job: tuple[np.ndarray, Path, int]) -> None:
        samples, path, serial = job
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        sf.write(buf, samples, SAMPLE_RATE, format="WAV", subtype="PCM_16")
        # complexity 0 and 60 ms frames: ~200x real time (the defaults: ~50x); a fixed Ogg serial number
        # makes the file reproducible
        _run(
            ["opusenc", "--quiet", "--comp", "0", "--framesize", "60", "--serial", str(serial), "-", str(path)],
            f"opus encoding of {path}",
            stdin=buf.getvalue(),
        )

    with ThreadPoolExecutor(max(1, nj)) as pool:
        list(pool.map(encode, jobs))
    for audio in audios:
        data = (root / audio["path"]).read_bytes()
        audio["md5"], audio["size"] = hashlib.md5(data).hexdigest(), len(data)
    meta = {
        "dataset": "GigaSpeech",
        "language": "EN",
        "version": "v1.0.0",
        "description": "Synthetic demo corpus in the GigaSpeech release layout (distillw2v2 "
        "local/make_demo_corpus.py): espeak-ng/festival speech of Jane Austen sentences.",
        "audios": audios,
    }
    (root / "GigaSpeech.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return sid_of


# ---- summary and driver ----------------------------------------------------------------------------
def summarize(utts: Sequence[Utterance], nsamp: dict[str, int], params: dict, train_vocab: set[str]) -> dict:
    splits = {}
    for split in SPLITS:
        mine = [u for u in utts if u.split == split]
        if not mine:
            continue
        words = [w for u in mine for w in u.text.split()]
        seconds = sum(nsamp[u.utt] for u in mine) / SAMPLE_RATE
        engines: dict[str, int] = {}
        for s in {u.speaker for u in mine}:
            engines[f"{s.engine}/{s.voice}"] = engines.get(f"{s.engine}/{s.voice}", 0) + 1
        splits[split] = {
            "utterances": len(mine),
            "hours": round(seconds / 3600, 4),
            "speakers": len({u.speaker for u in mine}),
            "words": len(words),
            "vocabulary": len(set(words)),
            "oov_rate_vs_train": round(sum(w not in train_vocab for w in words) / max(1, len(words)), 4),
            "speakers_per_voice": dict(sorted(engines.items())),
        }
    summary = {"params": params, "splits": splits}
    if "test" in splits:
        summary["test_oov_rate"] = splits["test"]["oov_rate_vs_train"]
    return summary


def print_summary(summary: dict) -> None:
    print(f"{'split':<6} {'utts':>6} {'hours':>7} {'spk':>4} {'words':>7} {'vocab':>6} {'OOV':>6}")
    for split, s in summary["splits"].items():
        print(
            f"{split:<6} {s['utterances']:>6} {s['hours']:>7.3f} {s['speakers']:>4} {s['words']:>7} "
            f"{s['vocabulary']:>6} {100 * s['oov_rate_vs_train']:>5.1f}%"
        )
    if "test_oov_rate" in summary:
        print(f"test OOV rate (w.r.t. train text): {100 * summary['test_oov_rate']:.2f}%")


def check_tools(layouts: Sequence[str]) -> None:
    need = ["espeak-ng", "festival", "sox"] + (["opusenc"] if "gigaspeech" in layouts else [])
    missing = [t for t in need if shutil.which(t) is None]
    if missing:
        raise CorpusError(
            f"missing tools: {', '.join(missing)} (Debian: apt-get install espeak-ng festival "
            "festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts sox opus-tools)"
        )


def _marker_ok(path: Path, params: dict) -> bool:
    try:
        return json.loads(path.read_text()) == params
    except (OSError, ValueError):
        return False


def generate(
    out: Path,
    seed: int = 0,
    size: str = "default",
    train_hours: float | None = None,
    layouts: Sequence[str] = ("kaldi",),
    nj: int = 2,
    max_test_oov: int = 0,
    sentences: Path = DEFAULT_SENTENCES,
    force: bool = False,
    splits: Sequence[str] = SPLITS,
) -> tuple[dict, bool]:
    """Make the corpus under ``out``; returns (summary, skipped) — skipped when it was already complete.

    ``splits`` limits synthesis to some splits (e.g. only ``test`` to score a shipped model): speakers and
    sentences are chosen exactly as for the whole corpus, so those splits are byte-identical to it.
    """
    if size not in SIZES:
        raise CorpusError(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    bad = [x for x in layouts if x not in LAYOUTS]
    if bad or not layouts:
        raise CorpusError(f"unknown layout(s) {bad}; choose from {', '.join(LAYOUTS)}")
    if not splits or any(x not in SPLITS for x in splits):
        raise CorpusError(f"unknown split(s) in {list(splits)}; choose from {', '.join(SPLITS)}")
    if max_test_oov < 0 or nj < 1:
        raise CorpusError(f"--max-test-oov must be >= 0 and --nj >= 1 (got {max_test_oov}, {nj})")
    spec = SIZES[size]
    if train_hours is not None:
        if train_hours <= 0:
            raise CorpusError(f"--train-hours must be > 0, got {train_hours}")
        spec = replace(spec, train_hours=train_hours, train_utts=None)
    out = out.resolve()
    pool_sha1 = hashlib.sha1(sentences.read_bytes()).hexdigest() if sentences.is_file() else ""
    synth_params = {
        "version": GENERATOR_VERSION,
        "seed": seed,
        "size": size,
        "train_hours": spec.train_hours,
        "max_test_oov": max_test_oov,
        "sentences_sha1": pool_sha1,
    }
    if sorted(splits) != sorted(SPLITS):
        synth_params["splits"] = sorted(splits)
    params = {**synth_params, "layouts": sorted(layouts)}
    done, wav_done = out / ".done.json", out / "wav" / ".done.json"
    if not force and _marker_ok(done, params) and (out / "summary.json").is_file():
        log.info("%s is complete for these parameters; nothing to do (use --force to redo)", out)
        return json.loads((out / "summary.json").read_text()), True
    check_tools(layouts)
    done.unlink(missing_ok=True)

    pool = load_sentences(sentences)
    plan = plan_corpus(spec, seed, pool, max_test_oov)
    chosen, speakers = plan.sentences, plan.speakers
    groups = [[u for u in g if u.split in splits] for g in plan.groups]
    utts = sorted((u for g in groups for u in g), key=lambda u: u.utt)
    aug = augment_plan(utts, seed, spec.augment)
    wav_dir = out / "wav"
    t0 = time.time()
    if force or not _marker_ok(wav_done, synth_params):
        if wav_dir.exists():
            shutil.rmtree(wav_dir)
        log.info("synthesising %d utterances (%d speakers) with %d jobs", len(utts), len(speakers), nj)
        synthesize(utts, wav_dir, nj, groups)
        if aug:
            log.info("augmenting %d of %d train utterances", len(aug), sum(u.split == "train" for u in utts))
            augment_audio(aug, utts, wav_dir, seed, nj)
        wav_done.write_text(json.dumps(synth_params, sort_keys=True))
        log.info("synthesis took %.1f s", time.time() - t0)
    else:
        log.info("audio in %s is complete; re-writing the layouts only", wav_dir)
    nsamp = check_audio(utts, wav_dir)

    for d in ("kaldi", "LibriSpeech", "GigaSpeech"):  # no stale files from an earlier run
        if (out / d).exists():
            shutil.rmtree(out / d)
    if "kaldi" in layouts:
        write_kaldi(out, utts, nsamp, wav_dir)
    if "librispeech" in layouts:
        write_librispeech(out, utts, nsamp, wav_dir, nj)
    sid_of = {}
    if "gigaspeech" in layouts:
        sid_of = write_gigaspeech(out, utts, nsamp, wav_dir, spec.utts_per_audio, seed, nj)

    _write_lines(
        out / "speakers.tsv", ("\t".join(map(str, [s.spk, s.kaldi_id, s.split, *s.setting])) for s in speakers)
    )
    _write_lines(
        out / "utterances.tsv",
        (f"{u.utt}\t{u.split}\t{u.speaker.kaldi_id}\t{sid_of.get(u.utt, '')}\t{u.sentence}" for u in utts),
    )
    summary = summarize(utts, nsamp, params, {w for x in chosen["train"] for w in transcript(x).split()})
    if aug:
        _write_lines(out / "augment.tsv", (f"{k}\t{a.describe()}" for k, a in aug.items()))
        summary["augmentation"] = {
            "fraction": spec.augment,
            "utterances": len(aug),
            "room": sum(a.reverb is not None for a in aug.values()),
            "lowpass": sum(a.lowpass is not None for a in aug.values()),
            "noise": {c: sum(a.noise == c for a in aug.values()) for c in sorted(NOISE_COLOURS)},
            "snr_db": list(AUG_SNR_DB),
            "gain_db": list(AUG_GAIN_DB),
        }
    summary["speakers"] = {
        s.spk: dict(zip(("split", "engine", "voice", "variant", "pitch", "rate"), (s.split, *s.setting)))
        for s in speakers
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    done.write_text(json.dumps(params, sort_keys=True))
    log.info("done in %.1f s: %s", time.time() - t0, out)
    return summary, False


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    ap.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    ap.add_argument(
        "--size",
        choices=list(SIZES),
        default="default",
        help="tiny (~30 utterances, for tests), small, default (~1.25 h train + 300 dev/test), "
        "large (~10 h augmented train, default's dev/test; docs/demo_corpus.md)",
    )
    ap.add_argument(
        "--train-hours",
        type=float,
        default=None,
        help="target hours of train audio (replaces the train amount of --size)",
    )
    ap.add_argument("--layouts", default="kaldi", help=f"comma-separated subset of {','.join(LAYOUTS)} (default kaldi)")
    ap.add_argument("--nj", type=int, default=2, help="parallel synthesis/encoding jobs (default 2)")
    ap.add_argument(
        "--max-test-oov",
        type=int,
        default=0,
        help="max words per dev/test sentence that are absent from the training text (default 0)",
    )
    ap.add_argument("--sentences", type=Path, default=DEFAULT_SENTENCES, help="sentence pool, one per line")
    ap.add_argument(
        "--splits",
        default=",".join(SPLITS),
        help=f"comma-separated splits to synthesise (default {','.join(SPLITS)}); the others are skipped",
    )
    ap.add_argument("--force", action="store_true", help="regenerate even when the output is complete")
    args = ap.parse_args(argv)
    layouts = [x.strip().lower() for x in args.layouts.split(",") if x.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    setup_logging(args.out / "make_demo_corpus.log")
    try:
        summary, _ = generate(
            args.out,
            args.seed,
            args.size,
            args.train_hours,
            layouts,
            args.nj,
            args.max_test_oov,
            args.sentences,
            args.force,
            [x.strip() for x in args.splits.split(",") if x.strip()],
        )
    except CorpusError as e:
        log.error("%s", e)
        return 1
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
