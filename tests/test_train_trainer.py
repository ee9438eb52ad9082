"""distill.train.Trainer in one process: update maths against a hand-written oracle, skipping of bad
batches, freezing, outputs, configuration errors."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from distill.config import ConfigError, load_config
from distill.train import (
    ExpDirLock,
    ExpDirLocked,
    FreezeConfig,
    LossResult,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    describe_batch,
)
from distill.train import checkpoint as ck

DIM, OUT = 5, 3


def make_batches(sizes: list[int], seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(sizes):
        out.append(
            {
                "x": torch.randn(n, DIM, generator=g),
                "y": torch.randn(n, OUT, generator=g),
                "w": torch.randint(1, 4, (n,), generator=g).float(),
                "ids": [f"b{i}-u{j}" for j in range(n)],
            }
        )
    return out


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(DIM, 8), nn.Tanh(), nn.Linear(8, OUT))


def batch_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """Sum over items of w * squared error (the loss sum; num = sum of w)."""
    return (((model(batch["x"]) - batch["y"]) ** 2).sum(-1) * batch["w"]).sum()


def compute_loss(model: nn.Module, batch: dict) -> tuple:
    loss = batch_loss(model, batch)
    return loss, {"items": float(len(batch["x"]))}, float(batch["w"].sum())


def cfg(tmp_path: Path, **kw: Any) -> TrainConfig:
    base = dict(
        exp_dir=str(tmp_path / "exp"),
        device="cpu",
        max_steps=4,
        progress=False,
        tensorboard=False,
        log_interval=1,
        checkpoint_interval=0,
        checkpoint_every_epoch=False,
        optim=OptimConfig(lr=0.05, weight_decay=0.1),
        schedule=ScheduleConfig(name="constant"),
    )
    base.update(kw)
    return TrainConfig(**base)


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fit(c: TrainConfig, batches: list, loss_fn=compute_loss, model: nn.Module | None = None, **kw: Any):
    model = model if model is not None else make_model()
    tr = Trainer(c, model, loss_fn, batches, **kw)
    res = tr.fit()
    return tr, res


def assert_same(a: dict, b: dict, exact: bool = True) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_update_matches_hand_written_adamw_loop(tmp_path: Path) -> None:
    """accum_grad=2, unequal micro-batches, clipping, tri-stage LR, decay/no-decay groups."""
    sizes = [3, 5, 2, 4, 6, 1, 3, 3]
    batches = make_batches(sizes)
    c = cfg(
        tmp_path,
        accum_grad=2,
        grad_clip=0.5,
        max_steps=4,
        optim=OptimConfig(lr=0.1, betas=(0.8, 0.95), eps=1e-7, weight_decay=0.3),
        schedule=ScheduleConfig(
            name="tri_stage", warmup_steps=2, hold_steps=1, decay_steps=3, init_lr_scale=0.1, final_lr_scale=0.2
        ),
    )
    tr, res = fit(c, batches)
    assert res.status == "finished" and res.step == 4

    # oracle: plain PyTorch, written from the definitions
    model = make_model()
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.3}, {"params": no_decay, "weight_decay": 0.0}],
        lr=0.1,
        betas=(0.8, 0.95),
        eps=1e-7,
    )

    def factor(u: int) -> float:
        return 0.1 + 0.9 * u / 2 if u <= 2 else 1.0 if u <= 3 else 0.2 ** ((u - 3) / 3)

    norms, losses = [], []
    for u in range(1, 5):
        window = batches[2 * (u - 1) : 2 * u]
        opt.zero_grad()
        total = sum(batch_loss(model, b) for b in window) / sum(float(b["w"].sum()) for b in window)
        total.backward()
        losses.append(float(total.detach()))
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)))
        for g in opt.param_groups:
            g["lr"] = 0.1 * factor(u)
        opt.step()
    assert_same(params(tr.model), params(model), exact=False)
    # Adam hides a constant gradient scale; the logged pre-clipping norm and loss do not
    recs = [json.loads(x) for x in (Path(c.exp_dir) / "train_log.jsonl").read_text().splitlines()]
    assert [r["grad_norm"] for r in recs] == pytest.approx(norms, rel=1e-5)
    assert [r["loss"] for r in recs] == pytest.approx(losses, rel=1e-5)
    assert [r["lr"] for r in recs] == pytest.approx([0.1 * factor(u) for u in range(1, 5)])


def test_accumulation_equals_big_batches(tmp_path: Path) -> None:
    small = make_batches([2, 3, 4, 1, 2, 2])
    big = [
        {k: (v + w if isinstance(v, list) else torch.cat([v, w])) for (k, v), w in zip(a.items(), b.values())}
        for a, b in zip(small[0::2], small[1::2])
    ]
    t1, _ = fit(cfg(tmp_path / "a", accum_grad=2, max_steps=3), small)
    t2, _ = fit(cfg(tmp_path / "b", accum_grad=1, max_steps=3), big)
    assert_same(params(t1.model), params(t2.model), exact=False)


def test_epochs_and_partial_window(tmp_path: Path) -> None:
    tr, res = fit(cfg(tmp_path, max_steps=0, max_epochs=2, accum_grad=2), make_batches([2] * 5))
    assert (res.step, res.epoch) == (6, 2)  # 2 full windows + 1 partial per epoch


def test_outputs_logs_best_and_average(tmp_path: Path) -> None:
    batches = make_batches([4] * 6, seed=1)
    valid_batch = make_batches([16], seed=2)[0]
    calls = []

    def validate(model: nn.Module) -> dict[str, float]:
        assert not model.training and not torch.is_grad_enabled()
        calls.append(1)
        return {"loss": float(batch_loss(model, valid_batch) / valid_batch["w"].sum()), "acc": 0.5}

    c = cfg(
        tmp_path,
        max_steps=6,
        valid_interval=2,
        checkpoint_interval=2,
        keep_last=2,
        average_last=2,
        tensorboard=True,
        log_interval=2,
    )
    tr, res = fit(c, batches, validate=validate)
    exp = Path(c.exp_dir)
    assert len(calls) == 3
    names = sorted(p.name for p in exp.iterdir())
    assert {"avg2.pt", "best.pt", "last.pt", "train_log.jsonl", "train.log", "tensorboard", "checkpoints"} <= set(names)
    assert [p.name for _, p in ck.list_checkpoints(exp / "checkpoints")] == ["ckpt-00000004.pt", "ckpt-00000006.pt"]
    assert any(p.name.startswith("events.out.tfevents") for p in (exp / "tensorboard").iterdir())
    recs = [json.loads(x) for x in (exp / "train_log.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["type"] == "train"]
    valid = [r for r in recs if r["type"] == "valid"]
    assert [r["step"] for r in train] == [2, 4, 6] and [r["step"] for r in valid] == [2, 4, 6]
    for r in train:
        assert {"loss", "items", "lr", "grad_norm", "num", "num_per_s", "skipped_nonfinite"} <= set(r)
        assert r["items"] == pytest.approx(8 / r["num"])  # stats are reported as sum / num
        assert math.isfinite(r["loss"]) and r["lr"] == pytest.approx(0.05)
    best = min(valid, key=lambda r: r["loss"])
    best_file = ck.load(exp / "best.pt")
    assert best_file["step"] == best["step"] == res.best_step
    assert best_file["metrics"]["loss"] == pytest.approx(best["loss"])
    avg = ck.load_model_state(exp / "avg2.pt")
    c4, c6 = (ck.load_model_state(exp / "checkpoints" / f"ckpt-0000000{s}.pt") for s in (4, 6))
    for k in avg:
        torch.testing.assert_close(avg[k], (c4[k] + c6[k]) / 2)
    assert_same(ck.load_model_state(exp / "last.pt"), params(tr.model))
    assert "update 6" in (exp / "train.log").read_text()


def test_validation_leaves_training_unchanged(tmp_path: Path) -> None:
    """The trained weights do not depend on how often validation runs, even when validation draws random
    numbers (as a DataLoader iterator does) and training does too (dropout)."""
    import random

    import numpy as np

    def model() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(DIM, 8), nn.Dropout(0.3), nn.Tanh(), nn.Linear(8, OUT))

    def validate(m: nn.Module) -> dict[str, float]:
        torch.rand(5), random.random(), np.random.rand()
        for _ in torch.utils.data.DataLoader(list(range(4)), shuffle=True):
            pass
        return {"loss": 1.0}

    batches = make_batches([4] * 6, seed=3)
    runs = {}
    for every in (0, 1, 2):
        torch.manual_seed(7)
        random.seed(7)
        np.random.seed(7)
        c = cfg(tmp_path / str(every), max_steps=6, valid_interval=every)
        tr, _ = fit(c, batches, model=model(), validate=validate)
        runs[every] = (params(tr.model), torch.rand(3), random.random(), np.random.rand())
    for every in (1, 2):
        assert_same(runs[0][0], runs[every][0])
        assert torch.equal(runs[0][1], runs[every][1]) and runs[0][2:] == runs[every][2:]


def _drop(batches: list, i: int) -> list:
    return batches[:i] + batches[i + 1 :]


def test_nonfinite_loss_batch_is_skipped(tmp_path: Path) -> None:
    batches = make_batches([3, 4, 2, 5, 3, 4])

    def nan_at_2(model, batch):
        loss, st, n = compute_loss(model, batch)
        return (loss * float("nan") if batch is batches[2] or batch["ids"] == batches[2]["ids"] else loss), st, n

    tr, res = fit(cfg(tmp_path / "a", max_steps=5), batches, nan_at_2)
    ref, _ = fit(cfg(tmp_path / "b", max_steps=5), _drop(batches, 2))
    assert tr.n_nonfinite == 1 and res.step == 5
    assert_same(params(tr.model), params(ref.model))
    rec = [json.loads(x) for x in (tmp_path / "a/exp/train_log.jsonl").read_text().splitlines()]
    assert rec[-1]["skipped_nonfinite"] == 1


class _NanGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return x.clone()

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        return g * float("nan")


def test_nonfinite_gradient_update_is_skipped(tmp_path: Path) -> None:
    batches = make_batches([3, 4, 2, 5])

    def nan_grad_at_1(model, batch):
        loss, st, n = compute_loss(model, batch)
        return (_NanGrad.apply(loss) if batch["ids"] == batches[1]["ids"] else loss), st, n

    tr, _ = fit(cfg(tmp_path / "a", max_steps=3), batches, nan_grad_at_1)
    ref, _ = fit(cfg(tmp_path / "b", max_steps=3), _drop(batches, 1))
    assert tr.n_nonfinite == 1
    assert_same(params(tr.model), params(ref.model))


def test_oom_batch_is_skipped_and_logged(tmp_path: Path, caplog) -> None:
    batches = make_batches([3, 4, 2, 5])

    def oom_at_1(model, batch):
        if batch["ids"] == batches[1]["ids"]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return compute_loss(model, batch)

    with caplog.at_level(logging.WARNING):
        tr, _ = fit(cfg(tmp_path / "a", max_steps=3), batches, oom_at_1)
    ref, _ = fit(cfg(tmp_path / "b", max_steps=3), _drop(batches, 1))
    assert tr.n_oom == 1 and tr.n_nonfinite == 0
    assert_same(params(tr.model), params(ref.model))
    assert "out of memory (CUDA out of memory. Tried to allocate 2.00 GiB); batch skipped" in caplog.text
    assert "x[4, 5]" in caplog.text and "b1-u0" in caplog.text  # what the batch was


def test_consecutive_bad_batches_abort(tmp_path: Path) -> None:
    def always_nan(model, batch):
        loss, st, n = compute_loss(model, batch)
        return LossResult(loss=loss * float("nan"), num=n, stats=st)

    with pytest.raises(TrainingDiverged, match="3 consecutive batches/updates were skipped"):
        fit(cfg(tmp_path, max_consecutive_nonfinite=3, checkpoint_interval=1), make_batches([2] * 6), always_nan)
    assert ck.list_checkpoints(tmp_path / "exp" / "checkpoints") == []


def test_enospc_during_checkpoint_then_resume(tmp_path: Path, monkeypatch) -> None:
    batches = make_batches([3, 2, 4, 3, 5, 2, 3, 4])
    c = cfg(tmp_path / "a", max_steps=8, checkpoint_interval=2)
    real = ck._write

    def full_at_4(obj, f):
        if obj.get("trainer", {}).get("step") == 4:
            f.write(b"PK partial")
            raise OSError(28, "No space left on device")
        real(obj, f)

    monkeypatch.setattr(ck, "_write", full_at_4)
    with pytest.raises(ck.CheckpointError, match=r"ckpt-00000004\.pt': no space left on device"):
        fit(c, batches)
    ckdir = tmp_path / "a/exp/checkpoints"
    assert sorted(p.name for p in ckdir.iterdir()) == ["ckpt-00000002.pt"]
    monkeypatch.setattr(ck, "_write", real)
    tr, res = fit(c, batches)  # resumes from update 2
    ref, _ = fit(cfg(tmp_path / "b", max_steps=8, checkpoint_interval=2), batches)
    assert res.step == 8
    assert_same(params(tr.model), params(ref.model))


def test_unrestorable_data_position_names_the_checkpoint(tmp_path: Path) -> None:
    """A mid-epoch checkpoint whose batch position the (changed) data no longer reaches is refused with a
    CheckpointError naming the file; the loader's position, not the batch list, is what was saved."""
    from distill.data import AsrDataLoader
    from distill.train import IndexBatchSampler

    class Rows(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.batch = make_batches([12])[0]

        def __getitem__(self, idx):  # type: ignore[override]
            return {k: v[idx] for k, v in self.batch.items() if k != "ids"}

    def loader(n: int) -> AsrDataLoader:
        return AsrDataLoader(Rows(), IndexBatchSampler(n, batch_size=2, seed=1))

    c = cfg(tmp_path, max_steps=3, checkpoint_interval=3)
    fit(c, loader(12))
    state = ck.load(ck.checkpoint_path(tmp_path / "exp/checkpoints", 3))
    assert state["trainer"]["batch_in_epoch"] == 3
    assert state["rank_states"][0]["sampler"] == {"epoch": 0, "count": 3}
    with pytest.raises(
        ck.CheckpointError,
        match=r"ckpt-00000003\.pt': cannot restore its data position "
        r"\(epoch 0, batch 3\).*yields only 2 batches",
    ):
        fit(dataclasses.replace(c, max_steps=5), loader(4))


def test_freeze_prefix_for_n_steps(tmp_path: Path) -> None:
    init = params(make_model())
    t2, _ = fit(
        cfg(tmp_path / "a", max_steps=2, freeze=[FreezeConfig(prefixes=["0."], steps=2)]), make_batches([3] * 6)
    )
    p2 = params(t2.model)
    assert torch.equal(p2["0.weight"], init["0.weight"]) and torch.equal(p2["0.bias"], init["0.bias"])
    assert not torch.equal(p2["2.weight"], init["2.weight"])
    t4, _ = fit(
        cfg(tmp_path / "b", max_steps=4, freeze=[FreezeConfig(prefixes=["0."], steps=2)]), make_batches([3] * 6)
    )
    assert not torch.equal(params(t4.model)["0.weight"], init["0.weight"])
    assert all(p.requires_grad for p in t4.model.parameters())
    # a callable rule, forever
    t3, _ = fit(
        cfg(tmp_path / "c", max_steps=2), make_batches([3] * 6), freeze_fns=[(lambda n: n.endswith("bias"), -1)]
    )
    assert all(torch.equal(params(t3.model)[k], init[k]) for k in init if k.endswith("bias"))
    with pytest.raises(ConfigError, match=r"freeze\[0\]\.prefixes.*match no parameter.*top-level names: 0\., 2\."):
        Trainer(cfg(tmp_path / "d", freeze=[FreezeConfig(prefixes=["encoder."])]), make_model(), compute_loss, [])


class Wrapped(nn.Module):
    """A student plus a frozen teacher, as in distillation."""

    def __init__(self) -> None:
        super().__init__()
        self.student = make_model()
        self.teacher = nn.Linear(DIM, OUT)
        self.teacher.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x) + 0.1 * self.teacher(x)


