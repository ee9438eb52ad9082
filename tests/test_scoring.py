"""distill.scoring: Levenshtein mode vs jiwer, result keys, bad input, GigaSpeech normalisation, files, CLI."""

from __future__ import annotations

import math
import random
import subprocess
import sys

import jiwer
import pytest

from distill.bin.score import main as score_main
from distill.scoring import (
    gigaspeech_normalize,
    levenshtein_align,
    read_kaldi_text,
    validate_refs,
    wer,
    write_scoring_files,
    write_wer_summary,
)

KEYS = {
    "ins",
    "del",
    "sub",
    "corr",
    "ref_words",
    "hyp_words",
    "wer",
    "num_errs",
    "num_utts",
    "num_sent_errs",
    "ser",
    "missing_hyps",
    "mode",
    "normalize",
    "case_sensitive",
    "utts",
}


def random_corpus(seed: int, n: int, vocab: str = "abcdef", max_len: int = 15):
    rng = random.Random(seed)
    refs, hyps = {}, {}
    for k in range(n):
        v = vocab[: rng.randint(3, len(vocab))]
        refs[f"u{k:04d}"] = " ".join(rng.choice(v) for _ in range(rng.randint(0, max_len)))
        hyps[f"u{k:04d}"] = " ".join(rng.choice(v) for _ in range(rng.randint(0, max_len)))
    return refs, hyps


# ---------------------------------------------------------------- Levenshtein mode


def test_levenshtein_matches_jiwer_per_utterance_and_total():
    refs, hyps = random_corpus(seed=1, n=400)
    res = wer(refs, hyps, mode="levenshtein")
    assert set(res) == KEYS
    ids = sorted(refs)
    total = 0
    for uid in ids:
        out = jiwer.process_words(refs[uid], hyps[uid])
        j_errs = out.substitutions + out.deletions + out.insertions
        u = res["utts"][uid]
        assert u.errs == j_errs, (uid, refs[uid], hyps[uid])
        assert u.corr + u.sub + u.dele == len(refs[uid].split())
        assert u.corr + u.sub + u.ins == len(hyps[uid].split())
        total += j_errs
    assert res["num_errs"] == total == res["ins"] + res["del"] + res["sub"]
    assert res["ref_words"] == sum(len(refs[u].split()) for u in ids)
    assert res["wer"] == pytest.approx(100.0 * total / res["ref_words"])


def test_levenshtein_never_more_errors_than_sclite():
    refs, hyps = random_corpus(seed=2, n=300, vocab="abc")
    lev = wer(refs, hyps, mode="levenshtein", case_sensitive=False)
    scl = wer(refs, hyps, mode="sclite")
    for uid in refs:
        assert lev["utts"][uid].errs <= scl["utts"][uid].errs
    # sclite minimises 4*sub + 3*(ins+del), which can cost an extra error:
    ref, hyp = "b d b c b d a", "a c a a a d c d"
    assert wer({"u": ref}, {"u": hyp}, mode="levenshtein")["num_errs"] == 7
    assert wer({"u": ref}, {"u": hyp}, mode="sclite")["num_errs"] == 8


def test_levenshtein_alignment_pairs():
    ali = levenshtein_align("a b c d".split(), "a x c".split())
    assert ali == [("a", "a"), ("b", "x"), ("c", "c"), ("d", None)]
    # a word equal to any epsilon symbol is still just a word
    assert levenshtein_align(["*", "-1"], ["*"]) == [("*", "*"), ("-1", None)]


# ---------------------------------------------------------------- result contract and edge cases


def test_wer_keys_and_values_sclite():
    res = wer({"a": "the cat sat", "b": "hello"}, {"a": "the bat sat down", "b": "hello"})
    assert set(res) == KEYS
    assert (res["corr"], res["sub"], res["ins"], res["del"]) == (3, 1, 1, 0)
    assert res["ref_words"] == 4 and res["hyp_words"] == 5 and res["num_errs"] == 2
    assert res["wer"] == pytest.approx(50.0)
    assert res["num_utts"] == 2 and res["num_sent_errs"] == 1 and res["ser"] == pytest.approx(50.0)
    assert res["utts"]["a"].alignment == [("the", "the"), ("cat", "bat"), ("sat", "sat"), (None, "down")]


