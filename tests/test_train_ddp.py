"""DDP on CPU (gloo, 2 processes): the result equals one process trained on the concatenated batches.

The two ranks are started with the environment ``torchrun`` sets (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT), so ``distill.train.distributed.init()`` is exercised as in real runs.
Rank batches differ in size, rank 1 has a NaN loss on the gradient-synchronising micro-batch of the
second update, rank 0 runs out of memory in the forward pass of the third update, and the first layer is
frozen for the first update (DDP is re-wrapped at unfreezing).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import train_ddp_script as ddp  # noqa: E402  (tests/ is on sys.path under pytest)
import train_toy_script as toy  # noqa: E402

from distill.train import Trainer
from distill.train import checkpoint as ck


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_matches_single_process_on_combined_batches(tmp_path: Path) -> None:
    exp, out = tmp_path / "ddp", tmp_path / "ddp_params.pt"
    port = str(_free_port())
    procs = []
    for rank in range(ddp.WORLD):
        env = {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(ddp.WORLD),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        procs.append(toy.run_child(ddp.child, str(exp), str(out), env))
    for p in procs:
        p.join(120)
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    log = (exp / "train.log").read_text() if (exp / "train.log").exists() else ""
    assert codes == [0, 0], f"exit codes {codes}\n{log[-3000:]}"

    # single process, concatenated batches (the NaN/OOM rows make the combined micro-batches bad too)
    combined = [ddp.concat(row) for row in ddp.make_batches()]
    ref = Trainer(ddp.make_config(str(tmp_path / "single")), ddp.make_model(), ddp.compute_loss, combined)
    res = ref.fit()
    got = torch.load(out, weights_only=True)
    assert got["step"] == res.step == 3 and got["n_nonfinite"] == ref.n_nonfinite == 1
    assert got["n_oom"] == ref.n_oom == 1
    for k, v in ref.model.state_dict().items():
        torch.testing.assert_close(got["params"][k], v, rtol=1e-5, atol=1e-6)

    # rank 0 logged global numbers: same losses/grad norms as the single process
    def curve(d: Path) -> list[tuple]:
        recs = [json.loads(x) for x in (d / "train_log.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"], r["grad_norm"], r["num"], r["items"]) for r in recs if r["type"] == "train"]

    a, b = curve(exp), curve(tmp_path / "single")
    assert [x[0] for x in a] == [1, 2, 3]
    assert [v for row in a for v in row] == pytest.approx([v for row in b for v in row], rel=1e-5)
    # checkpoints hold every rank's RNG (and data position) state
    state = ck.load(ck.checkpoint_path(exp / "checkpoints", 3))
    assert state["world_size"] == 2 and [s["rank"] for s in state["rank_states"]] == [0, 1]
    assert not torch.equal(state["rank_states"][0]["rng"]["torch"], state["rank_states"][1]["rng"]["torch"])
    assert "skipped on every rank: another rank had a bad batch" in log
