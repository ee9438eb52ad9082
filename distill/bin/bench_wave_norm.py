"""How far each streamable input scaling moves a trained model from per-utterance normalisation.

    python -m distill.bin.bench_wave_norm --model egs/inhouse/demo-teacher --wav-scp test/wav.scp \\
        [--gain-db 12] [--max-utts 300]

A teacher imported from an lv60-style checkpoint normalises each utterance (zero mean, unit variance
over the whole utterance), which a streaming student cannot do. This benchmark feeds one trained
model the same audio scaled per utterance (the reference, what the teacher sees) and scaled by each
causal candidate, and reports how far the candidate's outputs are from the reference's: mean
per-frame KL(P_ref || P_cand) of the output posteriors, the token error rate of the candidate's
greedy CTC tokens against the reference's greedy tokens, and the relative L2 error of the last hidden
layer. A student that learns to match the teacher on the reference input is off by about as much
when it is given the candidate input instead. ``--gain-db G`` applies a random gain in [-G, G] dB to
each utterance (recordings differ in level; the demo corpus barely does).

Candidates: ``fixed`` (the training set's pooled mean/std, what ``wave_norm: fixed`` does),
``fixed-median`` (the median of the per-utterance standard deviations), ``prefix-1s`` (mean/variance
of everything heard so far, in 20 ms blocks, with a 1 s prior at the pooled statistics),
``ema-1s`` / ``ema-3s`` (exponential moving averages per 20 ms block with that time constant, started
at the pooled statistics).
"""
from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

BLOCK = 320  # samples per 20 ms block of the running statistics


def utterance_norm(x: np.ndarray) -> np.ndarray:
    """HF's Wav2Vec2FeatureExtractor ``do_normalize`` (variance + 1e-7)."""
    return (x - x.mean()) / np.sqrt(x.var() + 1e-7)


