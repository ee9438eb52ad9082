"""Training-step benchmark of stage-1 distillation (``python -m distill.bin.bench_train``; its docstring
describes the measurement): the real task step and the same update taken apart into timed parts."""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from distill.bench import UsageError
from distill.bench.lfmmi import synthetic_corpus
from distill.graph.den import build_den_graph, read_token_ids, read_tokens
from distill.losses.objective import COMPONENTS, DistillObjective, ObjectiveConfig
from distill.models import build_model, make_student
from distill.train.tasks import DistillTask


def build(args: argparse.Namespace):
    """The task (teacher, student, objective) and den graph the options describe, random weights."""
    if args.lang_dir:
        lang = Path(args.lang_dir)
        tokens = read_tokens(lang / "tokens.txt")
        seqs, _ = read_token_ids(lang / "train_token_ids.txt", len(tokens))
        args.vocab = len(tokens)
    else:
        tokens = ["<blk>", "<sos/eos>", "<unk>"] + [f"t{i}" for i in range(3, args.vocab)]
        seqs = synthetic_corpus(args.vocab, 2000)
    torch.manual_seed(0)
    teacher = build_model(args.teacher, args.vocab)
    student = make_student(teacher, args.student)
    with tempfile.TemporaryDirectory() as d:
        den = build_den_graph(tokens, seqs, Path(d) / "P.arpa", 2, method="direct")
    c = ObjectiveConfig(alpha=args.alpha, beta=args.beta, lfmmi_weight=args.lfmmi_weight, ctc_weight=args.ctc_weight)

    def dims(m):
        return m.config.num_hidden_layers, m.config.hidden_size, m.config.feature_dim

    obj = DistillObjective(c, den, dims(student), dims(teacher))
    task = DistillTask(student, teacher, obj).to(args.device).train()
    return task, teacher, student, den


