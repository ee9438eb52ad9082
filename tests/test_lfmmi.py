"""LF-MMI engine against a brute-force path-enumeration oracle, gradcheck, properties and bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from distill.graph import Fsa, ctc_topo
from distill.losses import LFMMILoss, den_log_z, den_occupancy, fb, lfmmi_kd_loss, reduce_finite

D = torch.float64


# ---------------------------------------------------------------------------- oracle
def random_graph(seed: int, n: int = 5, v: int = 3, arcs: int = 14) -> Fsa:
    """Small random graph: parallel arcs, several finals with different weights, an unreachable state."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, n - 1, (arcs,), generator=g)
    dst = torch.randint(0, n - 1, (arcs,), generator=g)
    lab = torch.randint(0, v, (arcs,), generator=g)
    # parallel arcs: same states, same and different label
    src = torch.cat([src, src[:2], torch.tensor([n - 1])])
    dst = torch.cat([dst, dst[:2], torch.tensor([0])])  # state n-1 is unreachable
    lab = torch.cat([lab, lab[:1], (lab[1:2] + 1) % v, torch.tensor([1])])
    score = torch.randn(src.numel(), generator=g, dtype=D)
    final = torch.randn(n, generator=g, dtype=D)
    final[torch.rand(n, generator=g) < 0.3] = -math.inf
    final[0] = -0.5  # at least one final state
    return Fsa(src, dst, lab, score, 0, final)


def collapse(labels: tuple[int, ...]) -> list[int]:
    out, prev = [], 0
    for lab in labels:
        if lab != 0 and lab != prev:
            out.append(lab)
        prev = lab
    return out


def oracle(fsa: Fsa, x: torch.Tensor, target: list[int] | None = None) -> tuple[float, torch.Tensor]:
    """(logZ, occupancy [T, V]) by enumerating every path of len(x) frames (optionally only those whose
    CTC collapse is ``target``)."""
    t_n, v_n = x.shape
    out = [(fsa.start, 0.0, ())]
    arcs = list(zip(fsa.src.tolist(), fsa.dst.tolist(), fsa.label.tolist(), fsa.score.tolist()))
    for t in range(t_n):
        out = [
            (d, w + sc + float(x[t, lab]), labs + (lab,)) for (s, w, labs) in out for (a, d, lab, sc) in arcs if a == s
        ]
    ws, labss = [], []
    for s, w, labs in out:
        f = float(fsa.final[s])
        if f == -math.inf or (target is not None and collapse(labs) != target):
            continue
        ws.append(w + f)
        labss.append(labs)
    if not ws:
        return -math.inf, torch.zeros(t_n, v_n, dtype=D)
    w = torch.tensor(ws, dtype=D)
    logz = float(torch.logsumexp(w, 0))
    post = torch.exp(w - logz)
    occ = torch.zeros(t_n, v_n, dtype=D)
    for p, labs in zip(post, labss):
        for t, lab in enumerate(labs):
            occ[t, lab] += p
    return logz, occ


def batch(seed: int, b: int = 3, t: int = 4, v: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, v, generator=g, dtype=D)
    lens = torch.tensor([t, t - 1, max(t - 2, 1)][:b])
    return x, lens


# ---------------------------------------------------------------------------- vs oracle
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mode", ["dense", "csr"])
def test_den_log_z_and_occupancy_match_oracle(seed: int, mode: str) -> None:
    fsa = random_graph(seed)
    x, lens = batch(seed)
    x.requires_grad_(True)
    g = fb.CompiledGraph(fsa, torch.device("cpu"), D, mode=mode)
    assert g.mode == mode
    layout = fb.SharedLayout(g, x.shape[0], x.shape[2])
    from distill.losses.lfmmi import _LogZ

    for ck in (1, 2, 0):
        logz = _LogZ.apply(x, layout, lens, ck)
        (grad,) = torch.autograd.grad(logz.sum(), x)
        for b in range(x.shape[0]):
            ref_z, ref_occ = oracle(fsa, x[b, : lens[b]].detach())
            assert logz[b].item() == pytest.approx(ref_z, abs=1e-6)
            assert torch.allclose(grad[b, : lens[b]], ref_occ, atol=1e-6)
            assert torch.all(grad[b, lens[b] :] == 0)
    occ = den_occupancy(x.detach(), lens, fsa)
    for b in range(x.shape[0]):
        assert torch.allclose(occ[b, : lens[b]], oracle(fsa, x[b, : lens[b]].detach())[1], atol=1e-6)
    assert torch.allclose(
        den_log_z(x.detach(), lens, fsa),
        torch.tensor([oracle(fsa, x[b, : lens[b]].detach())[0] for b in range(3)], dtype=D),
    )


