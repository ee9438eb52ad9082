"""Per-update overhead of the Trainer versus a bare loop (not a test): ``python tests/train_overhead_bench.py``."""

from __future__ import annotations

import logging
import tempfile
import time

import torch
import torch._dynamo  # noqa: F401  (imported by the first optimizer step; keep it out of the timing)
import torch.utils.tensorboard  # noqa: F401
from torch import nn

from distill.train import OptimConfig, ScheduleConfig, TrainConfig, Trainer

N, B = 400, 16


def data() -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"x": torch.randn(B, 64, generator=g), "y": torch.randn(B, 8, generator=g)} for _ in range(N)]


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 8))


def loss_fn(m: nn.Module, b: dict):
    return ((m(b["x"]) - b["y"]) ** 2).sum(), {}, b["x"].shape[0]


def main() -> None:
    torch.set_num_threads(1)
    batches = data()
    logging.disable(logging.INFO)
    with tempfile.TemporaryDirectory() as d:
        cfg = TrainConfig(
            exp_dir=d,
            device="cpu",
            max_steps=N,
            progress=False,
            tensorboard=True,
            log_interval=50,
            checkpoint_interval=100,
            grad_clip=1.0,
            optim=OptimConfig(lr=1e-3),
            schedule=ScheduleConfig(name="constant"),
        )
        t = time.perf_counter()
        Trainer(cfg, model(), loss_fn, batches).fit()
        t_trainer = time.perf_counter() - t
    m = model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    t = time.perf_counter()
    for b in batches:
        loss, _, n = loss_fn(m, b)
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    t_raw = time.perf_counter() - t
    print(
        f"trainer {t_trainer / N * 1e3:.2f} ms/update (4 checkpoints, 8 log records, TensorBoard); "
        f"bare loop {t_raw / N * 1e3:.2f} ms/update"
    )


if __name__ == "__main__":
    main()
