"""distill.scoring in sclite mode against the sclite binary (SCTK), on tie-heavy random data and edge cases.

sclite is the oracle: per-utterance counts (C, S, D, I) and the alignments themselves must be equal.
The tests are skipped when sclite is not installed (CI installs sctk).
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from pathlib import Path

import kaldialign
import pytest

from distill.scoring import ascii_lower, sclite_align, wer
from distill.scoring.align import _sclite_ops, _sclite_ops_trimmed

SCLITE = shutil.which("sclite") or next(
    (p for p in ("/usr/lib/sctk/bin/sclite", "/usr/bin/sclite") if Path(p).is_file()), None
)
needs_sclite = pytest.mark.skipif(SCLITE is None, reason="sclite (SCTK) is not installed")

_BLOCK = re.compile(
    r"^id: \((?P<id>[^)]+)\)\n"
    r"Scores: \(#C #S #D #I\) (?P<c>\d+) (?P<s>\d+) (?P<d>\d+) (?P<i>\d+)\n"
    r"(?:Attributes:.*\n)?"
    r"(?:REF:(?P<ref>.*)\n"  # no REF/HYP lines when both sides are empty
    r"HYP:(?P<hyp>.*)\n)?",
    re.MULTILINE,
)


def run_sclite(tmp: Path, refs: dict[str, list[str]], hyps: dict[str, list[str]], case_sensitive: bool = False):
    """Per utterance: ((C, S, D, I), [(ref_tok, hyp_tok), ...]) from sclite's pralign report ('*' = gap)."""
    for name, texts in (("ref.trn", refs), ("hyp.trn", hyps)):
        with open(tmp / name, "w", encoding="utf-8") as f:
            for uid, words in texts.items():
                f.write(" ".join(words) + f" ({uid})\n")
    cmd = [
        SCLITE,
        "-r",
        str(tmp / "ref.trn"),
        "trn",
        "-h",
        str(tmp / "hyp.trn"),
        "trn",
        "-i",
        "rm",
        "-o",
        "pralign",
        "stdout",
    ]
    if case_sensitive:
        cmd.append("-s")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, encoding="utf-8").stdout
    got = {}
    for m in _BLOCK.finditer(out):
        counts = tuple(int(m[k]) for k in "csdi")
        # sclite pads a gap '*' to the width of the word opposite it
        gap = lambda t: "*" if set(t) == {"*"} else t  # noqa: E731
        ali = [(gap(r), gap(h)) for r, h in zip((m["ref"] or "").split(), (m["hyp"] or "").split())]
        got[m["id"]] = (counts, ali)
    assert len(got) == len(refs), f"parsed {len(got)} of {len(refs)} utterances from sclite's output"
    return got


def ours(ref: list[str], hyp: list[str], case_sensitive: bool = False):
    ali = sclite_align(ref, hyp, case_sensitive=case_sensitive)
    fold = (lambda w: w) if case_sensitive else ascii_lower
    c = sum(1 for r, h in ali if r is not None and h is not None and fold(r) == fold(h))
    s = sum(1 for r, h in ali if r is not None and h is not None and fold(r) != fold(h))
    d = sum(1 for r, h in ali if h is None)
    i = sum(1 for r, h in ali if r is None)
    return (c, s, d, i), ali


def as_pralign(ali, case_sensitive: bool = False) -> list[tuple[str, str]]:
    """Our alignment in sclite's printed form, folded for comparison ('*' for gaps)."""
    fold = (lambda w: w) if case_sensitive else ascii_lower
    return [("*" if r is None else fold(r), "*" if h is None else fold(h)) for r, h in ali]


def compare(tmp: Path, refs, hyps, case_sensitive: bool = False) -> dict:
    got = run_sclite(tmp, refs, hyps, case_sensitive)
    totals = [0, 0, 0, 0]
    for uid in refs:
        counts, ali = ours(refs[uid], hyps[uid], case_sensitive)
        sc_counts, sc_ali = got[uid]
        assert counts == sc_counts, f"{uid}: ref={refs[uid]} hyp={hyps[uid]} ours={counts} sclite={sc_counts}"
        fold = (lambda w: w) if case_sensitive else ascii_lower
        assert as_pralign(ali, case_sensitive) == [(fold(r), fold(h)) for r, h in sc_ali], uid
        totals = [t + x for t, x in zip(totals, sc_counts)]
    res = wer(
        {u: " ".join(w) for u, w in refs.items()},
        {u: " ".join(w) for u, w in hyps.items()},
        case_sensitive=case_sensitive,
    )
    assert [res["corr"], res["sub"], res["del"], res["ins"]] == totals
    return res


def random_pairs(seed: int, n: int, max_len: int = 15):
    rng = random.Random(seed)
    refs, hyps = {}, {}
    for k in range(n):
        vocab = "abcdefg"[: rng.randint(3, 7)]
        refs[f"spk-{k:05d}"] = [rng.choice(vocab) for _ in range(rng.randint(0, max_len))]
        hyps[f"spk-{k:05d}"] = [rng.choice(vocab) for _ in range(rng.randint(0, max_len))]
    return refs, hyps


