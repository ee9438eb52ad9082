"""distill.train.schedulers: factor values at known points, LambdaLR wiring, registry, checkpointing."""

from __future__ import annotations

import io
import math

import pytest
import torch

from distill.config import ConfigError
from distill.train.config import ScheduleConfig
from distill.train.schedulers import SCHEDULES, build_scheduler, register_schedule, schedule_factor


def test_tri_stage_exponential_points() -> None:
    f = schedule_factor(
        ScheduleConfig(
            name="tri_stage", warmup_steps=10, hold_steps=5, decay_steps=20, init_lr_scale=0.01, final_lr_scale=0.04
        )
    )
    assert f(0) == pytest.approx(0.01)
    assert f(5) == pytest.approx(0.01 + 0.99 * 0.5)
    assert f(10) == pytest.approx(1.0)
    assert f(15) == pytest.approx(1.0)  # hold
    assert f(25) == pytest.approx(0.2)  # half-way of an exponential decay to 0.04 = sqrt(0.04)
    assert f(35) == pytest.approx(0.04)
    assert f(1000) == pytest.approx(0.04)  # stays at the final scale


def test_tri_stage_linear_and_phase_ratio() -> None:
    f = schedule_factor(
        ScheduleConfig(
            name="tri_stage", warmup_steps=0, hold_steps=0, decay_steps=10, decay="linear", final_lr_scale=0.0
        )
    )
    assert f(1) == pytest.approx(0.9)
    assert f(5) == pytest.approx(0.5)
    f = schedule_factor(
        ScheduleConfig(
            name="tri_stage", phase_ratio=[0.1, 0.4, 0.5], init_lr_scale=0.0, final_lr_scale=0.5, decay="linear"
        ),
        total_steps=100,
    )
    assert f(5) == pytest.approx(0.5)  # mid warm-up (10 updates)
    assert f(10) == f(50) == pytest.approx(1.0)
    assert f(75) == pytest.approx(0.75)
    assert f(100) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="max_steps"):
        schedule_factor(ScheduleConfig(name="tri_stage", phase_ratio=[0.1, 0.4, 0.5]))


def test_noam_cosine_linear_constant() -> None:
    noam = schedule_factor(ScheduleConfig(name="noam", warmup_steps=100))
    assert noam(50) == pytest.approx(0.5)
    assert noam(100) == pytest.approx(1.0)
    assert noam(400) == pytest.approx(0.5)  # 1/sqrt(u/warmup)
    cos = schedule_factor(ScheduleConfig(name="cosine", warmup_steps=10, final_lr_scale=0.1), total_steps=110)
    assert cos(5) == pytest.approx(0.5)
    assert cos(60) == pytest.approx(0.55)  # half-way: mean of 1 and 0.1
    assert cos(110) == pytest.approx(0.1)
    lin = schedule_factor(ScheduleConfig(name="linear", warmup_steps=10, final_lr_scale=0.0), total_steps=110)
    assert lin(60) == pytest.approx(0.5)
    assert lin(110) == pytest.approx(0.0)
    const = schedule_factor(ScheduleConfig(name="constant", warmup_steps=4))
    assert [const(u) for u in (1, 2, 4, 99)] == pytest.approx([0.25, 0.5, 1.0, 1.0])
    assert schedule_factor(ScheduleConfig(name="constant"))(1) == 1.0


def test_registry() -> None:
    assert {"tri_stage", "noam", "cosine", "linear", "constant"} <= set(SCHEDULES)
    with pytest.raises(ConfigError, match="unknown schedule 'nope'.*tri_stage"):
        schedule_factor(ScheduleConfig(name="nope"))
    with pytest.raises(ConfigError, match="total number of updates"):
        schedule_factor(ScheduleConfig(name="cosine"))

    @register_schedule("test_half")
    def _half(cfg: ScheduleConfig, total: int):
        return lambda u: 0.5

    try:
        assert schedule_factor(ScheduleConfig(name="test_half"))(3) == 0.5
        with pytest.raises(ValueError, match="already registered"):
            register_schedule("test_half")(_half)
    finally:
        del SCHEDULES["test_half"]


def test_build_scheduler_drives_the_optimizer_and_checkpoints() -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([p], lr=2.0)
    cfg = ScheduleConfig(name="noam", warmup_steps=4)
    sch = build_scheduler(opt, cfg)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    # update u (1-based) uses 2.0 * min(u/4, sqrt(4/u)); the first one is never 0
    assert seen == pytest.approx([2.0 * min(u / 4, math.sqrt(4 / u)) for u in range(1, 7)])
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sch": sch.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=2.0)
    sch2 = build_scheduler(opt2, cfg)
    opt2.load_state_dict(state["opt"])
    sch2.load_state_dict(state["sch"])
    for s in (sch, sch2):
        s.optimizer.step()
        s.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0 * math.sqrt(4 / 8))