def _block_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per 20 ms block: sum, sum of squares, count (the last block may be short)."""
    n = int(math.ceil(len(x) / BLOCK))
    pad = np.zeros(n * BLOCK)
    pad[: len(x)] = x
    cnt = np.full(n, float(BLOCK))
    cnt[-1] = len(x) - (n - 1) * BLOCK
    b = pad.reshape(n, BLOCK)
    return b.sum(1), (b ** 2).sum(1), cnt


def _apply_block_stats(x: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    m = np.repeat(mean, BLOCK)[: len(x)]
    v = np.repeat(var, BLOCK)[: len(x)]
    return (x - m) / np.sqrt(np.maximum(v, 1e-10))


def prefix_norm(x: np.ndarray, mu: float, var: float, prior_s: float = 1.0) -> np.ndarray:
    """Block b scaled by the statistics of blocks < b plus a prior of ``prior_s`` seconds at (mu, var)."""
    s, q, c = _block_stats(x)
    n0 = prior_s * 16000
    cs = np.concatenate([[0.0], np.cumsum(s)[:-1]]) + n0 * mu
    cq = np.concatenate([[0.0], np.cumsum(q)[:-1]]) + n0 * (var + mu * mu)
    cc = np.concatenate([[0.0], np.cumsum(c)[:-1]]) + n0
    mean = cs / cc
    return _apply_block_stats(x, mean, cq / cc - mean ** 2)


def ema_norm(x: np.ndarray, mu: float, var: float, tau_s: float) -> np.ndarray:
    """Block b scaled by exponential moving averages (time constant ``tau_s``) of blocks < b."""
    s, q, c = _block_stats(x)
    lam = BLOCK / (tau_s * 16000)
    m, p = mu, var + mu * mu
    means, powers = np.empty(len(s)), np.empty(len(s))
    for b in range(len(s)):
        means[b], powers[b] = m, p
        m = (1 - lam) * m + lam * s[b] / c[b]
        p = (1 - lam) * p + lam * q[b] / c[b]
    return _apply_block_stats(x, means, powers - means ** 2)


def candidates(waves: Sequence[np.ndarray]) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """The causal scalings, with statistics pooled over ``waves`` (the training data's role)."""
    allx = np.concatenate(waves)
    mu, var = float(allx.mean()), float(allx.var())
    med = statistics.median(float(w.std()) for w in waves)
    return {
        "fixed": lambda x: (x - mu) / math.sqrt(var),
        "fixed-median": lambda x: (x - mu) / med,
        "prefix-0.1s": lambda x: prefix_norm(x, mu, var, 0.1),
        "prefix-0.25s": lambda x: prefix_norm(x, mu, var, 0.25),
        "prefix-0.5s": lambda x: prefix_norm(x, mu, var, 0.5),
        "prefix-1s": lambda x: prefix_norm(x, mu, var, 1.0),
        "ema-1s": lambda x: ema_norm(x, mu, var, 1.0),
        "ema-3s": lambda x: ema_norm(x, mu, var, 3.0),
    }


@torch.no_grad()
def _outputs(model, waves: Sequence[np.ndarray]) -> list[tuple[Tensor, Tensor]]:
    """(log-posteriors [T,V], last hidden layer [T,D]) per utterance, input fed as given."""
    out = []
    for w in waves:
        o = model(torch.from_numpy(w.astype(np.float32))[None], torch.tensor([len(w)]))
        n = int(o.lengths[0])
        out.append((o.scores[0, :n], o.hidden_states[-1][0, :n]))
    return out


def compare(ref: list[tuple[Tensor, Tensor]], cand: list[tuple[Tensor, Tensor]]) -> dict[str, float]:
    """Mean frame KL(P_ref||P_cand), greedy token error rate (%) against the reference, hidden rel. error."""
    import kaldialign

    from distill.decode.greedy import ctc_greedy

    kl_sum, frames, errs, toks, h_err, h_ref = 0.0, 0, 0, 0, 0.0, 0.0
    for (rs, rh), (cs, ch) in zip(ref, cand):
        kl_sum += float((rs.exp() * (rs - cs)).sum())
        frames += rs.shape[0]
        rt = ctc_greedy(rs[None], torch.tensor([rs.shape[0]]))[0]
        ct = ctc_greedy(cs[None], torch.tensor([cs.shape[0]]))[0]
        errs += sum(1 for a, b in kaldialign.align(rt, ct, -1) if a != b)
        toks += len(rt)
        h_err += float((rh - ch).pow(2).sum())
        h_ref += float(rh.pow(2).sum())
    return {"kl": kl_sum / max(frames, 1), "token_err": 100.0 * errs / max(toks, 1),
            "hidden_rel": math.sqrt(h_err / max(h_ref, 1e-12))}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m distill.bin.bench_wave_norm", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a trained model (HF directory / fairseq .pt, CNN front-end)")
    ap.add_argument("--wav-scp", required=True, help="Kaldi wav.scp (paths) of the audio to compare on")
    ap.add_argument("--max-utts", type=int, default=300, help="at most this many utterances (default 300)")
    ap.add_argument("--gain-db", type=float, default=0.0, help="random gain per utterance in [-G, G] dB")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.num_threads)
    from distill.decode.audio import read_audio, read_wav_scp
    from distill.models import load_pretrained

    model = load_pretrained(args.model).eval()
    if model.config.frontend != "cnn":
        ap.error("the model has no waveform CNN: input scaling does not apply")
    model.config = model.config.replace(wave_norm="none")  # inputs are scaled here
    rng = random.Random(args.seed)
    waves = []
    for _, src in read_wav_scp(args.wav_scp)[: args.max_utts]:
        g = 10 ** (rng.uniform(-args.gain_db, args.gain_db) / 20)
        waves.append(np.asarray(read_audio(src), dtype=np.float64) * g)
    ref = _outputs(model, [utterance_norm(w) for w in waves])
    secs = sum(len(w) for w in waves) / 16000
    print(f"# {args.model}: {len(waves)} utterances, {secs / 60:.1f} min, gain +-{args.gain_db:g} dB; "
          f"reference: per-utterance normalisation")
    print("| scaling | KL(P_ref || P) per frame | greedy token error vs ref (%) | last hidden rel. error |")
    print("| --- | ---: | ---: | ---: |")
    for name, fn in candidates(waves).items():
        r = compare(ref, _outputs(model, [fn(w) for w in waves]))
        print(f"| {name} | {r['kl']:.4f} | {r['token_err']:.2f} | {r['hidden_rel']:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