def test_exclude_and_export_prefix(tmp_path: Path) -> None:
    batches = make_batches([3] * 6)
    c = cfg(
        tmp_path, max_steps=3, checkpoint_interval=1, exclude_from_checkpoint=["teacher."], export_prefix="student."
    )
    tr, _ = fit(c, batches, validate=lambda m: {"loss": 1.0}, model=Wrapped(), model_meta={"dim": DIM})
    exp = Path(c.exp_dir)
    assert all(ck.load(exp / f)["meta"] == {"dim": DIM} for f in ("best.pt", "last.pt"))
    full = ck.load(ck.checkpoint_path(exp / "checkpoints", 3))
    assert not any(k.startswith("teacher.") for k in full["model"])
    student = make_model()
    student.load_state_dict(ck.load_model_state(exp / "last.pt"))  # strict: keys fit the bare student
    assert_same(params(student), {k[8:]: v for k, v in params(tr.model).items() if k.startswith("student.")})
    assert set(ck.load_model_state(exp / "best.pt")) == set(params(student))
    # resuming loads a checkpoint without the teacher into the full model
    tr2 = Trainer(dataclasses.replace(c, max_steps=4), Wrapped(), compute_loss, batches)
    assert tr2.fit().step == 4


def test_refusals(tmp_path: Path) -> None:
    c = cfg(tmp_path, max_steps=2, checkpoint_interval=1)
    fit(c, make_batches([2] * 4))
    with pytest.raises(ConfigError, match="already holds checkpoints.*resume is false"):
        fit(dataclasses.replace(c, resume=False), make_batches([2] * 4))
    with ExpDirLock(c.exp_dir):
        with pytest.raises(ExpDirLocked, match="is in use by another run"):
            fit(c, make_batches([2] * 4))
    with pytest.raises(KeyError, match="best_metric 'wer' is not among the validation metrics"):
        fit(cfg(tmp_path / "v", best_metric="wer"), make_batches([2] * 4), validate=lambda m: {"loss": 1.0})
    with pytest.raises(RuntimeError, match="yielded no batch"):
        fit(cfg(tmp_path / "e", max_steps=0, max_epochs=1), [])