@pytest.mark.parametrize("seed", range(4))
def test_lfmmi_and_kd_match_oracle(seed: int) -> None:
    fsa = random_graph(seed)
    x, lens = batch(seed)
    targets = [[1, 2], [2], [1]]
    x.requires_grad_(True)
    loss = LFMMILoss(fsa, den_scale=1.0)(x, lens, targets)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    for b in range(3):
        xb = x[b, : lens[b]].detach()
        zd, od = oracle(fsa, xb)
        zn, on = oracle(fsa, xb, targets[b])
        if zn == -math.inf:
            assert loss[b].item() == math.inf
            assert torch.allclose(grad[b, : lens[b]], od, atol=1e-6)  # only the den part remains
        else:
            assert loss[b].item() == pytest.approx(-(zn - zd), abs=1e-6)
            assert torch.allclose(grad[b, : lens[b]], od - on, atol=1e-6)
        assert torch.all(grad[b, lens[b] :] == 0)
    # den_scale != 1
    loss2 = LFMMILoss(fsa, den_scale=0.5)(x.detach(), lens, targets)
    for b in range(3):
        xb = x[b, : lens[b]].detach()
        zn = oracle(fsa, xb, targets[b])[0]
        if zn > -math.inf:
            assert loss2[b].item() == pytest.approx(-(zn - 0.5 * oracle(fsa, xb)[0]), abs=1e-6)
    # distillation loss
    teacher = torch.randn(x.shape, generator=torch.Generator().manual_seed(99), dtype=D)
    kd = lfmmi_kd_loss(x, teacher, lens, fsa)
    (gk,) = torch.autograd.grad(kd.sum(), x)
    for b in range(3):
        xb = x[b, : lens[b]].detach()
        zs, os_ = oracle(fsa, xb)
        _, ot = oracle(fsa, teacher[b, : lens[b]])
        assert kd[b].item() == pytest.approx(zs - float((ot * xb).sum()), abs=1e-6)
        assert torch.allclose(gk[b, : lens[b]], os_ - ot, atol=1e-6)


def test_numerator_oracle_many_targets() -> None:
    """Numerators for every short target (repeats, empty, too long) against the oracle."""
    fsa = random_graph(7, n=4, v=3, arcs=12)
    x = torch.randn(1, 4, 3, dtype=D, generator=torch.Generator().manual_seed(3))
    lens = torch.tensor([4])
    zd = oracle(fsa, x[0])[0]
    for u in range(0, 4):
        for tgt in itertools.product([1, 2], repeat=u):
            loss = LFMMILoss(fsa)(x, lens, [list(tgt)])
            zn = oracle(fsa, x[0], list(tgt))[0]
            expect = math.inf if zn == -math.inf else -(zn - zd)
            assert loss.item() == pytest.approx(expect, abs=1e-6), tgt


# ---------------------------------------------------------------------------- gradcheck
def test_gradcheck_all_four_functions() -> None:
    fsa = random_graph(1)
    x, lens = batch(1, b=2, t=3)
    x.requires_grad_(True)
    teacher = torch.randn(x.shape, dtype=D, generator=torch.Generator().manual_seed(5))
    cands = [[1], [2], [1, 2], [2, 1], [1, 1], [2, 2], []]
    targets = [next(c for c in cands if oracle(fsa, x[b, : lens[b]].detach(), c)[0] > -math.inf) for b in range(2)]
    assert torch.isfinite(LFMMILoss(fsa)(x, lens, targets)).all()
    assert torch.autograd.gradcheck(lambda s: den_log_z(s, lens, fsa), (x,))
    assert torch.autograd.gradcheck(lambda s: den_occupancy(s, lens, fsa), (x,))
    assert torch.autograd.gradcheck(lambda s: LFMMILoss(fsa)(s, lens, targets), (x,))
    assert torch.autograd.gradcheck(lambda s: lfmmi_kd_loss(s, teacher, lens, fsa), (x,))