def test_empty_refs_and_hyps_are_scored():
    res = wer({"both": "", "ref": "", "hyp": "a b"}, {"both": "", "ref": "x y z", "hyp": ""})
    u = res["utts"]
    assert u["both"].errs == 0
    assert (u["ref"].ins, u["ref"].sub, u["ref"].dele) == (3, 0, 0)
    assert (u["hyp"].ins, u["hyp"].sub, u["hyp"].dele) == (0, 0, 2)
    assert res["ref_words"] == 2 and res["num_errs"] == 5 and res["wer"] == pytest.approx(250.0)


def test_no_reference_words():
    assert wer({"a": ""}, {"a": ""})["wer"] == 0.0
    assert math.isinf(wer({"a": ""}, {"a": "x"})["wer"])


def test_missing_hypothesis_is_all_deletions_and_listed(caplog):
    res = wer({"a": "x y", "b": "z"}, {"b": "z"})
    assert res["missing_hyps"] == ["a"]
    assert res["utts"]["a"].dele == 2 and res["utts"]["a"].hyp_missing
    assert res["del"] == 2 and res["wer"] == pytest.approx(200.0 / 3)
    assert "'a'" in caplog.text


def test_hypothesis_without_reference_raises_naming_it():
    with pytest.raises(ValueError, match="'ghost'"):
        wer({"a": "x"}, {"a": "x", "ghost": "y"})


def test_case_default_follows_the_tool():
    refs, hyps = {"a": "Hello World"}, {"a": "hello world"}
    assert wer(refs, hyps)["num_errs"] == 0  # sclite folds case unless -s
    assert wer(refs, hyps, case_sensitive=True)["num_errs"] == 2
    assert wer(refs, hyps, mode="levenshtein")["num_errs"] == 2  # compute-wer does not fold
    assert wer(refs, hyps, mode="levenshtein", case_sensitive=False)["num_errs"] == 0
    assert wer({"a": "Äb"}, {"a": "äb"})["num_errs"] == 1  # like sclite: ASCII letters only


def test_unknown_mode_and_normalizer():
    with pytest.raises(ValueError, match="mode"):
        wer({"a": "x"}, {"a": "x"}, mode="cer")
    with pytest.raises(ValueError, match="normalisation"):
        wer({"a": "x"}, {"a": "x"}, normalize="librispeech")


# ---------------------------------------------------------------- bad input


def test_bytes_input_decoded_and_bad_utf8_named():
    assert wer({"a": "café".encode()}, {"a": b"caf\xc3\xa9"})["num_errs"] == 0
    with pytest.raises(ValueError, match=r"reference of utterance 'bad'.*UTF-8"):
        wer({"ok": "x", "bad": b"caf\xe9"}, {"ok": "x"})
    with pytest.raises(ValueError, match=r"hypothesis of utterance 'bad'"):
        wer({"bad": "x"}, {"bad": b"\xff"})
    with pytest.raises(ValueError, match="'sur'"):
        wer({"sur": b"caf\xe9".decode("utf-8", "surrogateescape")}, {})
    with pytest.raises(TypeError, match="'num'"):
        wer({"num": 3}, {})


def test_validate_refs_and_strict():
    validate_refs({"a": "x", "b": b"y"})
    with pytest.raises(ValueError, match="'e1'"):
        validate_refs({"a": "x", "e1": "  "})
    with pytest.raises(ValueError, match="'bad'.*UTF-8"):
        validate_refs({"bad": b"\xff\xfe"})
    # empty only after normalisation
    validate_refs({"f": "UH UM <COMMA>"})
    with pytest.raises(ValueError, match="gigaspeech.*'f'"):
        validate_refs({"f": "UH UM <COMMA>"}, normalize="gigaspeech")
    with pytest.raises(ValueError, match="'e'"):
        wer({"e": "", "a": "x"}, {"e": "", "a": "x"}, strict=True)
    assert wer({"e": "", "a": "x"}, {"e": "", "a": "x"})["num_errs"] == 0