@pytest.mark.parametrize(
    "changes,key",
    [
        (dict(max_steps=0, max_epochs=0), "max_steps"),
        (dict(average_last=5, keep_last=3), "average_last"),
        (dict(accum_grad=0), "accum_grad"),
        (dict(freeze=[FreezeConfig(prefixes=[])]), r"freeze\[0\]\.prefixes"),
        (dict(schedule=ScheduleConfig(phase_ratio=[0.5, 0.6, 0.1])), "schedule.phase_ratio"),
    ],
)
def test_config_validation(tmp_path: Path, changes: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"key '{key}"):
        cfg(tmp_path, **changes).validate()


def test_config_from_yaml(tmp_path: Path) -> None:
    p = tmp_path / "t.yaml"
    p.write_text(
        "max_steps: 100\noptim: {lr: 3.0e-5, betas: [0.9, 0.98]}\n"
        "schedule: {name: tri_stage, phase_ratio: [0.1, 0.4, 0.5]}\n"
        "freeze: [{prefixes: [feature_extractor.], steps: 1000}]\n"
    )
    c = load_config(TrainConfig, p, ["accum_grad=4", "precision=bf16"])
    assert c.optim.betas == (0.9, 0.98) and c.freeze[0].prefixes == ["feature_extractor."]
    assert (c.accum_grad, c.precision, c.schedule.phase_ratio) == (4, "bf16", [0.1, 0.4, 0.5])
    c.validate()