# ---------------------------------------------------------------------------- properties
def test_properties_on_ctc_topology() -> None:
    v, t_n = 5, 30
    den = ctc_topo(v)
    torch.manual_seed(0)
    x = torch.randn(3, t_n, v, dtype=D).log_softmax(-1).requires_grad_(True)
    lens = torch.tensor([30, 17, 9])
    targets = [[1, 2, 2, 3], [4, 4], [1]]
    occ = den_occupancy(x.detach(), lens, den)
    for b in range(3):
        assert torch.allclose(occ[b, : lens[b]].sum(-1), torch.ones(int(lens[b]), dtype=D), atol=1e-9)
        assert torch.all(occ[b, lens[b] :] == 0)
    loss = LFMMILoss(den)(x, lens, targets)
    assert torch.all(loss >= -1e-9)
    # flat P: the numerator is CTC (the den of a log-softmax over the CTC topology has logZ = 0)
    assert torch.allclose(den_log_z(x.detach(), lens, den), torch.zeros(3, dtype=D), atol=1e-9)
    flat = torch.cat([torch.tensor(t) for t in targets])
    ctc = torch.nn.functional.ctc_loss(
        x.detach().transpose(0, 1), flat, lens, torch.tensor([4, 2, 1]), blank=0, reduction="none"
    )
    assert torch.allclose(loss.detach(), ctc, atol=1e-8)
    # gradient: padded frames zero
    (grad,) = torch.autograd.grad(loss.sum(), x)
    for b in range(3):
        assert torch.all(grad[b, lens[b] :] == 0)
    # invariance to a per-frame constant, for every function
    shift = torch.randn(3, t_n, 1, dtype=D) * 10
    y = x.detach() + shift
    teacher = torch.randn(3, t_n, v, dtype=D)
    assert torch.allclose(LFMMILoss(den)(y, lens, targets), loss.detach(), atol=1e-8)
    assert torch.allclose(den_occupancy(y, lens, den), occ, atol=1e-9)
    kd = lfmmi_kd_loss(x.detach(), teacher, lens, den)
    assert torch.allclose(lfmmi_kd_loss(y, teacher + shift.flip(0), lens, den), kd, atol=1e-8)
    lz = den_log_z(x.detach(), lens, den)
    valid = (torch.arange(t_n)[None] < lens[:, None]).to(D)
    assert torch.allclose(den_log_z(y, lens, den), lz + (shift[..., 0] * valid).sum(1), atol=1e-8)
    # student = teacher: zero gradient
    s = teacher.clone().requires_grad_(True)
    (gk,) = torch.autograd.grad(lfmmi_kd_loss(s, teacher, lens, den).sum(), s)
    assert gk.abs().max() < 1e-12


def test_long_utterance_is_stable() -> None:
    """T in the thousands with peaky float32 log-softmax scores: finite, exact vs ctc_loss (a
    probability-space numerator loses ~1000 nats here: doomed or lagging prefixes underflow the rest)."""
    v, t_n = 6, 2000
    torch.manual_seed(1)
    x = (torch.randn(2, t_n, v) * 8).log_softmax(-1).requires_grad_(True)
    lens = torch.tensor([t_n, 1200])
    targets = [[1, 2, 3, 4, 5] * 40, [5, 4, 3] * 30]
    loss = LFMMILoss(ctc_topo(v))(x, lens, targets)
    flat = torch.cat([torch.tensor(t) for t in targets])
    ctc = torch.nn.functional.ctc_loss(
        x.detach().double().transpose(0, 1), flat, lens, torch.tensor([200, 90]), blank=0, reduction="none"
    )
    assert torch.isfinite(loss).all()
    assert torch.allclose(loss.detach().double(), ctc, rtol=1e-5)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    assert torch.isfinite(grad).all() and grad.dtype == torch.float32


def test_unreachable_numerator_and_reduce_finite() -> None:
    den = ctc_topo(4)
    x = torch.randn(3, 4, 4, dtype=D).requires_grad_(True)
    lens = torch.tensor([4, 4, 2])
    targets = [[1, 2], [1, 1, 1], [3]]  # [1,1,1] needs 5 frames
    loss = LFMMILoss(den)(x, lens, targets)
    assert math.isinf(loss[1].item()) and loss[1] > 0
    assert torch.isfinite(loss[[0, 2]]).all()
    total, dropped = reduce_finite(loss)
    assert dropped == 1 and torch.isfinite(total)
    (grad,) = torch.autograd.grad(total, x)
    assert torch.isfinite(grad).all()
    assert torch.all(grad[1] == 0)
    ok = LFMMILoss(den)(x[[0, 2]], lens[[0, 2]], [targets[0], targets[2]])
    assert torch.allclose(loss[[0, 2]], ok)
    # a NaN utterance is dropped too and does not poison the others
    y = x.detach().clone()
    y[0, 1, 2] = float("nan")
    loss = LFMMILoss(den)(y.requires_grad_(True), lens, targets)
    total, dropped = reduce_finite(loss)
    assert dropped == 2 and torch.isfinite(total)
    (grad,) = torch.autograd.grad(total, y)
    assert torch.isfinite(grad).all()


