"""Input-scaling benchmark (``python -m distill.bin.bench_wave_norm``; its docstring describes the
measurement): numpy versions of the causal waveform scalings a streaming student can use, and how far
each moves a trained model's outputs from per-utterance normalisation."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence

import kaldialign
import numpy as np
import torch
from torch import Tensor

from distill.bench import UsageError
from distill.decode.audio import read_audio, read_wav_scp
from distill.decode.greedy import ctc_greedy
from distill.models import load_pretrained

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
    return b.sum(1), (b**2).sum(1), cnt


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
    return _apply_block_stats(x, mean, cq / cc - mean**2)


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
    return _apply_block_stats(x, means, powers - means**2)


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
    return {
        "kl": kl_sum / max(frames, 1),
        "token_err": 100.0 * errs / max(toks, 1),
        "hidden_rel": math.sqrt(h_err / max(h_ref, 1e-12)),
    }


def run(
    model_path: str, wav_scp: str, *, max_utts: int = 300, gain_db: float = 0.0, seed: int = 0, num_threads: int = 1
) -> None:
    """Compare every candidate scaling with per-utterance normalisation on ``model_path`` (a trained CNN
    model) over the first ``max_utts`` utterances of ``wav_scp``, each with a random gain in [-gain_db,
    gain_db] dB; prints a Markdown table. A model without a waveform CNN raises :class:`UsageError`."""
    torch.set_num_threads(num_threads)
    model = load_pretrained(model_path).eval()
    if model.config.frontend != "cnn":
        raise UsageError("the model has no waveform CNN: input scaling does not apply")
    model.config = model.config.replace(wave_norm="none")  # inputs are scaled here
    rng = random.Random(seed)
    waves = []
    for _, src in read_wav_scp(wav_scp)[:max_utts]:
        g = 10 ** (rng.uniform(-gain_db, gain_db) / 20)
        waves.append(np.asarray(read_audio(src), dtype=np.float64) * g)
    ref = _outputs(model, [utterance_norm(w) for w in waves])
    secs = sum(len(w) for w in waves) / 16000
    print(
        f"# {model_path}: {len(waves)} utterances, {secs / 60:.1f} min, gain +-{gain_db:g} dB; "
        f"reference: per-utterance normalisation"
    )
    print("| scaling | KL(P_ref || P) per frame | greedy token error vs ref (%) | last hidden rel. error |")
    print("| --- | ---: | ---: | ---: |")
    for name, fn in candidates(waves).items():
        r = compare(ref, _outputs(model, [fn(w) for w in waves]))
        print(f"| {name} | {r['kl']:.4f} | {r['token_err']:.2f} | {r['hidden_rel']:.4f} |", flush=True)