def test_read_kaldi_text(tmp_path):
    p = tmp_path / "text"
    p.write_bytes(b"u1 hello world\n\nu2\nu3   spaced   out  \n")
    assert read_kaldi_text(p) == {"u1": "hello world", "u2": "", "u3": "spaced   out"}
    p.write_bytes(b"u1 ok\nu2 caf\xe9\n")
    with pytest.raises(ValueError, match=r"text:2: utterance 'u2'.*UTF-8"):
        read_kaldi_text(p)
    p.write_bytes(b"u1 a\nu1 b\n")
    with pytest.raises(ValueError, match=r"text:2: utterance 'u1' appears twice"):
        read_kaldi_text(p)


# ---------------------------------------------------------------- GigaSpeech normalisation


@pytest.mark.parametrize(
    "text, expected",
    [
        ("uh the state-of-the-art <COMMA> model um", "THE STATE OF THE ART MODEL"),
        ("E-COMMERCE <PERIOD>", "E COMMERCE"),
        ("<SIL> <MUSIC> <NOISE> <OTHER> <UNK> <unk>", ""),
        ("UH UHH UM EH MM HM AH HUH HA ER OOF HEE ACH EEE EW", ""),
        ("WHAT <QUESTIONMARK> WOW <EXCLAMATIONPOINT>", "WHAT WOW"),
        ("AHA HAH UMM ERR", "AHA HAH UMM ERR"),  # only whole filler words are dropped
        ("  spaced\tout  ", "SPACED OUT"),
    ],
)
def test_gigaspeech_normalize(text, expected):
    assert gigaspeech_normalize(text) == expected


def test_gigaspeech_normalisation_applies_to_both_sides():
    refs = {"a": "UH the STATE-OF-THE-ART <COMMA> system"}
    hyps = {"a": "the state of the art um system <PERIOD>"}
    assert wer(refs, hyps, mode="levenshtein")["num_errs"] > 0
    res = wer(refs, hyps, mode="levenshtein", normalize="gigaspeech")
    assert res["num_errs"] == 0 and res["ref_words"] == 6
    assert res["utts"]["a"].hyp == ["THE", "STATE", "OF", "THE", "ART", "SYSTEM"]


# ---------------------------------------------------------------- files


EXPECTED_ERRS = """\
%WER = 100.00
Errors: 2 insertions, 2 deletions, 1 substitutions, over 5 reference words (2 correct)
Search below for sections starting with PER-UTT DETAILS:, SUBSTITUTIONS:, DELETIONS:, INSERTIONS:, PER-WORD STATS:

PER-UTT DETAILS: corr or (ref->hyp)  
u1:\ta (b->x) c (*->d)
u2:\t(*->x)
u3:\t(x y->*)

SUBSTITUTIONS: count ref -> hyp
1   b -> x

DELETIONS: count ref
1   y
1   x

INSERTIONS: count hyp
1   x
1   d

PER-WORD STATS: word  corr tot_errs count_in_ref count_in_hyp
x   0 3 1 2
y   0 1 1 0
d   0 1 0 1
b   0 1 1 0
c   1 0 1 1
a   1 0 1 1

MISSING HYPOTHESES (scored as all deletions): 1
u3
"""

EXPECTED_RECOGS = """\
u1:\tref=['a', 'b', 'c']
u1:\thyp=['a', 'x', 'c', 'd']
u2:\tref=[]
u2:\thyp=['x']
u3:\tref=['x', 'y']
u3:\thyp=[]
"""