def test_bad_input_raises() -> None:
    den = ctc_topo(4)
    x = torch.randn(2, 5, 4)
    lens = torch.tensor([5, 3])
    loss = LFMMILoss(den)
    with pytest.raises(ValueError, match=r"targets\[1\]\[0\] = 4 is not a token id"):
        loss(x, lens, [[1], [4]])
    with pytest.raises(ValueError, match=r"targets\[0\]\[1\] = 0"):
        loss(x, lens, [[1, 0], [2]])
    with pytest.raises(ValueError, match=r"targets\[0\]\[0\] = -1"):
        loss(x, lens, [[-1], [2]])
    with pytest.raises(ValueError, match=r"lengths\[1\] = 6 exceeds"):
        loss(x, torch.tensor([5, 6]), [[1], [2]])
    with pytest.raises(ValueError, match=r"lengths\[0\] = -1 is negative"):
        den_log_z(x, torch.tensor([-1, 3]), den)
    with pytest.raises(ValueError, match="empty batch"):
        den_occupancy(torch.zeros(0, 5, 4), torch.zeros(0, dtype=torch.long), den)
    with pytest.raises(ValueError, match="empty batch"):
        loss(torch.zeros(0, 5, 4), torch.zeros(0, dtype=torch.long), [])
    with pytest.raises(ValueError, match="targets has 1 entries"):
        loss(x, lens, [[1]])
    with pytest.raises(ValueError, match="uses label 3 but scores have only V = 3"):
        den_log_z(x[..., :3], lens, den)
    with pytest.raises(ValueError, match=r"\[B, T, V\]"):
        den_log_z(x[0], lens, den)
    with pytest.raises(ValueError, match="differ in shape"):
        lfmmi_kd_loss(x, x[:, :4], torch.tensor([4, 3]), den)


def test_factored_den_matches_dense(tmp_path) -> None:
    """The rank-one + sparse (back-off) form of a real den graph gives the dense results."""
    from distill.graph.den import build_den_graph

    v = 8
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(1, 6, (int(n),), generator=gen).tolist() for n in torch.randint(1, 9, (40,), generator=gen)]
    den = build_den_graph(["<blk>"] + [f"t{i}" for i in range(1, v)], seqs, tmp_path / "P.arpa", method="direct")
    x = torch.randn(3, 12, v, dtype=D, generator=gen).log_softmax(-1)
    lens = torch.tensor([12, 9, 5])
    res = {}
    for mode in ("dense", "factored"):
        g = fb.CompiledGraph(den, torch.device("cpu"), D, mode=mode)
        assert g.mode == mode
        lay = fb.SharedLayout(g, 3, v)
        fw = fb.forward_pass(lay, x, lens, checkpoint=4)
        res[mode] = (fw.logz, fb.occupancy(lay, x, lens, fw))
        if mode == "factored":
            assert g.r_nnz < g.nnz  # the back-off part went into the rank-one term
    assert torch.allclose(res["dense"][0], res["factored"][0], atol=1e-10)
    assert torch.allclose(res["dense"][1], res["factored"][1], atol=1e-10)


def test_zero_length_and_empty_target() -> None:
    fsa = random_graph(2)
    x = torch.randn(2, 3, 3, dtype=D)
    lens = torch.tensor([0, 3])
    lz = den_log_z(x, lens, fsa)
    assert lz[0].item() == pytest.approx(float(fsa.final[fsa.start]))
    loss = LFMMILoss(fsa)(x, lens, [[], [1]])
    assert loss[0].item() == pytest.approx(0.0, abs=1e-9)


@pytest.mark.gpu
def test_cpu_cuda_agree() -> None:
    fsa = random_graph(3)
    x, lens = batch(3)
    targets = [[1, 2], [2], [1]]
    teacher = torch.randn(x.shape, dtype=D)
    out = {}
    for dev in ("cpu", "cuda"):
        xd = x.to(dev).requires_grad_(True)
        loss = LFMMILoss(fsa.to(dev))(xd, lens.to(dev), targets)
        kd = lfmmi_kd_loss(xd, teacher.to(dev), lens.to(dev), fsa)
        (g,) = torch.autograd.grad(torch.where(torch.isfinite(loss), loss, 0).sum() + kd.sum(), xd)
        out[dev] = (loss.detach().cpu(), kd.detach().cpu(), g.cpu(), den_occupancy(x.to(dev), lens, fsa).cpu())
    for a, b in zip(out["cpu"], out["cuda"]):
        assert torch.allclose(a, b, atol=1e-9, equal_nan=True)
