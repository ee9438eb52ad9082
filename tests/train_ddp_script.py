"""DDP worker for tests/test_train_ddp.py: ``torchrun --standalone --nproc-per-node 2 this.py EXP OUT``.

Every rank trains the same tiny model on its own micro-batches (different sizes per rank, so the
normalisation matters); rank 1 returns a NaN loss on micro-batch 3, which is the gradient-synchronising
micro-batch of the second update (exercises the hand-made all-reduce fallback), and rank 0 runs out
of memory on micro-batch 4 (a non-synchronising one). Rank 0 saves the
final parameters to OUT. The test compares them with a single process trained on the concatenated
batches (see :func:`make_batches` and :func:`compute_loss`, shared with the test).
"""

from __future__ import annotations

import sys

import torch
from torch import nn

torch.set_num_threads(1)

from distill.train import Trainer, distributed  # noqa: E402
from distill.train.config import FreezeConfig, OptimConfig, ScheduleConfig, TrainConfig  # noqa: E402

WORLD, MICRO, DIM, CLASSES = 2, 6, 6, 4
NAN_AT = (1, 3)  # (rank, micro-batch) whose loss is NaN
OOM_AT = (0, 4)  # (rank, micro-batch) whose forward runs out of memory


def make_batches() -> list[list[dict]]:
    """``batches[m][r]``: micro-batch m of rank r (sizes differ between ranks and micro-batches)."""
    g = torch.Generator().manual_seed(5)
    out = []
    for m in range(MICRO):
        row = []
        for r in range(WORLD):
            n = 2 + (m + 2 * r) % 4
            row.append(
                {
                    "x": torch.randn(n, DIM, generator=g),
                    "y": torch.randint(0, CLASSES, (n,), generator=g),
                    "w": torch.randint(1, 6, (n,), generator=g).float(),
                    "nan": torch.tensor([(r, m) == NAN_AT] * n),
                    "oom": torch.tensor([(r, m) == OOM_AT] * n),
                }
            )
        out.append(row)
    return out


def concat(row: list[dict]) -> dict:
    return {k: torch.cat([b[k] for b in row]) for k in row[0]}


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(DIM, 16), nn.Tanh(), nn.Linear(16, CLASSES))


def compute_loss(model: nn.Module, batch: dict):
    if bool(batch["oom"].any()):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
    ce = nn.functional.cross_entropy(model(batch["x"]), batch["y"], reduction="none")
    loss = (ce * batch["w"]).sum()
    if bool(batch["nan"].any()):
        loss = loss * float("nan")
    return loss, {"items": float(len(ce))}, float(batch["w"].sum())


def make_config(exp_dir: str) -> TrainConfig:
    return TrainConfig(
        exp_dir=exp_dir,
        device="cpu",
        max_steps=3,
        accum_grad=2,
        grad_clip=5.0,
        log_interval=1,
        checkpoint_interval=1,
        progress=False,
        tensorboard=False,
        freeze=[FreezeConfig(prefixes=["0."], steps=1)],
        optim=OptimConfig(lr=0.05, weight_decay=0.01),
        schedule=ScheduleConfig(name="constant", warmup_steps=2),
    )


def main(exp_dir: str, out: str) -> int:
    rank, world = distributed.init()
    assert world == WORLD, world
    batches = [row[rank] for row in make_batches()]
    trainer = Trainer(make_config(exp_dir), make_model(), compute_loss, batches)
    res = trainer.fit()
    assert trainer.ddp is not None
    if rank == 0:
        torch.save(
            {
                "params": trainer.model.state_dict(),
                "n_nonfinite": trainer.n_nonfinite,
                "n_oom": trainer.n_oom,
                "step": res.step,
            },
            out,
        )
    distributed.cleanup()
    return res.exit_code


def child(exp_dir: str, out: str, env: dict[str, str]) -> None:
    """One rank started by the test with the environment torchrun would set."""
    import os

    os.environ.update(env)
    sys.exit(main(exp_dir, out))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