@needs_sclite
def test_tie_heavy_random_matches_sclite(tmp_path):
    refs, hyps = random_pairs(seed=2024, n=600)
    res = compare(tmp_path, refs, hyps)
    # the data really is tie-heavy: kaldialign's sclite_mode reports a different total here
    ka = sum(kaldialign.edit_distance(refs[u], hyps[u], sclite_mode=True)["total"] for u in refs)
    assert ka != res["num_errs"]


@needs_sclite
def test_realistic_hypotheses_match_sclite(tmp_path):
    """Hypotheses made by a few edits of the reference: long common prefixes and suffixes."""
    rng = random.Random(7)
    vocab = [f"w{i}" for i in range(6)]
    refs, hyps = {}, {}
    for k in range(300):
        ref = [rng.choice(vocab) for _ in range(rng.randint(0, 30))]
        hyp = list(ref)
        for _ in range(rng.randint(0, 4)):
            op = rng.random()
            if op < 0.4 and hyp:
                hyp[rng.randrange(len(hyp))] = rng.choice(vocab)
            elif op < 0.7 and hyp:
                del hyp[rng.randrange(len(hyp))]
            else:
                hyp.insert(rng.randrange(len(hyp) + 1), rng.choice(vocab))
        refs[f"spk-{k:05d}"], hyps[f"spk-{k:05d}"] = ref, hyp
    compare(tmp_path, refs, hyps)


@needs_sclite
def test_edge_cases_match_sclite(tmp_path):
    cases = {
        "e-both-empty": ([], []),
        "e-empty-ref": ([], ["a", "b", "c"]),
        "e-empty-hyp": (["a", "b"], []),
        "e-same": (["a", "b", "a"], ["a", "b", "a"]),
        "e-one-sub": (["a"], ["b"]),
        "e-all-different": (["a", "a", "a"], ["b", "b"]),
        "e-shifted": (["a", "b", "a", "b"], ["b", "a", "b", "a"]),
        "e-repeat-ins": (["a", "a"], ["a", "a", "a", "a", "a"]),
        "e-repeat-del": (["b", "b", "b", "b"], ["b"]),
        # sclite's 4/3/3 weights give 8 errors where the Levenshtein minimum is 7
        "e-extra-error": ("b d b c b d a".split(), "a c a a a d c d".split()),
    }
    res = compare(tmp_path, {u: r for u, (r, _) in cases.items()}, {u: h for u, (_, h) in cases.items()})
    assert res["utts"]["e-empty-ref"].ins == 3 and res["utts"]["e-empty-hyp"].dele == 2
    assert res["utts"]["e-both-empty"].errs == 0
    assert res["utts"]["e-extra-error"].errs == 8


@needs_sclite
@pytest.mark.parametrize("case_sensitive", [False, True])
def test_case_handling_matches_sclite(tmp_path, case_sensitive):
    """sclite folds ASCII case only (not Ä/ä) unless -s; our default in sclite mode does the same."""
    rng = random.Random(3)
    vocab = ["a", "A", "b", "B", "Äb", "äb", "ÄB", "é", "É"]
    refs, hyps = {}, {}
    for k in range(150):
        refs[f"c-{k:04d}"] = [rng.choice(vocab) for _ in range(rng.randint(0, 8))]
        hyps[f"c-{k:04d}"] = [rng.choice(vocab) for _ in range(rng.randint(0, 8))]
    compare(tmp_path, refs, hyps, case_sensitive=case_sensitive)


def test_trimmed_dp_equals_full_dp():
    """The common prefix/suffix shortcut gives exactly the full DP's operations (no sclite needed)."""
    rng = random.Random(11)
    for _ in range(20000):
        vocab = "abc"[: rng.randint(1, 3)]
        r = [rng.choice(vocab) for _ in range(rng.randint(0, 9))]
        h = [rng.choice(vocab) for _ in range(rng.randint(0, 9))]
        assert _sclite_ops_trimmed(r, h) == _sclite_ops(r, h), (r, h)


def test_alignment_cost_is_minimal():
    """Independent of sclite: our alignment's 4/3/3 cost equals the minimum (kaldialign's sclite_mode)."""
    refs, hyps = random_pairs(seed=5, n=2000, max_len=12)
    for u in refs:
        (c, s, d, i), ali = ours(refs[u], hyps[u], case_sensitive=True)
        assert c + s + d == len(refs[u]) and c + s + i == len(hyps[u])
        ka = kaldialign.edit_distance(refs[u], hyps[u], sclite_mode=True)
        assert 4 * s + 3 * (d + i) == 4 * ka["sub"] + 3 * (ka["ins"] + ka["del"]), (refs[u], hyps[u])