class Clock:
    """Named sections of a step: wall seconds, and thread CPU seconds on CPU (CUDA is synchronised)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.sync()
        w0, c0 = time.perf_counter(), time.thread_time()
        yield
        self.sync()
        self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - w0
        self.cpu[name] = self.cpu.get(name, 0.0) + time.thread_time() - c0


def real_step(task, batch: dict, opt: torch.optim.Optimizer, ctx: Callable, clock: Clock) -> None:
    """What the trainer runs: task forward, one backward, optimizer step."""
    with clock("step"):
        with ctx():
            out = task(batch)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def breakdown_step(task, batch: dict, opt: torch.optim.Optimizer, ctx: Callable, clock: Clock) -> None:
    """The same update in timed parts (see ``distill.bin.bench_train``)."""
    obj = task.objective
    w = obj.cfg.weights(task.step_fn())
    with ctx():
        with clock("teacher forward"):
            t = task.teacher_targets(batch)
        with clock("student forward"):
            out = task.student(batch["audio"], batch["audio_lens"])
        leaf = lambda x: None if x is None else x.detach().requires_grad_(True)  # noqa: E731
        scores, feats = leaf(out.scores), leaf(out.features)
        hidden = [leaf(h) for h in out.hidden_states]
        for name in COMPONENTS:
            if w[name] > 0:
                with clock(f"loss {name}"):
                    value, _ = obj.term(
                        name,
                        scores,
                        out.lengths,
                        student_hidden=hidden,
                        student_features=feats,
                        teacher=t,
                        targets=batch["tokens"],
                    )
                    (w[name] * value).backward()
    roots = [
        (o, g.grad)
        for o, g in zip([out.scores, out.features, *out.hidden_states], [scores, feats, *hidden])
        if o is not None and g.grad is not None
    ]
    with clock("student backward"):
        torch.autograd.backward([r for r, _ in roots], [g for _, g in roots])
    with clock("optimizer"):
        opt.step()
        opt.zero_grad(set_to_none=True)


def median_parts(steps: list[dict[str, float]]) -> dict[str, float]:
    """Per part, the median over steps."""
    return {k: statistics.median(s[k] for s in steps) for k in steps[0]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark with the command line's options (see ``distill.bin.bench_train``): prints the table
    and returns the numbers (also written to ``args.output`` when set). A ``--freeze`` prefix that
    matches no parameter raises :class:`UsageError`."""
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    task, teacher, student, den = build(args)
    names = [n for n, _ in task.named_parameters()]
    for prefix in args.freeze:
        if not any(n.startswith(prefix) for n in names):
            raise UsageError(f"--freeze {prefix}: no task parameter starts with it (e.g. {names[0]})")
    for name, p in task.named_parameters():
        if name.startswith(tuple(args.freeze)):
            p.requires_grad_(False)
    params = [p for p in task.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    n = int(args.seconds * 16000)
    g = torch.Generator().manual_seed(0)
    audio = (torch.randn(args.batch, n, generator=g) * 0.1).to(dev)
    lens = torch.full((args.batch,), n, dtype=torch.long).to(dev)
    batch = {
        "audio": audio,
        "audio_lens": lens,
        "tokens": [[3, 4, 5]] * args.batch,
        "cut_ids": [f"u{i}" for i in range(args.batch)],
    }
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    ctx = (
        (lambda: torch.autocast("cuda", dtype=amp))
        if amp is not None and dev.type == "cuda"
        else contextlib.nullcontext
    )
    real: list[Clock] = []
    parts: list[Clock] = []
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for i in range(args.warmup + args.steps):
        c = Clock(dev)
        real_step(task, batch, opt, ctx, c)
        if i >= args.warmup:
            real.append(c)
        if not args.no_breakdown:
            c = Clock(dev)
            breakdown_step(task, batch, opt, ctx, c)
            if i >= args.warmup:
                parts.append(c)
    step_wall = statistics.median(c.wall["step"] for c in real)
    step_cpu = statistics.median(c.cpu["step"] for c in real)
    audio_s = args.batch * args.seconds
    res: dict[str, Any] = {
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "threads": args.threads,
        "teacher": args.teacher,
        "student": args.student,
        "vocab": args.vocab,
        "den_states": den.num_states,
        "den_arcs": den.num_arcs,
        "batch": args.batch,
        "seconds_per_utt": args.seconds,
        "steps": args.steps,
        "precision": args.precision,
        "frozen": args.freeze,
        "teacher_params_M": round(sum(p.numel() for p in teacher.parameters()) / 1e6, 2),
        "student_params_M": round(sum(p.numel() for p in student.parameters()) / 1e6, 2),
        "s_per_step": round(step_wall, 3),
        "cpu_s_per_step": round(step_cpu, 3) if dev.type == "cpu" else None,
        "audio_s_per_s": round(audio_s / step_wall, 2),
    }
    if parts:
        wall, cpu = median_parts([c.wall for c in parts]), median_parts([c.cpu for c in parts])
        use = cpu if dev.type == "cpu" else wall
        tot = sum(use.values())
        res["breakdown"] = {
            k: {
                "wall_s": round(wall[k], 4),
                "cpu_s": round(cpu[k], 4) if dev.type == "cpu" else None,
                "share": round(use[k] / tot, 4),
            }
            for k in wall
        }
        res["breakdown_total_s"] = round(tot, 3)
    if dev.type == "cuda":
        res["peak_mem_GiB"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
    print(
        f"stage-1 training step, {res['teacher']} ({res['teacher_params_M']} M) -> {res['student']} "
        f"({res['student_params_M']} M), {res['device']}, {args.threads} threads, batch {args.batch} x "
        f"{args.seconds:g} s, {args.precision}"
        + (f", frozen {' '.join(args.freeze)}" if args.freeze else "")
        + f", den graph {den.num_states} states / {den.num_arcs} arcs"
    )
    print(
        f"  step: {res['s_per_step']} s wall"
        + (f", {res['cpu_s_per_step']} s CPU" if res["cpu_s_per_step"] else "")
        + f" (median of {args.steps}); {res['audio_s_per_s']} s of audio per second"
    )
    if parts:
        unit = "CPU s" if dev.type == "cpu" else "s"
        print(f"  breakdown (medians; shares of the parts' sum, {res['breakdown_total_s']} {unit}):")
        print(f"  | part | {unit} | share |\n  | --- | --- | --- |")
        for k, v in res["breakdown"].items():
            print(f"  | {k} | {v['cpu_s'] if dev.type == 'cpu' else v['wall_s']:.3f} | {100 * v['share']:.1f} % |")
    if args.output:
        Path(args.output).write_text(json.dumps(res, indent=1) + "\n")
    return res
