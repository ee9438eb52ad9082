"""Decoding tests: greedy vs a NumPy reference, WFST one-best vs brute-force Viterbi, HLG decoding of
spelled word sequences, the LM's effect, streaming = non-streaming, options and error handling."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.data.tokenizer import build_char_tokenizer, write_lang_files
from distill.decode.graph import (
    GraphError,
    GraphInfo,
    add_disambig,
    build_hlg,
    build_token_graph,
    load_graph,
    read_lexicon,
    read_symbol_table,
    save_graph,
)
from distill.decode.greedy import GreedyStream, collapse, ctc_greedy
from distill.decode.streaming import stream_decode, summarize_latencies
from distill.decode.wfst import WfstDecoder, WfstOptions
from distill.graph.den import load_token_lm_arrays, train_token_lm
from distill.graph.ngram import estimate_ngram

TEXTS = ["THE CAT SAT", "THE CAT ATE", "A CAT AT THE MAT", "THE DOG SAT ON THE MAT", "A DOG ATE", "THE CAT"]


# ------------------------------------------------------------------------------------------------ helpers
def numpy_greedy(scores: np.ndarray, length: int) -> list[int]:
    best = scores[:length].argmax(-1)
    return [int(k) for k, _ in itertools.groupby(best.tolist()) if k != 0]


def make_lang(tmp: Path, texts=TEXTS, g_order: int = 2, g_texts=None):
    tok = build_char_tokenizer(texts)
    lang = tmp / "lang"
    write_lang_files(lang, tok, {w for t in texts for w in t.split()})
    (lang / "train_text.txt").write_text("".join(t + "\n" for t in texts))
    p = train_token_lm([tok.encode(t) for t in texts], tok.pieces, 2)
    p.write_arpa(lang / "P.arpa")
    words = read_symbol_table(lang / "words.txt")
    vocab = [w for w in words if w not in ("<eps>", "#0", "<s>", "</s>")]
    g = estimate_ngram([t.split() for t in (g_texts or texts)], order=g_order, vocab=vocab)
    g.write_arpa(lang / "G.arpa")
    return tok, lang, words


def spell(tok, text: str, rep: int = 2, p: float = 0.9, seed: int = 0) -> np.ndarray:
    """Log-posteriors whose best frame labels are each token ``rep`` times then a blank."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in tok.encode(text):
        frames += [i] * rep + [0]
    v = tok.vocab_size
    m = rng.uniform(0.5, 1.5, size=(len(frames), v))
    for t, lab in enumerate(frames):
        m[t] *= (1 - p) / (m[t].sum() - m[t, lab])
        m[t, lab] = p
    return np.log(m).astype(np.float32)


def p_fst_cost(arrays, tokens: list[int]) -> float:
    """Tropical cost of the best path of the token LM P (arrays from load_token_lm_arrays, label -1 =
    back-off epsilon) that reads ``tokens`` and ends in a final state. Independent of kaldi-decoder."""
    n, src, dst, lab, score, start, final = arrays
    arcs = list(zip(src.tolist(), dst.tolist(), lab.tolist(), (-score).tolist()))

    def closure(cost: dict[int, float]) -> dict[int, float]:
        cost = dict(cost)
        changed = True
        while changed:
            changed = False
            for s, d, la, c in arcs:
                if la == -1 and s in cost and cost[s] + c < cost.get(d, math.inf) - 1e-12:
                    cost[d] = cost[s] + c
                    changed = True
        return cost

    cur = closure({start: 0.0})
    for tok in tokens:
        nxt: dict[int, float] = {}
        for s, d, la, c in arcs:
            if la == tok and s in cur and cur[s] + c < nxt.get(d, math.inf):
                nxt[d] = cur[s] + c
        cur = closure(nxt)
    fin = final.tolist()
    return min((c - fin[s] for s, c in cur.items() if fin[s] != -math.inf), default=math.inf)


# ------------------------------------------------------------------------------------------------ greedy
def test_greedy_matches_numpy_reference():
    rng = np.random.default_rng(0)
    b, t, v = 6, 40, 5
    # few classes and sticky frames so repeats and blanks between repeats both occur
    scores = torch.from_numpy(rng.standard_normal((b, t, v)).astype(np.float32))
    scores[:, 1::3] = scores[:, 0::3][:, : scores[:, 1::3].shape[1]]
    lengths = torch.tensor([40, 33, 1, 0, 17, 40])
    got = ctc_greedy(scores.log_softmax(-1), lengths)
    for i in range(b):
        assert got[i] == numpy_greedy(scores[i].numpy(), int(lengths[i]))
    assert got[3] == []
    assert ctc_greedy(scores) == [numpy_greedy(scores[i].numpy(), t) for i in range(b)]


