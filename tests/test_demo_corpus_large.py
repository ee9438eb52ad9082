"""Tests of the ``large`` size of the demo corpus generator (local/make_demo_corpus.py), without
synthesising it (~10 h of audio): its plan keeps ``default``'s dev/test exactly and its splits honest,
the base sizes' plans are unchanged, and the train-audio augmentation is deterministic and bounded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "local" / "make_demo_corpus.py"

_spec = importlib.util.spec_from_file_location("make_demo_corpus", SCRIPT)
mdc = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("make_demo_corpus", mdc)
_spec.loader.exec_module(mdc)


@pytest.fixture(scope="module")
def plans():
    pool = mdc.load_sentences(mdc.DEFAULT_SENTENCES)
    return {size: mdc.plan_corpus(mdc.SIZES[size], 0, pool, 0) for size in ("default", "large")}


def _rows(utts, splits):
    return [(u.utt, u.split, u.speaker.spk, u.speaker.setting, u.sentence) for u in utts if u.split in splits]


def test_large_dev_and_test_are_defaults(plans):
    d, g = plans["default"], plans["large"]
    assert _rows(g.utterances, ("dev", "test")) == _rows(d.utterances, ("dev", "test"))
    for split in ("dev", "test"):
        assert g.sentences[split] == d.sentences[split]
        assert [s for s in g.speakers if s.split == split] == [s for s in d.speakers if s.split == split]
    # the default corpus is synthesised as its own group, in the batches of --size default: same audio
    assert g.groups[0] == d.groups[0] == d.utterances
    assert [b[2] for b in mdc.synth_jobs(g.groups[0])] == [b[2] for b in mdc.synth_jobs(d.utterances)]


def test_large_train_is_bigger_and_honest(plans):
    d, g = plans["default"], plans["large"]
    train = [u for u in g.utterances if u.split == "train"]
    held = [u for u in g.utterances if u.split != "train"]
    # the default train is a subset; ~10 h (estimated) of distinct sentences from 417 train speakers
    assert set(_rows(d.utterances, ("train",))) <= set(_rows(train, ("train",)))
    est = sum(mdc.estimated_seconds(u.sentence) for u in train) / 3600
    assert 9.9 <= est <= 10.1
    assert len({u.sentence for u in train}) == len(train) > 8 * 1261
    train_spk = {u.speaker for u in train}
    assert len(train_spk) == 47 + 370
    # sentences and settings disjoint; espeak-ng variants of dev/test never in train; ked only in dev/test
    assert not {u.sentence for u in train} & {u.sentence for u in held}
    assert not {s.setting for s in train_spk} & {u.speaker.setting for u in held}

    def variants(us):
        return {u.speaker.variant for u in us if u.speaker.engine == "espeak-ng"}

    assert not variants(train) & variants(held)
    assert "ked_diphone" not in {s.voice for s in train_spk}
    # every dev/test word occurs in the training text; utterance ids are unique and prefixed by the speaker
    vocab = {w for u in train for w in u.text.split()}
    assert all(set(u.text.split()) <= vocab for u in held)
    ids = [u.utt for u in g.utterances]
    assert len(set(ids)) == len(ids) and all(u.utt.startswith(u.speaker.kaldi_id + "-") for u in g.utterances)
    assert len({s.spk for s in g.speakers}) == len(g.speakers)


def test_base_size_plans_are_unchanged(plans):
    """The plans of the shipped demo corpus (and the CI one) hash as before the large size existed."""

    def digest(plan):
        rows = _rows(plan.utterances, ("train", "dev", "test"))
        return hashlib.sha1(repr(rows).encode()).hexdigest()[:16]

    pool = mdc.load_sentences(mdc.DEFAULT_SENTENCES)
    assert digest(plans["default"]) == DEFAULT_PLAN_SHA1
    assert digest(mdc.plan_corpus(mdc.SIZES["tiny"], 0, pool, 0)) == TINY_PLAN_SHA1


def test_more_hours_repeat_sentences_with_other_speakers():
    pool = mdc.load_sentences(mdc.DEFAULT_SENTENCES)[:3000]
    spec = dataclasses.replace(mdc.SIZES["large"], train_hours=4.0)
    plan = mdc.plan_corpus(spec, 0, pool, 0)
    train = [u for u in plan.utterances if u.split == "train"]
    assert sum(mdc.estimated_seconds(u.sentence) for u in train) >= 4 * 3600
    assert len({u.sentence for u in train}) < len(train)  # the small pool is cycled
    assert not {u.sentence for u in train} & set(plan.sentences["dev"] + plan.sentences["test"])


def test_augment_plan_only_train_and_deterministic(plans):
    utts = plans["large"].utterances
    a, b = mdc.augment_plan(utts, 0, 0.5), mdc.augment_plan(list(reversed(utts)), 0, 0.5)
    assert a == b
    n_train = sum(u.split == "train" for u in utts)
    assert all(u.split == "train" for u in utts if u.utt in a)
    assert 0.47 < len(a) / n_train < 0.53
    assert all(x.reverb is not None or x.noise is not None for x in a.values())
    assert mdc.augment_plan(plans["default"].utterances, 0, 0.0) == {}


@pytest.mark.skipif(shutil.which("sox") is None, reason="sox is not installed")
def test_apply_augment_keeps_length_and_range():
    rng = np.random.default_rng(0)
    t = np.arange(32000) / 16000
    x = np.concatenate(
        [np.zeros(4000), 12000 * np.sin(2 * np.pi * 220 * t) * (rng.random(32000) + 0.5), np.zeros(4000)]
    ).astype(np.int16)
    aug = mdc.Augment((60, 40, 80, 10), 4000, "pink", 10.0, -6.0)
    y = mdc.apply_augment(x, aug, 0, "u1")
    assert y.dtype == np.int16 and len(y) == len(x)
    assert np.array_equal(y, mdc.apply_augment(x, aug, 0, "u1"))
    assert abs(np.abs(y).max() / np.abs(x).max() - 10 ** (-6 / 20)) < 0.01  # loudness relative to the clean peak
    assert np.abs(y[:2000]).mean() > 10  # noise where the clean signal is silent
    loud = mdc.apply_augment(x, mdc.Augment(None, None, "white", 30.0, 5.0), 0, "u2")
    assert np.abs(loud).max() <= 32000  # capped below clipping


DEFAULT_PLAN_SHA1 = "a6a53c97b8c60673"  # computed with the generator before the large size existed
TINY_PLAN_SHA1 = "5e4f416e9c69c8ce"
