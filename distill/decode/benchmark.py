"""Decoding speed on a synthetic setup (no data or model needed).

    python -m distill.decode.benchmark [--vocab 500] [--sentences 3000] [--words 3000] [--utts 20]
                                        [--seconds 10] [--lm-order 3] [--beam 16] [--max-active 7000]

A Zipf-distributed vocabulary of random letter strings, sentences drawn from a word bigram chain, a
sentencepiece BPE model of ``--vocab`` pieces trained on them, P (token bigram) and a word n-gram LM
estimated on them, HP.fst and HLG.fst built as in ``build_decode_graph``. Test "posteriors" spell
held-out sentences from the same chain with random durations and confusions (peak probability 0.5-0.95).
Reports graph sizes and build times, and the real-time factor of greedy and WFST decoding on one CPU
thread, as process CPU time / audio duration (wall time is printed too; it is inflated on a busy machine).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from distill.data.tokenizer import train_bpe, write_lang_files
from distill.decode.graph import GraphInfo, build_hlg, build_token_graph, read_lexicon, read_symbol_table, save_graph
from distill.decode.greedy import ctc_greedy
from distill.decode.wfst import WfstDecoder, WfstOptions
from distill.graph.den import train_token_lm
from distill.graph.ngram import estimate_ngram
from distill.scoring import wer


def _corpus(rng: np.random.Generator, n_words: int, n_sent: int) -> tuple[list[str], list[list[str]]]:
    letters = np.array(list("ABCDEFGHIJKLMNOPRSTUWY"))
    vocab: list[str] = []
    seen = set()
    while len(vocab) < n_words:
        w = "".join(rng.choice(letters, size=int(rng.integers(2, 9))))
        if w not in seen:
            seen.add(w)
            vocab.append(w)
    zipf = 1.0 / np.arange(1, n_words + 1)
    # a sparse random bigram chain: each word prefers 20 successors
    succ = rng.integers(0, n_words, size=(n_words, 20))
    sents = []
    for _ in range(n_sent):
        w = int(rng.choice(n_words, p=zipf / zipf.sum()))
        s = [vocab[w]]
        for _ in range(int(rng.integers(4, 20))):
            w = (
                int(succ[w, rng.integers(0, 20)])
                if rng.random() < 0.8
                else int(rng.choice(n_words, p=zipf / zipf.sum()))
            )
            s.append(vocab[w])
        sents.append(s)
    return vocab, sents


def _posteriors(rng: np.random.Generator, ids: list[int], v: int, frames: int) -> np.ndarray:
    """[frames, V] log-posteriors whose peaks spell ``ids`` (blank between and around tokens)."""
    n = len(ids)
    dur = rng.dirichlet(np.ones(2 * n + 1)) * frames
    bounds = np.round(np.cumsum(dur)).astype(int)
    labels = np.zeros(frames, dtype=int)
    start = 0
    for k, end in enumerate(bounds):
        end = max(end, start + (1 if k % 2 else 0))
        labels[start : min(end, frames)] = ids[k // 2] if k % 2 else 0
        start = min(end, frames)
    logits = rng.standard_normal((frames, v)) * 1.5
    peak = rng.uniform(0.5, 0.95, size=frames)
    probs = np.exp(logits)
    probs /= probs.sum(-1, keepdims=True)
    probs *= (1 - peak)[:, None]
    probs[np.arange(frames), labels] += peak
    return np.log(probs).astype(np.float32)


def run(
    vocab_size: int = 500,
    n_sent: int = 3000,
    n_words: int = 3000,
    n_utts: int = 20,
    seconds: float = 10.0,
    lm_order: int = 3,
    beam: float = 16.0,
    max_active: int = 7000,
    seed: int = 0,
    work_dir: Path | None = None,
) -> dict:
    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    tmp = tempfile.TemporaryDirectory() if work_dir is None else None
    wd = Path(tmp.name) if tmp else Path(work_dir)  # type: ignore[arg-type]
    wd.mkdir(parents=True, exist_ok=True)
    words, sents = _corpus(rng, n_words, n_sent + n_utts)
    train, test = sents[:n_sent], sents[n_sent:]
    (wd / "text.txt").write_text("".join(" ".join(s) + "\n" for s in train))
    tok = train_bpe(wd / "text.txt", wd / "lang", vocab_size)
    used = {w for s in train for w in s}
    write_lang_files(wd / "lang", tok, used)
    res: dict = {
        "vocab_size": tok.vocab_size,
        "sentences": n_sent,
        "words": len(used),
        "lm_order": lm_order,
        "utts": n_utts,
        "seconds_per_utt": seconds,
        "beam": beam,
        "max_active": max_active,
    }
    train_token_lm([tok.encode(" ".join(s)) for s in train], tok.pieces, 2).write_arpa(wd / "P.arpa")
    table = read_symbol_table(wd / "lang" / "words.txt")
    lm_vocab = [w for w in table if w not in ("<eps>", "#0", "<s>", "</s>")]
    estimate_ngram(train, order=lm_order, vocab=lm_vocab).write_arpa(wd / "G.arpa")
    t0 = time.perf_counter()
    hp = build_token_graph(tok.pieces, wd / "P.arpa")
    res["hp_build_s"] = time.perf_counter() - t0
    info = save_graph(hp, wd / "HP.fst", GraphInfo(kind="token", num_tokens=tok.vocab_size))
    res["hp_states"], res["hp_arcs"] = info.num_states, info.num_arcs
    t0 = time.perf_counter()
    hlg = build_hlg(
        tok.pieces, table, read_lexicon(wd / "lang" / "lexicon.txt"), wd / "G.arpa", wd / "lang" / "words.txt"
    )
    res["hlg_build_s"] = time.perf_counter() - t0
    info = save_graph(
        hlg, wd / "HLG.fst", GraphInfo(kind="word", num_tokens=tok.vocab_size, words=str(wd / "lang" / "words.txt"))
    )
    res["hlg_states"], res["hlg_arcs"] = info.num_states, info.num_arcs
    res["hlg_mb"] = (wd / "HLG.fst").stat().st_size / 2**20

    frames = int(seconds * 50)
    test = [[w for w in s if w in used] or [next(iter(used))] for s in test]
    mats = [_posteriors(rng, tok.encode(" ".join(s))[: frames // 2], tok.vocab_size, frames) for s in test]
    audio = n_utts * seconds

    def timed(fn) -> tuple[float, float, object]:
        c0, w0 = time.process_time(), time.perf_counter()
        out = fn()
        return time.process_time() - c0, time.perf_counter() - w0, out

    batch = torch.from_numpy(np.stack(mats))
    c, w, _ = timed(lambda: ctc_greedy(batch))
    res["greedy_rtf_cpu"], res["greedy_rtf_wall"] = c / audio, w / audio
    opts = WfstOptions(beam=beam, max_active=max_active)
    for name in ("hp", "hlg"):
        dec = WfstDecoder(wd / f"{name.upper()}.fst", opts)
        c, w, out = timed(lambda dec=dec: [dec.decode(m) for m in mats])
        res[f"{name}_rtf_cpu"], res[f"{name}_rtf_wall"] = c / audio, w / audio
        if name == "hlg":
            hyps = [dec.symbols_to_words(r.symbols) for r in out]  # type: ignore[union-attr]
            refs = {str(i): " ".join(s) for i, s in enumerate(test)}
            res["hlg_wer_vs_spelled"] = wer(refs, {str(i): " ".join(h) for i, h in enumerate(hyps)})["wer"]
    greedy_text = {str(i): tok.decode(h) for i, h in enumerate(ctc_greedy(batch))}
    res["greedy_wer_vs_spelled"] = wer({str(i): " ".join(s) for i, s in enumerate(test)}, greedy_text)["wer"]
    if tmp:
        tmp.cleanup()
    return res


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m distill.decode.benchmark", description=__doc__.split("\n\n")[0])
    ap.add_argument("--vocab", type=int, default=500)
    ap.add_argument("--sentences", type=int, default=3000)
    ap.add_argument("--words", type=int, default=3000)
    ap.add_argument("--utts", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--lm-order", type=int, default=3)
    ap.add_argument("--beam", type=float, default=16.0)
    ap.add_argument("--max-active", type=int, default=7000)
    ap.add_argument("--work-dir")
    args = ap.parse_args(argv)
    res = run(
        args.vocab,
        args.sentences,
        args.words,
        args.utts,
        args.seconds,
        args.lm_order,
        args.beam,
        args.max_active,
        work_dir=Path(args.work_dir) if args.work_dir else None,
    )
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