def test_collapse_and_greedy_stream_equal_full():
    assert collapse([0, 3, 3, 0, 3, 4, 4, 0]) == [3, 3, 4]
    assert collapse([3, 3, 4], prev=3) == [4]
    rng = np.random.default_rng(1)
    scores = torch.from_numpy(rng.standard_normal((97, 4)).astype(np.float32))
    scores[1::2] = scores[0:-1:2]  # long runs: repeats straddle chunk boundaries
    full = ctc_greedy(scores[None])[0]
    for chunk in (1, 2, 5, 24, 200):
        gs = GreedyStream()
        for i in range(0, 97, chunk):
            gs.accept(scores[i : i + chunk])
        assert gs.tokens == full, chunk
        best = scores.argmax(-1).tolist()
        # each token's frame is the first frame of its run
        assert all(best[f] == k and (f == 0 or best[f - 1] != k) for f, k in zip(gs.token_frames, gs.tokens))


def test_greedy_bad_input():
    with pytest.raises(ValueError, match=r"\[B, T, V\]"):
        ctc_greedy(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="lengths"):
        ctc_greedy(torch.zeros(2, 4, 3), torch.tensor([5, 1]))


# ------------------------------------------------------------------------------------------------ WFST
@pytest.fixture(scope="module")
def small_token_graph(tmp_path_factory):
    """Tokens blank, a, b, c and a bigram P with back-off (some bigrams unseen)."""
    tmp = tmp_path_factory.mktemp("tokgraph")
    tokens = ["<blk>", "a", "b", "c"]
    p = train_token_lm([[1, 2], [1, 2, 2], [2, 3], [1]], tokens, 2)
    p.write_arpa(tmp / "P.arpa")
    hp = build_token_graph(tokens, tmp / "P.arpa")
    arrays = load_token_lm_arrays(tmp / "P.arpa", tokens)
    save_graph(hp, tmp / "HP.fst", GraphInfo(kind="token", num_tokens=4))
    return tmp / "HP.fst", arrays


def brute_force(scores: np.ndarray, arrays, scale: float = 1.0):
    t, v = scores.shape
    best = (math.inf, None)
    for seq in itertools.product(range(v), repeat=t):
        c = p_fst_cost(arrays, collapse(seq)) - scale * float(sum(scores[i, k] for i, k in enumerate(seq)))
        if c < best[0]:
            best = (c, list(seq))
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_token_graph_viterbi_equals_brute_force(small_token_graph, seed):
    path, arrays = small_token_graph
    rng = np.random.default_rng(seed)
    scores = torch.log_softmax(torch.from_numpy(rng.standard_normal((5, 4)) * 2), -1).numpy().astype(np.float32)
    dec = WfstDecoder(path, WfstOptions(beam=1000, max_active=100000))
    r = dec.decode(scores)
    cost, seq = brute_force(scores.astype(np.float64), arrays)
    assert r.ok and r.reached_final
    assert r.frame_labels == seq
    assert r.symbols == collapse(seq)
    assert r.cost == pytest.approx(cost, abs=1e-3)
    # the acoustic scale enters the path cost as graph - scale * acoustic
    r2 = WfstDecoder(path, WfstOptions(beam=1000, max_active=100000, acoustic_scale=0.3)).decode(scores)
    cost2, seq2 = brute_force(scores.astype(np.float64), arrays, scale=0.3)
    assert r2.frame_labels == seq2 and r2.cost == pytest.approx(cost2, abs=1e-3)


def test_beam_and_max_active_take_effect(small_token_graph):
    path, arrays = small_token_graph
    wide = WfstDecoder(path, WfstOptions(beam=1000, max_active=100000))
    narrow = WfstDecoder(path, WfstOptions(beam=0.01, max_active=2, min_active=0))
    worse = 0
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        s = torch.log_softmax(torch.from_numpy(rng.standard_normal((6, 4))), -1).numpy().astype(np.float32)
        a, b = wide.decode(s), narrow.decode(s)
        assert b.cost >= a.cost - 1e-4
        worse += b.cost > a.cost + 1e-4
    assert worse > 0