def test_write_scoring_files_formats(tmp_path):
    refs = {"u3": "x y", "u1": "a b c", "u2": ""}
    hyps = {"u1": "a x c d", "u2": "x"}
    res = write_scoring_files(tmp_path / "res", "test-clean", "greedy", refs, hyps)
    files = res["files"]
    assert files["errs"].name == "errs-test-clean-greedy.txt"
    assert files["recogs"].name == "recogs-test-clean-greedy.txt"
    assert files["wer_summary"].name == "wer-summary-test-clean-greedy.txt"
    assert files["errs"].read_text(encoding="utf-8") == EXPECTED_ERRS
    assert files["recogs"].read_text(encoding="utf-8") == EXPECTED_RECOGS
    assert files["wer_summary"].read_text(encoding="utf-8") == "settings\tWER\ngreedy\t100.00\n"


def test_errs_merges_consecutive_errors_and_keeps_case(tmp_path):
    refs = {"u": "The quick brown fox jumps"}
    hyps = {"u": "the quack brawn fox jumps high"}
    res = write_scoring_files(tmp_path, "t", "s", refs, hyps)
    text = res["files"]["errs"].read_text(encoding="utf-8")
    assert "u:\tThe (quick brown->quack brawn) fox jumps (*->high)\n" in text
    assert "2 substitutions" in text and "1 insertions" in text


def test_write_wer_summary_sorted(tmp_path):
    p = write_wer_summary(tmp_path, "dev", "epoch-3", {"beam-8": 12.5, "greedy": 13.25, "beam-4": 12.0})
    assert p.read_text() == "settings\tWER\nbeam-4\t12.00\nbeam-8\t12.50\ngreedy\t13.25\n"


# ---------------------------------------------------------------- CLI


def _texts(tmp_path, ref: str, hyp: str):
    r, h = tmp_path / "ref.txt", tmp_path / "hyp.txt"
    r.write_text(ref, encoding="utf-8")
    h.write_text(hyp, encoding="utf-8")
    return r, h


def test_cli_prints_kaldi_line_and_writes_files(tmp_path, capsys):
    r, h = _texts(tmp_path, "u1 a b c\nu2 UH hello\nu3 x\n", "u1 a x c d\nu2 hello\n")
    rc = score_main(
        [
            "--ref",
            str(r),
            "--hyp",
            str(h),
            "--normalize",
            "gigaspeech",
            "--out-dir",
            str(tmp_path / "out"),
            "--test-set",
            "dev",
            "--suffix",
            "greedy",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert out.splitlines()[0] == "%WER 60.00 [ 3 / 5, 1 ins, 1 del, 1 sub ]"
    assert "Scored 3 sentences, 1 not present in hyp." in out
    assert (tmp_path / "out" / "errs-dev-greedy.txt").read_text().startswith("%WER = 60.00\n")


def test_cli_levenshtein_and_errors(tmp_path, capsys):
    r, h = _texts(tmp_path, "u1 a a\n", "u1 b\n")
    assert score_main(["--ref", str(r), "--hyp", str(h), "--mode", "levenshtein"]) == 0
    assert capsys.readouterr().out.startswith("%WER 100.00 [ 2 / 2, 0 ins, 1 del, 1 sub ]")
    r, h = _texts(tmp_path, "u1 a\n", "u1 a\nu9 b\n")
    assert score_main(["--ref", str(r), "--hyp", str(h)]) == 1
    assert "'u9'" in capsys.readouterr().err
    r, h = _texts(tmp_path, "u1 a\nu2\n", "u1 a\n")
    assert score_main(["--ref", str(r), "--hyp", str(h), "--strict"]) == 1
    assert "'u2'" in capsys.readouterr().err
    assert score_main(["--ref", str(tmp_path / "nope"), "--hyp", str(h)]) == 1
    assert "nope" in capsys.readouterr().err


def test_cli_module_entry_point(tmp_path):
    r, h = _texts(tmp_path, "u1 a b\n", "u1 a b\n")
    out = subprocess.run(
        [sys.executable, "-m", "distill.bin.score", "--ref", str(r), "--hyp", str(h)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith("%WER 0.00 [ 0 / 2, 0 ins, 0 del, 0 sub ]")
