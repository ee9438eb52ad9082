"""A tiny training run for the trainer's crash/resume tests (run as a subprocess by tests/test_train_resume.py).

It can kill itself at chosen points: SIGKILL inside the loss of micro-batch N (``--kill-at``),
SIGTERM inside the loss of micro-batch N (``--term-at``), or SIGKILL half-way through writing the
checkpoint of update S (``--kill-in-write``). Counters are per process. When training ends it
writes the final parameters to ``--out`` and exits with the trainer's exit code.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import sys
import warnings

import torch
from torch import nn

torch.set_num_threads(1)

from distill.data import AsrDataLoader  # noqa: E402
from distill.train import IndexBatchSampler, Trainer  # noqa: E402
from distill.train import checkpoint as ckpt_mod  # noqa: E402
from distill.train.config import OptimConfig, ScheduleConfig, TrainConfig  # noqa: E402

N_ITEMS, DIM, CLASSES = 48, 6, 4


def make_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(N_ITEMS, DIM, generator=g)
    y = torch.randint(0, CLASSES, (N_ITEMS,), generator=g)
    w = torch.randint(1, 6, (N_ITEMS,), generator=g).float()  # "frames" per item
    return x, y, w


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(DIM, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, CLASSES))


class ItemsDataset(torch.utils.data.Dataset):
    """Map-style dataset indexed by a list of item indices (simple) or a lhotse CutSet (lhotse)."""

    def __init__(self) -> None:
        self.x, self.y, self.w = make_data()

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, list):
            idx = key
            ids = [f"item{i}" for i in idx]
        else:  # a lhotse CutSet
            ids = [c.id for c in key]
            idx = [int(i.rsplit("-", 1)[-1]) % N_ITEMS for i in ids]
        t = torch.tensor(idx)
        return {"x": self.x[t], "y": self.y[t], "w": self.w[t], "ids": ids}


def build_sampler(kind: str):
    if kind == "simple":
        return IndexBatchSampler(N_ITEMS, batch_size=5, shuffle=True, seed=7)
    from lhotse import CutSet
    from lhotse.dataset import DynamicBucketingSampler
    from lhotse.testing.dummies import dummy_cut

    g = torch.Generator().manual_seed(99)
    durs = (torch.rand(N_ITEMS, generator=g) * 3 + 0.5).tolist()
    warnings.filterwarnings("ignore", message=".*eagerly read CutSet")
    cuts = CutSet.from_cuts(dummy_cut(i, duration=round(d, 2)) for i, d in enumerate(durs))
    return DynamicBucketingSampler(
        cuts, max_duration=8.0, num_buckets=3, shuffle=True, seed=7, buffer_size=200, world_size=1, rank=0
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--exp-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--sampler", choices=["simple", "lhotse"], default="simple")
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--max-epochs", type=int, default=0)
    ap.add_argument("--accum", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--kill-at", type=int, default=0)
    ap.add_argument("--term-at", type=int, default=0)
    ap.add_argument("--kill-in-write", type=int, default=0)
    ap.add_argument("--tensorboard", action="store_true")
    a = ap.parse_args(argv)

    counter = {"n": 0}

    def compute_loss(model: nn.Module, batch: dict):
        counter["n"] += 1
        if counter["n"] == a.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if counter["n"] == a.term_at:
            os.kill(os.getpid(), signal.SIGTERM)
        logits = model(batch["x"])
        ce = nn.functional.cross_entropy(logits, batch["y"], reduction="none")
        loss = (ce * batch["w"]).sum()
        return loss, {"ce_items": float(ce.detach().sum())}, float(batch["w"].sum())

    data = make_data()

    def validate(model: nn.Module) -> dict[str, float]:
        x, y, w = data
        ce = nn.functional.cross_entropy(model(x[:16]), y[:16])
        return {"loss": float(ce), "acc": float((model(x[:16]).argmax(-1) == y[:16]).float().mean())}

    if a.kill_in_write:
        real_write = ckpt_mod._write

        def write(obj, f):
            if obj.get("trainer", {}).get("step") == a.kill_in_write:
                buf = io.BytesIO()
                torch.save(obj, buf)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
                os.fsync(f.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            real_write(obj, f)

        ckpt_mod._write = write

    # "fork" (Linux's default) also inside a fork-server child, where the default would be a new,
    # cold fork server
    loader = AsrDataLoader(
        ItemsDataset(),
        build_sampler(a.sampler),
        num_workers=a.workers,
        multiprocessing_context="fork" if a.workers else None,
    )
    cfg = TrainConfig(
        exp_dir=a.exp_dir,
        seed=3,
        device="cpu",
        max_steps=a.max_steps,
        max_epochs=a.max_epochs,
        accum_grad=a.accum,
        grad_clip=1.0,
        log_interval=2,
        valid_interval=3,
        checkpoint_interval=2,
        keep_last=3,
        average_last=2,
        progress=False,
        tensorboard=a.tensorboard,
        optim=OptimConfig(lr=3e-2, weight_decay=0.01),
        schedule=ScheduleConfig(name="tri_stage", warmup_steps=3, hold_steps=3, decay_steps=10),
    )
    trainer = Trainer(cfg, make_model(), compute_loss, loader, validate=validate)
    result = trainer.fit()
    if result.status == "finished":
        torch.save({k: v.clone() for k, v in trainer.model.state_dict().items()}, a.out)
    return result.exit_code


def child(argv: list[str]) -> None:
    """Entry point of a forked child (see :func:`run_child`)."""
    sys.exit(main(argv))


_CTX = None


def run_child(target, *args):
    """Start ``target(*args)`` in a child forked from a fork server that has torch already imported.

    Tests start many short runs; a fork server pays for importing torch once instead of per run,
    and the children are fresh processes forked before any torch thread pool exists. Returns the
    started ``multiprocessing.Process`` (``exitcode`` -9 when SIGKILLed).
    """
    import multiprocessing as mp

    global _CTX
    if _CTX is None:
        _CTX = mp.get_context("forkserver")
        _CTX.set_forkserver_preload(
            [
                "torch",
                "torch._dynamo",
                "numpy",
                "lhotse",
                "distill.train",
                "torch.utils.tensorboard",
                "train_toy_script",
                "train_ddp_script",
            ]
        )
    p = _CTX.Process(target=target, args=args)
    p.start()
    return p


if __name__ == "__main__":
    sys.exit(main())