def test_acoustic_scale_moves_towards_the_lm(small_token_graph):
    path, arrays = small_token_graph
    # acoustics favour "c" alone, which P finds unlikely (c only follows b in training)
    s = np.log(np.array([[0.02, 0.05, 0.03, 0.9]] * 3 + [[0.9, 0.04, 0.03, 0.03]], dtype=np.float32))
    hi = WfstDecoder(path, WfstOptions(beam=1000, acoustic_scale=1.0)).decode(s)
    lo = WfstDecoder(path, WfstOptions(beam=1000, acoustic_scale=0.01)).decode(s)
    assert hi.symbols == [3]
    assert lo.symbols != [3]
    assert p_fst_cost(arrays, lo.symbols) < p_fst_cost(arrays, hi.symbols)


def test_graph_errors(tmp_path, small_token_graph):
    path, _ = small_token_graph
    with pytest.raises(GraphError, match="does not exist"):
        WfstDecoder(tmp_path / "missing.fst")
    dec = WfstDecoder(path)
    with pytest.raises(ValueError, match="V=6 .* built for 4 tokens"):
        dec.decode(np.zeros((3, 6), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        dec.decode(np.full((3, 4), np.nan, np.float32))
    bad = tmp_path / "bad.fst"
    bad.write_bytes(b"not an fst")
    with pytest.raises(GraphError, match="bad.fst"):
        WfstDecoder(bad)
    (tmp_path / "bad.arpa").write_text("\\data\\\nngram 1=x\n")
    with pytest.raises(GraphError, match="bad.arpa"):
        build_token_graph(["<blk>", "a"], tmp_path / "bad.arpa")
    with pytest.raises(ValueError, match="beam"):
        WfstOptions(beam=0)


# ------------------------------------------------------------------------------------------------ HLG
def test_add_disambig_marks_prefixes_and_homophones():
    lex = [("A", ["x"]), ("AB", ["x", "y"]), ("B", ["y"]), ("BB", ["y"]), ("C", ["z"])]
    out, k = add_disambig(lex)
    assert dict(out) == {"A": ["x", "#1"], "AB": ["x", "y"], "B": ["y", "#1"], "BB": ["y", "#2"], "C": ["z"]}
    assert k == 2


@pytest.fixture(scope="module")
def hlg(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hlg")
    tok, lang, words = make_lang(tmp)
    g = build_hlg(tok.pieces, words, read_lexicon(lang / "lexicon.txt"), lang / "G.arpa", lang / "words.txt")
    save_graph(g, lang / "HLG.fst", GraphInfo(kind="word", num_tokens=tok.vocab_size, words="words.txt"))
    return tok, lang


@pytest.mark.parametrize("text", ["THE CAT SAT", "A CAT AT THE MAT", "THE DOG ATE", "AT A MAT", "CAT"])
def test_hlg_decodes_spelled_words(hlg, text):
    tok, lang = hlg
    dec = WfstDecoder(lang / "HLG.fst")
    r = dec.decode(spell(tok, text))
    assert r.reached_final
    assert dec.symbols_to_words(r.symbols) == text.split()
    # the best path reads exactly the spelled frames
    assert collapse(r.frame_labels) == tok.encode(text)


def test_token_graph_decodes_spelled_tokens(hlg):
    tok, lang = hlg
    hp = build_token_graph(tok.pieces, lang / "P.arpa")
    save_graph(hp, lang / "HP.fst", GraphInfo(kind="token", num_tokens=tok.vocab_size))
    r = WfstDecoder(lang / "HP.fst").decode(spell(tok, "THE DOG SAT ON A MAT"))
    assert tok.decode(r.symbols) == "THE DOG SAT ON A MAT"


def ambiguous(tok, seed=0):
    """'THE C?T': the middle letter is A or O with equal posterior."""
    m = spell(tok, "THE CAT", seed=seed)
    a, o = tok.piece_to_id("A"), tok.piece_to_id("O")
    rows = np.where(m.argmax(-1) == a)[0]
    for t in rows:
        m[t, a] = m[t, o] = np.log(0.45)
    return m


def test_lm_breaks_acoustic_ties_in_its_direction(tmp_path):
    texts = TEXTS + ["THE COT", "A COT"]
    got = {}
    for name, g_texts in (("cat", TEXTS * 5 + ["A COT"]), ("cot", ["THE COT"] * 10 + texts)):
        tok, lang, words = make_lang(tmp_path / name, texts=texts, g_texts=g_texts)
        g = build_hlg(tok.pieces, words, read_lexicon(lang / "lexicon.txt"), lang / "G.arpa", lang / "words.txt")
        save_graph(g, lang / "HLG.fst", GraphInfo(kind="word", num_tokens=tok.vocab_size, words="words.txt"))
        dec = WfstDecoder(lang / "HLG.fst")
        got[name] = dec.symbols_to_words(dec.decode(ambiguous(tok)).symbols)
    assert got == {"cat": ["THE", "CAT"], "cot": ["THE", "COT"]}


def test_parallel_decoding_equals_serial(hlg):
    tok, lang = hlg
    mats = [spell(tok, t, seed=i) for i, t in enumerate(TEXTS)]
    with WfstDecoder(lang / "HLG.fst") as dec:
        serial = dec.decode_many(mats, nj=1)
        par = dec.decode_many(mats, nj=2)
        assert [r.symbols for r in par] == [r.symbols for r in serial]
        assert [dec.symbols_to_words(r.symbols) for r in par] == [t.split() for t in TEXTS]
        # batched input with padding and lengths
        t_max = max(len(m) for m in mats)
        batch = np.full((len(mats), t_max, tok.vocab_size), -30.0, np.float32)
        for i, m in enumerate(mats):
            batch[i, : len(m)] = m
        res = dec.decode_batch(torch.from_numpy(batch), torch.tensor([len(m) for m in mats]), nj=2)
        assert [r.symbols for r in res] == [r.symbols for r in serial]


# ------------------------------------------------------------------------------------------------ streaming
class FakeRecognizer:
    """Serves precomputed scores: frame f is ready once 320 f + 400 samples arrived and its 24-frame
    chunk is complete (the rest at finalize), like StreamingRecognizer."""

    def __init__(self, scores: np.ndarray, chunk: int = 24) -> None:
        self.scores, self.chunk = torch.from_numpy(scores), chunk
        self.reset()

    def reset(self) -> None:
        self.samples = 0
        self.done = 0

    def accept_waveform(self, x) -> torch.Tensor:
        self.samples += len(x)
        ready = max(0, (self.samples - 400) // 320 + 1)
        end = min(len(self.scores), (ready // self.chunk) * self.chunk)
        out = self.scores[self.done : end]
        self.done = max(self.done, end)
        return out

    def finalize(self) -> torch.Tensor:
        out = self.scores[self.done :]
        self.done = len(self.scores)
        return out


def test_stream_decode_greedy_equals_offline_and_latency_is_sane():
    rng = np.random.default_rng(3)
    t = 120
    scores = torch.log_softmax(torch.from_numpy(rng.standard_normal((t, 6)) * 3), -1).numpy().astype(np.float32)
    samples = np.zeros(320 * (t - 1) + 400, np.float32)
    rec = FakeRecognizer(scores)
    r = stream_decode(rec, samples, "greedy", piece_ms=40, frame_timing=(0.02, 0.025))
    assert r.symbols == ctc_greedy(torch.from_numpy(scores)[None])[0]
    assert len(r.emit_times) == len(r.symbols) > 2
    # a token is emitted once its whole 480 ms chunk has arrived, never before it was spoken
    for f, e, lat in zip(r.symbol_frames, r.emit_times, r.latencies):
        chunk_end_audio = (((f // 24) + 1) * 24 - 1) * 0.02 + 0.025
        assert e >= min(chunk_end_audio, len(samples) / 16000) - 1e-9
        assert 0 <= lat < 0.48 + 0.04 + 0.5  # chunk + piece + generous compute allowance
    assert r.first_token_latency == r.latencies[0] and r.last_token_latency == r.latencies[-1]
    s = summarize_latencies([r, r])
    assert s["num_utts"] == 2 and s["first_token_ms"]["mean"] == pytest.approx(1000 * r.first_token_latency)


def test_stream_decode_wfst_equals_offline(hlg):
    tok, lang = hlg
    dec = WfstDecoder(lang / "HLG.fst")
    m = spell(tok, "A DOG SAT ON THE MAT", rep=3)
    offline = dec.decode(m)
    samples = np.zeros(320 * (len(m) - 1) + 400, np.float32)
    for chunk in (4, 24):
        r = stream_decode(FakeRecognizer(m, chunk=chunk), samples, dec, piece_ms=40, frame_timing=(0.02, 0.025))
        assert r.symbols == offline.symbols
        assert r.symbol_frames == offline.symbol_frames
        assert all(e >= s - 1e-9 for e, s in zip(r.emit_times, r.spoken_times))
        assert r.emit_times == sorted(r.emit_times)


def test_wfst_stream_partial_results_grow(hlg):
    tok, lang = hlg
    dec = WfstDecoder(lang / "HLG.fst")
    m = spell(tok, "THE CAT SAT ON THE MAT")
    st = dec.stream()
    for i in range(0, len(m), 10):
        st.accept(m[i : i + 10])
        assert st.frames == min(len(m), i + 10)
    assert dec.symbols_to_words(st.finalize().symbols) == "THE CAT SAT ON THE MAT".split()
    with pytest.raises(ValueError, match="built for"):
        st.accept(np.zeros((2, tok.vocab_size + 1), np.float32))


def test_load_graph_without_sidecar_scans_labels(small_token_graph, tmp_path):
    path, _ = small_token_graph
    fst, _ = load_graph(path)
    fst.write(str(tmp_path / "x.fst"))
    _, info = load_graph(tmp_path / "x.fst")
    assert info.kind == "token" and info.num_tokens == 4


# ------------------------------------------------------------------------------------------------ CLI
def test_build_decode_graph_with_user_arpa_extends_lexicon(tmp_path, capsys):
    from distill.bin import build_decode_graph

    tok, lang, words = make_lang(tmp_path)
    # a user LM with words the lang dir has never seen: DOT is spellable with its tokens, MUZZLE is not
    vocab = [w for w in words if w not in ("<eps>", "#0", "<s>", "</s>")] + ["DOT", "MUZZLE"]
    estimate_ngram([t.split() for t in TEXTS] + [["THE", "DOT"], ["A", "MUZZLE"]], order=3, vocab=vocab).write_arpa(
        tmp_path / "user.arpa"
    )
    out = tmp_path / "lang_test"
    rc = build_decode_graph.main([f"lang_dir={lang}", f"out_dir={out}", f"lm_arpa={tmp_path / 'user.arpa'}"])
    assert rc == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"built {out / 'HLG.fst'}") and "(+1 from the LM)" in line and "HP.fst" in line
    summary = json.loads((out / "graph_summary.json").read_text())
    assert summary["words_added_from_lm"] == 1 and summary["lm_words_unspellable"] == 1
    assert "DOT ▁ D O T" in (out / "lexicon.txt").read_text()
    dec = WfstDecoder(out / "HLG.fst")
    assert dec.symbols_to_words(dec.decode(spell(tok, "THE DOT")).symbols) == ["THE", "DOT"]
    assert WfstDecoder(out / "HP.fst").info.kind == "token"
    # a missing ARPA file is a configuration error (exit 2) naming the key and the path
    with pytest.raises(SystemExit) as e:
        build_decode_graph.main([f"lang_dir={lang}", f"out_dir={out}", f"lm_arpa={tmp_path / 'none.arpa'}"])
    assert e.value.code == 2
    assert "lm_arpa" in capsys.readouterr().err


def test_bpe_greedy_text_and_hlg_with_prefix_pronunciations(tmp_path):
    from distill.data.tokenizer import train_bpe

    texts = TEXTS * 3 + ["THEY SAT AT THE THEATRE", "THEY ATE AT THE CATS MAT"]
    (tmp_path / "text.txt").write_text("".join(t + "\n" for t in texts))
    tok = train_bpe(tmp_path / "text.txt", tmp_path / "lang", 26)
    lang = tmp_path / "lang"
    write_lang_files(lang, tok, {w for t in texts for w in t.split()})
    lex = read_lexicon(lang / "lexicon.txt")
    _, k = add_disambig(lex)
    assert k >= 1  # some pronunciation is a prefix of another one (e.g. THE / THEY)
    words = read_symbol_table(lang / "words.txt")
    vocab = [w for w in words if w not in ("<eps>", "#0", "<s>", "</s>")]
    estimate_ngram([t.split() for t in texts], order=3, vocab=vocab).write_arpa(lang / "G.arpa")
    g = build_hlg(tok.pieces, words, lex, lang / "G.arpa", lang / "words.txt")
    save_graph(g, lang / "HLG.fst", GraphInfo(kind="word", num_tokens=tok.vocab_size, words="words.txt"))
    dec = WfstDecoder(lang / "HLG.fst")
    for text in ("THEY SAT AT THE THEATRE", "THE CATS MAT", "THE CAT ATE"):
        m = spell(tok, text)
        assert tok.decode(ctc_greedy(torch.from_numpy(m)[None])[0]) == text
        assert dec.symbols_to_words(dec.decode(m).symbols) == text.split()
