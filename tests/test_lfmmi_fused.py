"""The faster LF-MMI paths against independent references: the stacked (teacher + student) KD pass
against the separate den passes it replaces, block-wise occupancies and the alpha store policy against
an autograd log-space recursion, and bench_train's per-term breakdown against the real training step."""

from __future__ import annotations

import math

import pytest
import torch

from distill.graph import Fsa, ctc_topo
from distill.losses import den_log_z, den_occupancy, fb, lfmmi_kd_loss, reduce_finite
from distill.losses.lfmmi import den_layout

D = torch.float64


def bigram_den(tmp_path, v: int = 8) -> Fsa:
    """A real den graph (CTC topology o back-off bigram) of a few random token sequences."""
    from distill.graph.den import build_den_graph

    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(1, v, (int(n),), generator=gen).tolist() for n in torch.randint(1, 9, (60,), generator=gen)]
    return build_den_graph(["<blk>"] + [f"t{i}" for i in range(1, v)], seqs, tmp_path / "P.arpa", method="direct")


def random_graph(seed: int, n: int = 6, v: int = 4, arcs: int = 20) -> Fsa:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, n, (arcs,), generator=g)
    dst = torch.randint(0, n, (arcs,), generator=g)
    lab = torch.randint(0, v, (arcs,), generator=g)
    final = torch.randn(n, generator=g, dtype=D)
    final[torch.rand(n, generator=g) < 0.3] = -math.inf
    final[0] = 0.0
    return Fsa(src, dst, lab, torch.randn(arcs, generator=g, dtype=D), 0, final)


def autograd_log_z(fsa: Fsa, x: torch.Tensor) -> torch.Tensor:
    """logZ of one utterance x [T, V] by a plain log-space recursion over a dense [V, N, N] arc tensor;
    its autograd gradient is the occupancy (an oracle for long T, where enumeration is impossible).
    "Absent" is -1e30, not -inf, so that logsumexp over absent entries has a zero (not NaN) gradient."""
    n, v = fsa.num_states, x.shape[1]
    none = -1e30
    w = torch.full((v, n, n), none, dtype=D)
    for s, d, lab, sc in zip(fsa.src.tolist(), fsa.dst.tolist(), fsa.label.tolist(), fsa.score.tolist()):
        w[lab, s, d] = torch.logaddexp(w[lab, s, d], torch.tensor(sc, dtype=D))
    alpha = torch.full((n,), none, dtype=D)
    alpha = torch.where(torch.arange(n) == fsa.start, torch.zeros((), dtype=D), alpha)
    for t in range(x.shape[0]):
        alpha = torch.logsumexp(alpha[None, :, None] + w + x[t][:, None, None], dim=(0, 1))
    final = fsa.final.to(D)
    return torch.logsumexp(alpha + torch.where(torch.isfinite(final), final, torch.full_like(final, none)), 0)


def separate_kd(x_s: torch.Tensor, x_t: torch.Tensor, lens: torch.Tensor, den: Fsa, **kw):
    """The KD loss and gradient from separate den passes: logZ(S) - sum gamma_T x_S, gamma_S - gamma_T."""
    xs = x_s.detach().requires_grad_(True)
    lz = den_log_z(xs, lens, den, **kw)
    (gamma_s,) = torch.autograd.grad(lz.sum(), xs)
    gamma_t = den_occupancy(x_t, lens, den, **kw)
    return lz.detach() - (gamma_t * x_s).sum((1, 2)).to(lz.dtype), gamma_s - gamma_t


