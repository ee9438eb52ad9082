"""Graphs: Fsa container and kaldifst conversion, epsilon removal, CTC topology, n-gram LM / ARPA,
the denominator graph (both construction routes) and the build_den_graph step."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from distill.graph import Fsa, NgramLM, ctc_topo, ctc_topo_fst, estimate_ngram, remove_epsilon
from distill.graph.den import build_den_graph, den_graph_from_arpa, load_token_lm_arrays, read_token_ids, read_tokens
from distill.graph.ngram import BOS, EOS
from distill.losses import LFMMILoss

NEG = -math.inf


# ---------------------------------------------------------------------------- oracles
def lae(a: float, b: float) -> float:
    if a == NEG:
        return b
    if b == NEG:
        return a
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))


def seq_weight(n, src, dst, lab, score, start, final, x) -> float:
    """Log weight of label sequence x summed over all paths, epsilon arcs (label < 0) allowed (the
    epsilon subgraph must be acyclic). Independent of the code under test: explicit dicts."""
    arcs = list(zip(src.tolist(), dst.tolist(), lab.tolist(), score.tolist()))

    def closure(dist: dict[int, float]) -> dict[int, float]:
        out = dict(dist)
        frontier = dict(dist)
        while frontier:
            nxt: dict[int, float] = {}
            for s, w in frontier.items():
                for a, d, la, sc in arcs:
                    if a == s and la < 0:
                        nxt[d] = lae(nxt.get(d, NEG), w + sc)
            for d, w in nxt.items():
                out[d] = lae(out.get(d, NEG), w)
            frontier = nxt
        return out

    cur = closure({start: 0.0})
    for sym in x:
        nxt: dict[int, float] = {}
        for s, w in cur.items():
            for a, d, la, sc in arcs:
                if a == s and la == sym:
                    nxt[d] = lae(nxt.get(d, NEG), w + sc)
        cur = closure(nxt)
    vals = [w + float(final[s]) for s, w in cur.items() if float(final[s]) > NEG]
    return float(torch.logsumexp(torch.tensor(vals, dtype=torch.float64), 0)) if vals else NEG


def fsa_weight(f: Fsa, x) -> float:
    return seq_weight(f.num_states, f.src, f.dst, f.label, f.score.double(), f.start, f.final.double(), x)


def collapse(x) -> list[int]:
    out, prev = [], 0
    for lab in x:
        if lab != 0 and lab != prev:
            out.append(lab)
        prev = lab
    return out


def allpaths_bigram(lm: NgramLM, y: list[str]) -> float:
    """Weight of token sequence y under a bigram ARPA read as a graph whose back-off arcs are plain
    epsilons (k2/icefall semantics): listed bigram and back-off path both count."""

    def step(h: str, w: str) -> float:
        p = 10 ** lm.logprob[1].get((h, w), -math.inf)
        return p + 10 ** lm.backoff[0].get((h,), 0.0) * 10 ** lm.logprob[0][(w,)]

    total, h = 0.0, BOS
    for w in y + [EOS]:
        total += math.log(step(h, w))
        h = w
    return total


# ---------------------------------------------------------------------------- Fsa
def small_fsa() -> Fsa:
    return Fsa(
        torch.tensor([0, 0, 1, 1, 2]),
        torch.tensor([1, 2, 1, 2, 0]),
        torch.tensor([1, 0, 2, 1, 0]),
        torch.tensor([-0.5, -1.0, -0.25, -2.0, -0.1]),
        0,
        torch.tensor([NEG, -0.3, 0.0]),
    )


def test_fsa_save_load_str_device(tmp_path) -> None:
    f = small_fsa()
    f.save(tmp_path / "g.pt")
    d = torch.load(tmp_path / "g.pt", weights_only=True)
    assert set(d) >= {"src", "dst", "label", "score", "start", "final"}
    g = Fsa.load(tmp_path / "g.pt")
    for k in ("src", "dst", "label", "score", "final"):
        assert torch.equal(getattr(f, k), getattr(g, k))
    assert g.start == 0 and g.to("cpu") is g
    text = f.to_str()
    assert text.splitlines()[0] == "start 0" and "0 1 1 -0.5" in text and "2 0" in text
    assert "1 -0.3" in text.splitlines()[-2]
    with pytest.raises(FileNotFoundError):
        Fsa.load(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_text("not a graph")
    with pytest.raises(ValueError, match="bad.pt"):
        Fsa.load(tmp_path / "bad.pt")


def test_fsa_validation() -> None:
    with pytest.raises(ValueError, match="start state 5"):
        Fsa(torch.tensor([0]), torch.tensor([0]), torch.tensor([1]), torch.tensor([0.0]), 5, torch.zeros(1))
    with pytest.raises(ValueError, match="dst"):
        Fsa(torch.tensor([0]), torch.tensor([3]), torch.tensor([1]), torch.tensor([0.0]), 0, torch.zeros(2))
    with pytest.raises(ValueError, match="epsilon"):
        Fsa(torch.tensor([0]), torch.tensor([0]), torch.tensor([-1]), torch.tensor([0.0]), 0, torch.zeros(1))
    with pytest.raises(ValueError, match="NaN"):
        Fsa(torch.tensor([0]), torch.tensor([0]), torch.tensor([1]), torch.tensor([math.nan]), 0, torch.zeros(1))


def test_kaldifst_round_trip_and_label_shift() -> None:
    import kaldifst

    f = small_fsa()
    fst = f.to_kaldifst()
    arcs = [(a.ilabel, a.olabel) for s in range(fst.num_states) for a in kaldifst.ArcIterator(fst, s)]
    assert sorted(arcs) == sorted((la + 1, la + 1) for la in f.label.tolist())  # blank 0 -> label 1
    g = Fsa.from_kaldifst(fst)
    for x in itertools.product(range(3), repeat=3):
        assert fsa_weight(g, x) == pytest.approx(fsa_weight(f, x), abs=1e-6)
    fst.add_arc(state=0, arc=kaldifst.StdArc(0, 0, 0.5, 2))  # an epsilon arc
    with pytest.raises(ValueError, match="epsilon"):
        Fsa.from_kaldifst(fst)


# ---------------------------------------------------------------------------- epsilon removal
@pytest.mark.parametrize("seed", range(6))
def test_remove_epsilon_preserves_summed_weights(seed: int) -> None:
    rng = random.Random(seed)
    n = 6
    src, dst, lab, sc = [], [], [], []
    for _ in range(14):
        s, d = rng.randrange(n), rng.randrange(n)
        src.append(s), dst.append(d), lab.append(rng.randrange(3)), sc.append(rng.uniform(-2, 0.5))
    for _ in range(6):  # epsilons only go to higher states: acyclic, several eps paths per pair
        s = rng.randrange(n - 1)
        d = rng.randrange(s + 1, n)
        src.append(s), dst.append(d), lab.append(-1), sc.append(rng.uniform(-2, 0.5))
    src.append(1), dst.append(2), lab.append(-1), sc.append(-0.7)  # a parallel epsilon
    src.append(1), dst.append(2), lab.append(-1), sc.append(-1.3)
    final = torch.tensor([rng.uniform(-1, 0) if rng.random() < 0.6 else NEG for _ in range(n)], dtype=torch.float64)
    final[n - 1] = -0.2
    t = (torch.tensor(src), torch.tensor(dst), torch.tensor(lab), torch.tensor(sc, dtype=torch.float64))
    out = remove_epsilon(n, *t, 0, final)
    assert int(out.label.min()) >= 0
    for length in range(4):
        for x in itertools.product(range(3), repeat=length):
            ref = seq_weight(n, *t, 0, final, x)
            got = fsa_weight(out, x)
            assert (ref == got == NEG) or got == pytest.approx(ref, abs=1e-9), x


def test_remove_epsilon_rejects_cycles() -> None:
    with pytest.raises(ValueError, match="epsilon cycle"):
        remove_epsilon(
            2,
            torch.tensor([0, 1]),
            torch.tensor([1, 0]),
            torch.tensor([-1, -1]),
            torch.zeros(2, dtype=torch.float64),
            0,
            torch.zeros(2, dtype=torch.float64),
        )


# ---------------------------------------------------------------------------- CTC topology
def test_ctc_topo_fst_maps_frames_to_collapse() -> None:
    import kaldifst

    v = 3
    fst = ctc_topo_fst(v)
    acc = ctc_topo(v)
    for length in range(1, 4):
        for x in itertools.product(range(v), repeat=length):
            s, outs = fst.start, []
            for sym in x:  # deterministic on the input side
                (arc,) = [a for a in kaldifst.ArcIterator(fst, s) if a.ilabel == sym + 1]
                if arc.olabel:
                    outs.append(arc.olabel - 1)
                s = arc.nextstate
            assert outs == collapse(x)
            assert fsa_weight(acc, x) == 0.0


# ---------------------------------------------------------------------------- n-gram LM
SENTS = [["a", "b", "c"], ["a", "b"], ["b", "c", "c", "a"], ["c"], ["a", "a", "b", "c"], ["b"]] * 3 + [["d", "a"]]


@pytest.mark.parametrize("smoothing", ["kneser_ney", "witten_bell"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("min_count", [1, 3])
def test_ngram_normalises_and_round_trips(tmp_path, smoothing: str, order: int, min_count: int) -> None:
    vocab = ["a", "b", "c", "d", "e"]  # 'e' unseen: still gets probability
    lm = estimate_ngram(SENTS, order, vocab, smoothing, min_count)
    lm.write_arpa(tmp_path / "lm.arpa")
    back = NgramLM.read_arpa(tmp_path / "lm.arpa")
    for h in back.histories():
        total = sum(10 ** back.log10prob(w, h) for w in vocab + [EOS])
        assert total == pytest.approx(1.0, abs=1e-4), h
    assert back.log10prob("e", ("a",)) > -math.inf
    assert back.log10prob(BOS) == -99.0
    if order >= 2 and min_count == 1:
        # listed bigrams beat unseen ones after the same history
        assert back.log10prob("b", ("a",)) > back.log10prob("d", ("a",))


def test_ngram_words_and_errors(tmp_path) -> None:
    words = [["THE", "CAT", "SAT"], ["THE", "DOG", "SAT"], ["A", "CAT", "RAN"]]
    lm = estimate_ngram(words, 3)
    assert "CAT" in lm.vocab and EOS in lm.vocab
    with pytest.raises(ValueError, match="not in the vocabulary"):
        estimate_ngram(words, 2, vocab=["THE"])
    with pytest.raises(ValueError, match="reserved"):
        estimate_ngram([["a", EOS]], 2)
    (tmp_path / "bad.arpa").write_text("\\data\\\nngram 1=2\n\n\\1-grams:\n-1.0 a\n\\end\\\n")
    with pytest.raises(ValueError, match="header says 2"):
        NgramLM.read_arpa(tmp_path / "bad.arpa")


# ---------------------------------------------------------------------------- den graph
TOKENS = ["<blk>", "a", "b", "c", "<unk>"]
SEQS = [[1, 2, 3], [1, 2], [2, 3, 3, 1], [3], [1, 1, 2, 3], [2]] * 3


def test_kaldilm_p_matches_our_arpa(tmp_path) -> None:
    lm = build_den_graph.__globals__["train_token_lm"](SEQS, TOKENS, 2)
    lm.write_arpa(tmp_path / "P.arpa")
    n, src, dst, lab, score, start, final = load_token_lm_arrays(tmp_path / "P.arpa", TOKENS, 2)
    # P as read by kaldilm gives every token sequence the all-paths weight computed from the ARPA
    for length in range(4):
        for y in itertools.product(range(1, 5), repeat=length):
            got = seq_weight(n, src, dst, lab, score, start, final, list(y))
            ref = allpaths_bigram(lm, [TOKENS[i] for i in y])
            assert got == pytest.approx(ref, abs=1e-5), y


@pytest.mark.parametrize("order", [2, 3])
def test_den_graph_routes_agree_and_match_p(tmp_path, order: int) -> None:
    g1 = build_den_graph(TOKENS, SEQS, tmp_path / "P.arpa", order=order, method="kaldifst")
    g2 = den_graph_from_arpa(tmp_path / "P.arpa", TOKENS, order, method="direct")
    assert int(g1.label.max()) == 4 and g1.num_arcs == g2.num_arcs and g1.num_states == g2.num_states
    n, src, dst, lab, score, start, final = load_token_lm_arrays(tmp_path / "P.arpa", TOKENS, order)
    for length in range(4):
        for x in itertools.product(range(5), repeat=length):
            w1, w2 = fsa_weight(g1, x), fsa_weight(g2, x)
            # den weight of a frame sequence = all-paths weight of its collapse under P (with epsilons)
            ref = seq_weight(n, src, dst, lab, score, start, final, collapse(x))
            assert w1 == pytest.approx(ref, abs=1e-5) and w2 == pytest.approx(ref, abs=1e-5), x
    # the graph accepts every training transcript
    for seq in SEQS:
        frames = []
        for i, t in enumerate(seq):
            if i and seq[i - 1] == t:
                frames.append(0)
            frames.append(t)
        scores = torch.zeros(1, len(frames), 5, dtype=torch.float64)
        loss = LFMMILoss(g1)(scores, torch.tensor([len(frames)]), [seq])
        assert torch.isfinite(loss).all() and loss.item() >= 0


def test_read_lang_files_errors(tmp_path) -> None:
    (tmp_path / "tokens.txt").write_text("<blk> 0\na 1\nb 3\n")
    with pytest.raises(ValueError, match="without gaps"):
        read_tokens(tmp_path / "tokens.txt")
    (tmp_path / "tokens.txt").write_text("<blk> 0\na 1\na 2\n")
    with pytest.raises(ValueError, match="appears twice"):
        read_tokens(tmp_path / "tokens.txt")
    (tmp_path / "tokens.txt").write_text("<blk> 0\n<s> 1\n")
    with pytest.raises(ValueError, match="reserved"):
        read_tokens(tmp_path / "tokens.txt")
    (tmp_path / "ids.txt").write_text("1 2\n\n3 0\n")
    with pytest.raises(ValueError, match=r"ids.txt:3: token id 0 is outside 1..3"):
        read_token_ids(tmp_path / "ids.txt", 4)
    (tmp_path / "ids.txt").write_text("1 2\n\n3 x\n")
    with pytest.raises(ValueError, match="ids.txt:3"):
        read_token_ids(tmp_path / "ids.txt", 4)
    (tmp_path / "ids.txt").write_text("1 2\n\n3\n")
    assert read_token_ids(tmp_path / "ids.txt", 4) == ([[1, 2], [3]], 1)


def test_build_den_graph_cli(tmp_path, capsys) -> None:
    from distill.bin.build_den_graph import main

    lang = tmp_path / "lang"
    lang.mkdir()
    (lang / "tokens.txt").write_text("".join(f"{t} {i}\n" for i, t in enumerate(TOKENS)))
    (lang / "train_token_ids.txt").write_text("".join(" ".join(map(str, s)) + "\n" for s in SEQS) + "\n")
    main([f"lang_dir={lang}"])
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("den graph:") and "V = 5" in out[0]
    den = Fsa.load(lang / "den.pt")
    assert f"{den.num_states} states, {den.num_arcs} arcs" in out[0]
    assert NgramLM.read_arpa(lang / "P.arpa").order == 2
    (lang / "train_token_ids.txt").write_text("1 2 7\n")
    with pytest.raises(SystemExit, match="outside 1..4"):
        main([f"lang_dir={lang}"])
    with pytest.raises(SystemExit):
        main([f"lang_dir={tmp_path / 'nope'}"])


def test_malformed_arpa_raises_instead_of_aborting(tmp_path) -> None:
    """kaldilm aborts its process on a malformed ARPA file; we run it in a child and raise ValueError."""
    from distill.graph.den import load_token_lm_arrays

    bad = tmp_path / "bad.arpa"
    bad.write_text("\\data\\\nngram 1=3\n\n\\1-grams:\n-0.5 a\nnot a number here\n\\end\\\n")
    with pytest.raises(ValueError, match="kaldilm could not convert the ARPA file"):
        load_token_lm_arrays(bad, ["<blk>", "a", "b"])