def test_mixed_precision_falls_back_on_cpu(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        tr, res = fit(cfg(tmp_path, precision="bf16", max_steps=2), make_batches([2] * 3))
    assert res.step == 2 and tr.amp_dtype is None and "needs CUDA" in caplog.text


def test_describe_batch() -> None:
    @dataclasses.dataclass
    class Cut:
        id: str
        duration: float

    b = {"inputs": torch.zeros(2, 16000), "supervisions": {"cut": [Cut("c1", 1.0), Cut("c2", 0.5)]}}
    assert describe_batch(b) == "inputs[2, 16000], 2 cuts, 1.5 s audio, ids ['c1', 'c2']"
    assert describe_batch((torch.zeros(3), [torch.ones(1, 2)])) == "[0][3], [1][0][1, 2]"


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cuda(tmp_path: Path, precision: str) -> None:
    batches = make_batches([8] * 12)
    c = cfg(tmp_path, precision=precision, device="cuda", max_steps=12, checkpoint_interval=6)
    losses = []

    def loss_fn(model, batch):
        loss, st, n = compute_loss(model, batch)
        losses.append(float(loss) / n)
        return loss, st, n

    tr, res = fit(c, batches, loss_fn)
    assert tr.amp_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert res.step + tr.n_fp16_overflow >= 12 and sum(losses[-3:]) < sum(losses[:3])
    state = ck.load(ck.checkpoint_path(Path(c.exp_dir) / "checkpoints", 6))
    assert bool(state["scaler"]) == (precision == "fp16")


def test_sigterm_finishes_the_update_and_checkpoints(tmp_path: Path) -> None:
    import os
    import signal

    seen = []

    def loss_fn(model, batch):
        seen.append(batch["ids"][0])
        if len(seen) == 3:  # first micro-batch of update 2
            os.kill(os.getpid(), signal.SIGTERM)
        return compute_loss(model, batch)

    before = signal.getsignal(signal.SIGTERM)
    tr, res = fit(cfg(tmp_path, accum_grad=2, max_steps=10), make_batches([2] * 10), loss_fn)
    assert (res.status, res.step, res.exit_code) == ("interrupted", 2, 143)
    assert len(seen) == 4  # the update in progress was completed
    # off the schedule (checkpoint_interval=0): a signal checkpoint, outside the rotation and averaging
    assert res.checkpoint == ck.signal_checkpoint_path(tmp_path / "exp" / "checkpoints", 2) and res.checkpoint.exists()
    assert ck.list_checkpoints(tmp_path / "exp" / "checkpoints") == []
    assert ck.load(res.checkpoint)["trainer"]["batch_in_epoch"] == 4
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
