"""Training throughput of stage-1 distillation (not a test): seconds of audio per second, and where a
step's time goes (teacher forward, student forward, loss forward, backward + optimizer).

    python -m distill.bin.bench_train                       # CPU, 2 threads, demo-teacher -> demo-student
    python -m distill.bin.bench_train --device cuda --teacher w2v2-large --student student-12x384 \\
        --batch 8 --seconds 15 --precision bf16

Random weights and random audio (the cost does not depend on the values); the den graph is a bigram
P over Zipfian synthetic token sequences of the given vocabulary (as bench_lfmmi), or over a lang
dir's training transcripts (``--lang-dir``). The loop is the real task module
(:class:`distill.train.tasks.DistillTask`) with AdamW, without the trainer's logging/checkpoints.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

import torch


def build(args: argparse.Namespace):
    from distill.graph.den import build_den_graph
    from distill.losses.objective import DistillObjective, ObjectiveConfig
    from distill.models import build_model, make_student
    from distill.train.tasks import DistillTask

    if args.lang_dir:
        from distill.graph.den import read_token_ids, read_tokens

        lang = Path(args.lang_dir)
        tokens = read_tokens(lang / "tokens.txt")
        seqs, _ = read_token_ids(lang / "train_token_ids.txt", len(tokens))
        args.vocab = len(tokens)
    else:
        from distill.bin.bench_lfmmi import synthetic_corpus

        tokens = ["<blk>", "<sos/eos>", "<unk>"] + [f"t{i}" for i in range(3, args.vocab)]
        seqs = synthetic_corpus(args.vocab, 2000)
    torch.manual_seed(0)
    teacher = build_model(args.teacher, args.vocab)
    student = make_student(teacher, args.student)
    with tempfile.TemporaryDirectory() as d:
        den = build_den_graph(tokens, seqs, Path(d) / "P.arpa", 2, method="direct")
    c = ObjectiveConfig(alpha=args.alpha, beta=args.beta, lfmmi_weight=args.lfmmi_weight)

    def dims(m):
        return m.config.num_hidden_layers, m.config.hidden_size, m.config.feature_dim

    obj = DistillObjective(c, den, dims(student), dims(teacher))
    task = DistillTask(student, teacher, obj).to(args.device).train()
    return task, teacher, student, den


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m distill.bin.bench_train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--teacher", default="demo-teacher")
    ap.add_argument("--student", default="demo-student")
    ap.add_argument("--vocab", type=int, default=256, help="synthetic token statistics of this vocabulary")
    ap.add_argument("--lang-dir", help="build the den graph from this lang dir's training tokens instead")
    ap.add_argument("--batch", type=int, default=4, help="utterances per batch")
    ap.add_argument("--seconds", type=float, default=4.0, help="seconds per utterance")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast (CUDA)")
    ap.add_argument("--alpha", type=float, default=0.8)
    ap.add_argument("--beta", type=float, default=0.8)
    ap.add_argument("--lfmmi-weight", type=float, default=0.0)
    ap.add_argument("--output", help="also write the numbers as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    task, teacher, student, den = build(args)
    params = [p for p in task.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    n = int(args.seconds * 16000)
    g = torch.Generator().manual_seed(0)
    audio = (torch.randn(args.batch, n, generator=g) * 0.1).to(dev)
    lens = torch.full((args.batch,), n, dtype=torch.long).to(dev)
    batch = {"audio": audio, "audio_lens": lens, "tokens": [[3, 4, 5]] * args.batch,
             "cut_ids": [f"u{i}" for i in range(args.batch)]}
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    ctx = (lambda: torch.autocast("cuda", dtype=amp)) if amp is not None and dev.type == "cuda" \
        else contextlib.nullcontext

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    total = 0.0
    cpu = 0.0
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            task.timer.enabled = True
            task.timer.totals.clear()
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        with ctx():
            out = task(batch)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= args.warmup:
            total += time.perf_counter() - t0
            cpu += time.process_time() - c0
    audio_s = args.batch * args.seconds * args.steps
    parts = dict(task.timer.totals)
    parts["backward+optimizer"] = total - sum(parts.values())
    res = {
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "threads": args.threads, "teacher": args.teacher, "student": args.student, "vocab": args.vocab,
        "den_arcs": den.num_arcs, "batch": args.batch, "seconds_per_utt": args.seconds, "steps": args.steps,
        "precision": args.precision,
        "teacher_params_M": round(sum(p.numel() for p in teacher.parameters()) / 1e6, 2),
        "student_params_M": round(sum(p.numel() for p in student.parameters()) / 1e6, 2),
        "s_per_step": round(total / args.steps, 3),
        "audio_s_per_s": round(audio_s / total, 2),
        "audio_s_per_cpu_s": round(audio_s / cpu, 2) if dev.type == "cpu" else None,
        "share": {k: round(v / total, 3) for k, v in parts.items()},
    }
    if dev.type == "cuda":
        res["peak_mem_GiB"] = round(torch.cuda.max_memory_allocated(dev) / 2 ** 30, 2)
    print(f"stage-1 training step, {res['teacher']} ({res['teacher_params_M']} M) -> {res['student']} "
          f"({res['student_params_M']} M), {res['device']}, {args.threads} threads, batch {args.batch} x "
          f"{args.seconds:g} s, {args.precision}")
    print(f"  {res['s_per_step']} s/step, {res['audio_s_per_s']} s of audio per second"
          + (f" ({res['audio_s_per_cpu_s']} per CPU-second)" if res["audio_s_per_cpu_s"] else ""))
    print("  | part | share of a step |\n  | --- | --- |")
    for k, v in res["share"].items():
        print(f"  | {k} | {100 * v:.1f} % |")
    if args.output:
        Path(args.output).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