# ---------------------------------------------------------------------------- stacked KD pass
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("checkpoint", [0, 1, 5])
def test_kd_stacked_pass_equals_separate_passes(tmp_path, dtype: torch.dtype, checkpoint: int) -> None:
    v = 8
    den = bigram_den(tmp_path, v)
    gen = torch.Generator().manual_seed(1)
    x_s = (torch.randn(3, 23, v, generator=gen, dtype=D) * 3).log_softmax(-1).to(dtype)
    x_t = (torch.randn(3, 23, v, generator=gen, dtype=D) * 3).log_softmax(-1).to(dtype)
    lens = torch.tensor([23, 17, 4])
    ref_loss, ref_grad = separate_kd(x_s, x_t, lens, den)
    xs = x_s.clone().requires_grad_(True)
    loss = lfmmi_kd_loss(xs, x_t, lens, den, checkpoint=checkpoint)
    upstream = torch.tensor([1.0, -0.5, 2.0], dtype=dtype)
    (grad,) = torch.autograd.grad(loss, xs, upstream)
    tol = dict(atol=1e-9, rtol=1e-9) if dtype == D else dict(atol=2e-4, rtol=1e-5)
    assert loss.dtype == dtype and grad.dtype == dtype
    assert torch.allclose(loss.double(), ref_loss.double(), **tol)
    assert torch.allclose(grad.double(), (ref_grad * upstream[:, None, None]).double(), atol=tol["atol"])
    assert torch.all(grad[1, 17:] == 0) and torch.all(grad[2, 4:] == 0)


def test_kd_stacked_pass_random_graph_and_modes() -> None:
    """Graphs without CTC structure, every transition-matrix mode, against the separate passes."""
    fsa = random_graph(3)
    gen = torch.Generator().manual_seed(2)
    x_s = torch.randn(2, 9, 4, generator=gen, dtype=D)
    x_t = torch.randn(2, 9, 4, generator=gen, dtype=D)
    lens = torch.tensor([9, 6])
    ref_loss, ref_grad = separate_kd(x_s, x_t, lens, fsa)
    for mode in ("dense", "csr"):
        g = fb.CompiledGraph(fsa, torch.device("cpu"), D, mode=mode)
        fb._CACHE[fsa] = {("cpu", D): g}  # the loss picks up this compiled form
        xs = x_s.clone().requires_grad_(True)
        loss = lfmmi_kd_loss(xs, x_t, lens, fsa)
        (grad,) = torch.autograd.grad(loss.sum(), xs)
        assert torch.allclose(loss, ref_loss, atol=1e-9), mode
        assert torch.allclose(grad, ref_grad, atol=1e-9), mode
    fb._CACHE.pop(fsa)


def test_kd_non_finite_teacher_retain_graph_and_no_grad() -> None:
    den = ctc_topo(5)
    gen = torch.Generator().manual_seed(4)
    x_s = torch.randn(3, 6, 5, generator=gen, dtype=D).requires_grad_(True)
    x_t = torch.randn(3, 6, 5, generator=gen, dtype=D)
    x_t[1, 2, 0] = float("nan")
    lens = torch.tensor([6, 6, 3])
    loss = lfmmi_kd_loss(x_s, x_t, lens, den)
    assert math.isnan(loss[1].item()) and torch.isfinite(loss[[0, 2]]).all()
    total, dropped = reduce_finite(loss)
    assert dropped == 1
    (g1,) = torch.autograd.grad(total, x_s, retain_graph=True)
    (g2,) = torch.autograd.grad(total, x_s)  # a second backward gives the same gradient
    assert torch.equal(g1, g2) and torch.all(g1[1] == 0) and torch.isfinite(g1).all()
    ref_loss, ref_grad = separate_kd(x_s.detach()[[0, 2]], x_t[[0, 2]], lens[[0, 2]], den)
    assert torch.allclose(loss.detach()[[0, 2]], ref_loss, atol=1e-10)
    assert torch.allclose(g1[[0, 2]], ref_grad, atol=1e-10)
    with torch.no_grad():  # validation: the value alone
        assert torch.allclose(lfmmi_kd_loss(x_s, x_t, lens, den), loss.detach(), equal_nan=True)


