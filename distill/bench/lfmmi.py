"""LF-MMI benchmark (``python -m distill.bin.bench_lfmmi``; its docstring describes the measurement): the
pure-PyTorch LF-MMI and distillation losses on synthetic den graphs, timed against the student model's
training step, with the loss's peak memory."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from distill.graph.den import build_den_graph
from distill.graph.fsa import Fsa
from distill.losses import LFMMILoss, fb, lfmmi_kd_loss
from distill.models import build_model


def synthetic_corpus(v: int, n_utts: int, seed: int = 0) -> list[list[int]]:
    """Token sequences with Zipfian unigrams and a small set of preferred successors per token."""
    rng = random.Random(seed)
    cum = list(itertools.accumulate(1.0 / (r + 1) ** 1.1 for r in range(v - 1)))
    toks = list(range(1, v))
    succ = {t: rng.choices(toks, cum_weights=cum, k=8) for t in toks}
    out = []
    for _ in range(n_utts):
        n = rng.randint(5, 60)
        seq = rng.choices(toks, cum_weights=cum, k=n)  # unigram draws, then successors replace 60%
        for i in range(1, n):
            if rng.random() < 0.6:
                seq[i] = rng.choice(succ[seq[i - 1]])
        out.append(seq)
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], None], device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_bytes(fn: Callable[[], None], device: torch.device) -> int:
    """Peak bytes allocated by ``fn`` beyond what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as td:
        path = os.path.join(td, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    totals = [
        e["args"]["Total Allocated"]
        for e in events
        if e.get("name") == "[memory]" and e["args"].get("Device Type", 0) == 0
    ]
    return max(totals, default=0)


def student_step(device: torch.device, batch: int, samples: int, vocab: int) -> tuple[Callable[[], None], str]:
    """One forward+backward of the student-12x384 model on random audio, and what was timed."""
    wave = torch.randn(batch, samples, device=device)
    model = build_model("student-12x384", vocab_size=vocab).to(device)
    what = "distill.models student-12x384"

    def run() -> None:
        out = model(wave)
        out.scores.float().logsumexp(-1).sum().backward()

    model.train()
    return run, what


def bench_vocab(v: int, args: argparse.Namespace, device: torch.device, student_s: float | None) -> dict:
    t_n = int(args.seconds * 50)
    b_n = args.batch
    t0 = time.perf_counter()
    corpus = synthetic_corpus(v, args.utts or (20000 if v <= 1000 else 40000))
    tokens = ["<blk>"] + [f"t{i}" for i in range(1, v)]
    method = args.method or ("kaldifst" if v <= 1000 else "direct")
    with tempfile.TemporaryDirectory() as td:
        den: Fsa = build_den_graph(tokens, corpus, os.path.join(td, "P.arpa"), order=2, method=method)
    t_graph = time.perf_counter() - t0
    dtype = {"float64": torch.float64, "float32": torch.float32}.get(args.precision)
    g = fb.compile_graph(den, device, dtype or torch.float32)  # the loss's default for float32 scores
    graph_bytes = g.nbytes()
    fsa_bytes = sum(t.numel() * t.element_size() for t in (den.src, den.dst, den.label, den.score, den.final))
    gen = torch.Generator().manual_seed(0)
    scores = (torch.randn(b_n, t_n, v, generator=gen) * 4).log_softmax(-1).to(device)
    teacher = (torch.randn(b_n, t_n, v, generator=gen) * 4).log_softmax(-1).to(device)
    lens = torch.tensor([t_n - 7 * i for i in range(b_n)], device=device)
    rng = random.Random(1)
    targets = [rng.choice(corpus) for _ in range(b_n)]
    targets = [(t * 3)[: int(args.seconds * 5)] for t in targets]
    loss_fn = LFMMILoss(den, dtype=dtype)

    def lfmmi() -> None:
        x = scores.detach().requires_grad_(True)
        loss = loss_fn(x, lens, targets)
        torch.where(torch.isfinite(loss), loss, torch.zeros_like(loss)).sum().backward()

    def kd() -> None:
        x = scores.detach().requires_grad_(True)
        lfmmi_kd_loss(x, teacher, lens, den, dtype=dtype).sum().backward()

    def numerator_only() -> None:
        fb.numerator_layout(g, targets, v)

    print(f"V={v}: graph ready after {t_graph:.1f} s; timing LF-MMI ...", flush=True)
    t_lfmmi = timed(lfmmi, device, args.repeats)
    print(f"  LF-MMI {t_lfmmi:.3f} s; timing the KD loss ...", flush=True)
    t_kd = timed(kd, device, args.repeats)
    t_num = timed(numerator_only, device, args.repeats)
    # the CPU profiler keeps every allocation event: too much for the V^2-arc graphs of large V
    mem = peak_bytes(lfmmi, device) if device.type == "cuda" or g.mode != "dense" or g.num_states <= 4096 else -1
    score_bytes = scores.numel() * scores.element_size()
    res = {
        "V": v,
        "states": den.num_states,
        "arcs": den.num_arcs,
        "graph_build_s": t_graph,
        "method": method,
        "mode": g.mode,
        "lfmmi_s": t_lfmmi,
        "kd_s": t_kd,
        "num_build_s": t_num,
        "peak_mb": mem / 2**20,
        "scores_mb": score_bytes / 2**20,
        "graph_mb": graph_bytes / 2**20,
        "fsa_mb": fsa_bytes / 2**20,
    }
    ratio = f"{t_lfmmi / student_s:.1%}" if student_s else "n/a"
    print(
        f"V={v}: den graph {den.num_states} states, {den.num_arcs} arcs ({method}, {t_graph:.1f} s to build; "
        f"{g.mode} {g.dtype} transition matrix {res['graph_mb']:.1f} MB, "
        f"Fsa tensors {res['fsa_mb']:.1f} MB)"
    )
    print(
        f"  LF-MMI fwd+bwd B={b_n} T={t_n}: {t_lfmmi:.3f} s (of which numerator graphs {t_num:.3f} s), "
        f"ratio to student step: {ratio}; lfmmi_kd_loss fwd+bwd: {t_kd:.3f} s"
    )
    limit = 2 * score_bytes + graph_bytes
    # alphas of every frame are kept (no recomputation) when they fit fb._STORE_BYTES: say so
    layout = fb.SharedLayout(g, b_n, v)
    store = fb._segment_size(layout, scores, t_n, 0) == 1
    store_mb = t_n * layout.state_bytes() / 2**20
    res["alphas_stored_mb"] = store_mb if store else 0.0
    if mem >= 0:
        print(
            f"  peak memory of the loss (incl. the gradient): {res['peak_mb']:.1f} MB; scores "
            f"{res['scores_mb']:.1f} MB; goal <= 2 x scores + graph = {limit / 2**20:.1f} MB: "
            f"{'met' if mem <= limit else 'NOT met'}"
            + (
                f" (den alphas of all frames kept: {store_mb:.1f} MB, within the "
                f"{fb._STORE_BYTES / 2**20:.0f} MiB allowance fb._STORE_BYTES)"
                if store
                else ""
            )
        )
    else:
        print(f"  peak memory not profiled on CPU for {g.num_states} states; scores {res['scores_mb']:.1f} MB")
    return res


def run(args: argparse.Namespace) -> dict:
    """The benchmark with the command line's options (see ``distill.bin.bench_lfmmi``): prints the results
    and returns them (also written to ``args.json`` when set)."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"B={args.batch}, {args.seconds:g} s utterances (T={int(args.seconds * 50)})"
    )
    student_s = None
    results: dict = {"device": str(device), "threads": torch.get_num_threads(), "vocab": []}
    if not args.skip_student:
        step, what = student_step(device, args.batch, int(args.seconds * 16000), args.vocab[0])
        student_s = timed(step, device, max(1, args.repeats - 1))
        print(f"student fwd+bwd ({what}): {student_s:.3f} s", flush=True)
        results["student_s"], results["student"] = student_s, what
        del step
    for v in args.vocab:
        results["vocab"].append(bench_vocab(v, args, device, student_s))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results
