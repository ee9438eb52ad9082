"""Stage 1 pieces: tokenizers (BPE and characters), lang files, text normalisation, length rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_data_helpers import WORDS

from distill.data import TextNormalizer, TextNormConfig, Tokenizer, ctc_min_frames, w2v2_num_frames
from distill.data.tokenizer import TokenizerError, build_char_tokenizer, train_bpe, write_lang_files

TRAIN = [" ".join(np.random.default_rng(i).choice(WORDS, 6)) for i in range(200)] + ["DON'T STOP O'NEIL"]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> tuple[Tokenizer, Path]:
    d = tmp_path_factory.mktemp("bpe")
    (d / "text.txt").write_text("\n".join(TRAIN) + "\n", encoding="utf-8")
    return train_bpe(d / "text.txt", d, vocab_size=50), d


def test_bpe_conventions_and_round_trip(bpe):
    tok, d = bpe
    assert tok.kind == "bpe" and tok.vocab_size == 50
    assert [tok.id_to_piece(i) for i in range(3)] == ["<blk>", "<sos/eos>", "<unk>"]
    assert (tok.blank_id, tok.sos_eos_id, tok.unk_id) == (0, 1, 2)
    for text in TRAIN[:50] + ["FOX DOG THE", "HOME AWAY FROM HOME", "DON'T"]:
        ids = tok.encode(text)
        assert ids and 0 not in ids and all(0 < i < 50 for i in ids)
        assert tok.decode(ids) == text
    # blanks and <sos/eos> are ignored when decoding; an uncovered character becomes <unk>
    ids = tok.encode("THE DOG")
    assert tok.decode([0, *ids[:1], 0, 0, *ids[1:], 1]) == "THE DOG"
    assert tok.uncovered_chars("ÉCLAIR THE") == {"É"}
    assert 2 in tok.encode("ÉCLAIR") and "<unk>" in tok.decode(tok.encode("ÉCLAIR"))
    # a loaded tokenizer is the same tokenizer
    again = Tokenizer.load(d)
    assert again.pieces == tok.pieces and again.encode(TRAIN[0]) == tok.encode(TRAIN[0])


def test_char_round_trip_and_files(tmp_path):
    tok = build_char_tokenizer(TRAIN)
    assert tok.pieces[:4] == ["<blk>", "<sos/eos>", "<unk>", "\u2581"]
    assert set(tok.pieces[4:]) == set("".join(TRAIN).replace(" ", ""))
    for text in TRAIN[:20] + ["DON'T STOP"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert len(ids) == len(text.replace(" ", "")) + len(text.split())  # one ▁ per word
    assert tok.decode(tok.encode("CAFÉ")) == "CAF<unk>"
    write_lang_files(tmp_path, tok, TRAIN)
    again = Tokenizer.load(tmp_path)  # no bpe.model: characters from tokens.txt
    assert again.kind == "char" and again.pieces == tok.pieces and again.encode("THE FOX") == tok.encode("THE FOX")


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_lang_files(bpe, tmp_path, kind):
    tok = bpe[0] if kind == "bpe" else build_char_tokenizer(TRAIN)
    words = [w for t in TRAIN for w in t.split()]
    write_lang_files(tmp_path, tok, words)
    tokens = [line.split() for line in (tmp_path / "tokens.txt").read_text(encoding="utf-8").splitlines()]
    assert [int(i) for _, i in tokens] == list(range(tok.vocab_size))
    assert [p for p, _ in tokens] == tok.pieces
    table = [line.split() for line in (tmp_path / "words.txt").read_text(encoding="utf-8").splitlines()]
    assert [int(i) for _, i in table] == list(range(len(table)))
    names = [w for w, _ in table]
    assert names[:2] == ["<eps>", "<UNK>"] and names[-3:] == ["#0", "<s>", "</s>"]
    assert set(names[2:-3]) == set(words)
    lex = {}
    for line in (tmp_path / "lexicon.txt").read_text(encoding="utf-8").splitlines():
        w, *pieces = line.split()
        assert w not in lex  # one pronunciation per word
        lex[w] = pieces
    assert lex.pop("<UNK>") == ["<unk>"]
    assert set(lex) == set(words)
    for w, pieces in lex.items():
        assert all(p in tok.pieces for p in pieces)
        assert "".join(pieces).replace("\u2581", "") == w


def test_bpe_vocab_too_large_is_a_clear_error(tmp_path):
    (tmp_path / "t.txt").write_text("A B C\n")
    with pytest.raises(TokenizerError, match="Lower tokenizer.vocab_size"):
        train_bpe(tmp_path / "t.txt", tmp_path, vocab_size=5000)


def test_bpe_on_a_bounded_sample(tmp_path):
    """max_sentences trains on a seeded random sample: characters only in a line left out are not covered."""
    lines = [" ".join(np.random.default_rng(i).choice(WORDS, 6)) for i in range(2000)]
    lines.insert(1234, "1212 12")  # the WORDS use every letter
    (tmp_path / "t.txt").write_text("\n".join(lines) + "\n")
    full = train_bpe(tmp_path / "t.txt", tmp_path / "full", vocab_size=40)
    a = train_bpe(tmp_path / "t.txt", tmp_path / "a", vocab_size=40, max_sentences=150, seed=1)
    other = train_bpe(tmp_path / "t.txt", tmp_path / "o", vocab_size=40, max_sentences=150, seed=0)
    b = train_bpe(tmp_path / "t.txt", tmp_path / "b", vocab_size=40, max_sentences=150, seed=1)
    assert not full.uncovered_chars("12") and a.uncovered_chars("12") == {"1", "2"}  # seed 1 leaves it out
    assert not other.uncovered_chars("12")  # seed 0 draws it
    assert a.pieces == b.pieces  # seeded, whatever trained before in this process
    assert not list(tmp_path.glob("*/bpe_train_sample.txt"))  # the sample file is removed
    with pytest.raises(TokenizerError, match="more than 100"):
        train_bpe(tmp_path / "t.txt", tmp_path / "c", vocab_size=40, max_sentences=50)


@pytest.mark.parametrize(
    "text,want",
    [
        ("Hello, World!", "HELLO WORLD"),
        ("don't  stop -- the well-known “rock’n’roll” band...", "DON'T STOP THE WELL KNOWN ROCK'N'ROLL BAND"),
        ("the readers' guide ' x", "THE READERS' GUIDE X"),
        ("?! ... , -- '", ""),
        ("ＡＢＣ　ｄｅｆ", "ABC DEF"),  # NFKC
        ("x <UNK> y", "X <UNK> Y"),
    ],
)
def test_text_normaliser_default(text, want):
    assert TextNormalizer()(text) == want


def test_text_normaliser_gigaspeech_and_options():
    cfg = TextNormConfig(
        remove_tags=["<COMMA>", "<PERIOD>", "<QUESTIONMARK>", "<EXCLAMATIONPOINT>"],
        garbage_tags=["<SIL>", "<MUSIC>", "<NOISE>", "<OTHER>"],
    )
    n = TextNormalizer(cfg)
    assert (
        n("AS THEY'RE LEAVING <COMMA> CAN KASH PULL ZAHRA ASIDE <QUESTIONMARK>")
        == "AS THEY'RE LEAVING CAN KASH PULL ZAHRA ASIDE"
    )
    assert n.is_garbage("<SIL>") and n.is_garbage("<MUSIC> <NOISE> <PERIOD>") and not n.is_garbage("<NOISE> HELLO")
    assert n("<NOISE> HELLO <PERIOD>") == "HELLO"
    assert TextNormalizer(TextNormConfig(case="lower"))("Hello World") == "hello world"
    assert TextNormalizer(TextNormConfig(case="keep", strip_punctuation=False))("Hi, there.") == "Hi, there."


def test_text_normaliser_word_memo_is_bounded(monkeypatch):
    import distill.data.text as text_mod

    monkeypatch.setattr(text_mod, "_MEMO_WORDS", 3)
    n = TextNormalizer()
    for _ in range(2):
        assert n("Hello, World! hello world-wide x y z") == "HELLO WORLD HELLO WORLD WIDE X Y Z"
        assert len(n._memo) <= 3


def test_w2v2_frames_match_a_conv_stack():
    """Oracle: the output length of the actual wav2vec 2.0 conv stack (torch Conv1d, no padding)."""
    convs = torch.nn.Sequential(
        *[torch.nn.Conv1d(1, 1, k, s, bias=False) for k, s in zip((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2))]
    )
    for n in (400, 401, 719, 720, 1000, 16000, 16319, 16320, 48000, 123457):
        with torch.no_grad():
            t = convs(torch.zeros(1, 1, n)).shape[-1]
        assert w2v2_num_frames(n) == t, n
    assert w2v2_num_frames(16000) == 49 and w2v2_num_frames(399) == 0


def test_ctc_min_frames_matches_ctc_loss():
    """Oracle: the fewest frames for which torch's CTC loss is finite."""
    rng = np.random.default_rng(0)
    for _ in range(30):
        ids = rng.integers(1, 4, size=int(rng.integers(1, 7))).tolist()
        need = ctc_min_frames(ids)
        for T in range(1, 16):
            lp = torch.zeros(T, 1, 5).log_softmax(-1)
            loss = torch.nn.functional.ctc_loss(
                lp,
                torch.tensor([ids]),
                torch.tensor([T]),
                torch.tensor([len(ids)]),
                blank=0,
                reduction="sum",
                zero_infinity=False,
            )
            if torch.isfinite(loss):
                assert T == need, (ids, T, need)
                break
    assert ctc_min_frames([5, 5, 5]) == 5 and ctc_min_frames([1, 2, 3]) == 3 and ctc_min_frames([]) == 0