# ---------------------------------------------------------------------------- engine paths
@pytest.mark.parametrize("seed", range(2))
def test_long_occupancy_blocks_and_store_policy_match_autograd(seed: int, monkeypatch) -> None:
    """T = 70 (several occupancy blocks, segments), unequal lengths: logZ and occupancies equal the
    autograd gradient of a log-space recursion, with every alpha stored and with checkpoints."""
    fsa = random_graph(seed)
    gen = torch.Generator().manual_seed(10 + seed)
    x = torch.randn(3, 70, 4, generator=gen, dtype=D)
    lens = torch.tensor([70, 51, 33])
    ref_z, ref_g = [], []
    for b in range(3):
        xb = x[b, : lens[b]].clone().requires_grad_(True)
        z = autograd_log_z(fsa, xb)
        ref_z.append(z.detach())
        ref_g.append(torch.autograd.grad(z, xb)[0])
    layout = den_layout(x, fsa)
    monkeypatch.setattr(fb, "_BLOCK", 8)  # several flushes of the occupancy blocks
    for store_bytes, expect_segment in ((1 << 30, 1), (0, 9)):
        monkeypatch.setattr(fb, "_STORE_BYTES", store_bytes)
        fw = fb.forward_pass(layout, x, lens)
        assert fw.segment == expect_segment
        occ = fb.occupancy(layout, x, lens, fw)
        for b in range(3):
            assert fw.logz[b].item() == pytest.approx(ref_z[b].item(), abs=1e-9)
            assert torch.allclose(occ[b, : lens[b]], ref_g[b], atol=1e-9)
            assert torch.all(occ[b, lens[b] :] == 0)


def test_occupancy_adds_scaled_into_a_buffer(monkeypatch) -> None:
    """``out=``/``scale=`` (one gradient buffer for several terms) across several occupancy blocks."""
    monkeypatch.setattr(fb, "_BLOCK", 4)
    fsa = random_graph(5)
    x = torch.randn(4, 11, 4, dtype=D, generator=torch.Generator().manual_seed(6))
    lens = torch.tensor([11, 8, 11, 5])
    layout = den_layout(x, fsa)
    fw = fb.forward_pass(layout, x, lens)
    full = fb.occupancy(layout, x, lens, fw)
    scale = torch.tensor([1.0, 2.0, -1.0, 0.5], dtype=D)
    out = torch.ones(4, 11, 4, dtype=D)
    fb.occupancy(layout, x, lens, fw, out=out, scale=scale)
    assert torch.allclose(out, 1 + full * scale[:, None, None], atol=1e-12)


# ---------------------------------------------------------------------------- bench_train breakdown
def test_breakdown_step_gives_the_real_steps_gradients(tmp_path) -> None:
    """The timed parts (teacher, student, each loss term forward + backward, student backward) give
    the same parameter gradients as the task's one-backward training step."""
    from model_fixtures import tiny

    from distill.bench.train import Clock, breakdown_step, real_step
    from distill.losses.objective import DistillObjective, ObjectiveConfig
    from distill.models import build_model, make_student
    from distill.train.tasks import DistillTask

    v = 8
    den = bigram_den(tmp_path, v)
    torch.manual_seed(0)
    teacher = build_model(tiny(vocab_size=v), v)
    student = make_student(teacher, tiny(vocab_size=v, num_hidden_layers=1))
    cfg = ObjectiveConfig(alpha=0.8, beta=0.8, ctc_weight=0.1)

    def dims(m):
        return (m.config.num_hidden_layers, m.config.hidden_size, m.config.feature_dim)

    task = DistillTask(student, teacher, DistillObjective(cfg, den, dims(student), dims(teacher))).train()
    batch = {
        "audio": torch.randn(2, 8000) * 0.1,
        "audio_lens": torch.tensor([8000, 6000]),
        "tokens": [[1, 2, 3], [4, 5]],
        "cut_ids": ["a", "b"],
    }

    class Capture:
        def step(self) -> None:
            self.grads = {n: p.grad.clone() for n, p in task.named_parameters() if p.grad is not None}

        def zero_grad(self, set_to_none: bool = True) -> None:
            task.zero_grad(set_to_none=set_to_none)

    import contextlib

    got = {}
    for name, fn in (("real", real_step), ("parts", breakdown_step)):
        torch.manual_seed(1)  # the same dropout draws
        opt = Capture()
        clock = Clock(torch.device("cpu"))
        fn(task, batch, opt, contextlib.nullcontext, clock)
        got[name] = opt.grads
        if name == "parts":
            assert {
                "teacher forward",
                "student forward",
                "loss hid",
                "loss out",
                "loss mmi_kd",
                "loss ctc",
                "student backward",
                "optimizer",
            } <= set(clock.cpu)
    assert got["real"].keys() == got["parts"].keys() and len(got["real"]) > 10
    for n, g in got["real"].items():
        assert torch.allclose(g, got["parts"][n], atol=1e-6, rtol=1e-4), n
