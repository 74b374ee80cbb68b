"""The fast audit path (exact divergence by the network's tangent pass or by d VJPs on one
forward pass, batched CNF integration) against
independent computations and against the previous, one-set-at-a-time implementation.

Tolerances: float64 throughout, and the new code performs the same per-row arithmetic as the
reference in another order (batch sizes and chunk boundaries differ, so BLAS may sum in another
order): differences are rounding level, ~1e-15 relative per evaluation, accumulated over a few
hundred RK4 stages. ``REL = 1e-10`` leaves five orders of margin, while a real mistake (a probe
on the wrong row, a set at the wrong time, a window paired with the wrong density) changes the
values at the 1e-3 level or more.
"""

import pytest
import torch

from reflowma import models
from reflowma.core import solvers
from reflowma.evaluation import audit, density
from reflowma.models import mlp

DT = torch.float64
REL = 1e-10
MU = torch.tensor([1.0, -2.0], dtype=DT)
S = torch.tensor([[2.0, 0.6], [0.6, 0.5]], dtype=DT)
I2 = torch.eye(2, dtype=DT)


def _gauss_B_Cinv(t):
    """Velocity of N(MU, S) data is ``MU + (B C^-1)(x - t MU)``; its divergence tr(B C^-1)."""
    C = (1 - t) ** 2 * I2 + t**2 * S
    return (t * S - (1 - t) * I2) @ torch.linalg.inv(C)


def gauss_velocity(x, t):
    tv = float(t[0])
    return MU + (x - tv * MU) @ _gauss_B_Cinv(tv).T


def _net(d, width=32, seed=0):
    torch.manual_seed(seed)
    return mlp.MLPVelocity((d,), width, 3).double().eval().requires_grad_(False)


# ---------------------------------------------------------------- the previous implementation


def _ref_divergence(v, x, t, probes):
    """Previous exact path: one forward/backward on d copies of the batch (copy i seeded e_i)."""
    with torch.enable_grad():
        if probes is None:
            B, d = x.shape[0], x[0].numel()
            xg = x.detach().repeat(d, *([1] * (x.dim() - 1))).requires_grad_(True)
            vx = v(xg, solvers.time_vector(t, xg))
            E = torch.eye(d, dtype=x.dtype).repeat_interleave(B, dim=0)
            g = torch.autograd.grad(vx, xg, grad_outputs=E.reshape(vx.shape))[0]
            return vx[:B].detach(), (g.reshape(d * B, -1) * E).sum(-1).reshape(d, B).sum(0)
        xg = x.detach().requires_grad_(True)
        vx = v(xg, solvers.time_vector(t, xg))
        div = sum((torch.autograd.grad((vx * e.reshape(vx.shape)).sum(), xg,
                                       retain_graph=True)[0] * e).reshape(x.shape[0], -1).sum(-1)
                  for e in probes)
    return vx.detach(), div / probes.shape[0]


def _ref_cnf_logp(v, x1, t1, steps, exact_max_dim=16, generator=None, chunk=2048, probes=1):
    """Previous ``cnf_logp``: one set, chunk by chunk, probes drawn per chunk."""
    if t1 <= 0:
        return density.std_normal_logp(x1)
    n, out = max(1, steps), []
    h, times = -t1 / n, [t1 * (n - i) / n for i in range(n + 1)]
    for lo in range(0, x1.shape[0], chunk):
        x = x1[lo: lo + chunk]
        pr = None
        if x[0].numel() > exact_max_dim:
            pr = (torch.randint(0, 2, (probes, *x.shape), generator=generator) * 2 - 1).to(x)
        acc = torch.zeros(x.shape[0], dtype=DT)
        for t, tn in zip(times[:-1], times[1:], strict=True):
            tm = 0.5 * (t + tn)
            k1, a1 = _ref_divergence(v, x, t, pr)
            k2, a2 = _ref_divergence(v, x + 0.5 * h * k1, tm, pr)
            k3, a3 = _ref_divergence(v, x + 0.5 * h * k2, tm, pr)
            k4, a4 = _ref_divergence(v, x + h * k3, tn, pr)
            x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            acc = acc - h / 6 * (a1 + 2 * a2 + 2 * a3 + a4)
        out.append(density.std_normal_logp(x) - acc)
    return torch.cat(out)


# ---------------------------------------------------------------- divergence


def _jacobian_trace(v, x, t):
    """Independent reference: trace of each sample's full Jacobian, one sample at a time."""
    tr = []
    for xi in x:
        J = torch.autograd.functional.jacobian(
            lambda a: v(a[None], torch.full((1,), t, dtype=DT))[0].reshape(-1), xi)
        tr.append(J.reshape(xi.numel(), xi.numel()).diagonal().sum())
    return torch.stack(tr)


def test_exact_divergence_gaussian_closed_form():
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=DT)
    for t in (0.0, 0.3, 1.0):
        vx, div = density._divergence(gauss_velocity, x, t, None)
        assert torch.allclose(vx, gauss_velocity(x, torch.full((50,), t, dtype=DT)), rtol=0,
                              atol=0)
        assert torch.allclose(div, torch.trace(_gauss_B_Cinv(t)).expand(50), rtol=1e-13,
                              atol=1e-13)


@pytest.mark.parametrize("d", [2, 16])
def test_exact_divergence_mlp(d):
    """The MLP has its own tangent pass (``jvp``): the forward-mode path."""
    net = _net(d)
    assert callable(getattr(net, "jvp", None))
    x = torch.randn(7, d, generator=torch.Generator().manual_seed(1), dtype=DT)
    vx, div = density._divergence(net, x, 0.4, None)
    ref = _jacobian_trace(net, x, 0.4)
    assert torch.allclose(div, ref, rtol=1e-12, atol=1e-12)
    assert torch.allclose(div, _ref_divergence(net, x, 0.4, None)[1], rtol=1e-12, atol=1e-12)
    assert torch.equal(vx, net(x, torch.full((7,), 0.4, dtype=DT)))


def test_exact_divergence_unet():
    """A tiny UNet on 1x4x4 images (d = 16: exact path); GroupNorm, attention and buffers; no
    tangent pass of its own: the VJP path."""
    cfg = {"name": "unet", "channels": 8, "channel_mult": [1, 2], "res_blocks": 1,
           "attention_resolutions": [4], "dropout": 0.0, "heads": 2, "norm_groups": 4}
    torch.manual_seed(0)
    net = models.build((1, 4, 4), cfg).double().eval().requires_grad_(False)
    with torch.no_grad():  # the output conv starts at zero (zero Jacobian): make it count
        net.out[-1].weight.normal_(0, 0.1)
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=DT)
    _, div = density._divergence(net, x, 0.7, None)
    ref = _jacobian_trace(net, x, 0.7)
    assert ref.abs().min() > 1e-3
    assert torch.allclose(div, ref, rtol=1e-11, atol=1e-12)


# ---------------------------------------------------------------- batched integration


@pytest.mark.parametrize("d,exact_max_dim,probes", [(2, 16, 1), (3, 2, 1), (3, 2, 3)])
def test_cnf_logp_many_equals_previous_separate_calls(d, exact_max_dim, probes):
    """Sets of unequal sizes, chunks smaller than the sets (boundaries inside sets), exact and
    Hutchinson (same generator: the same probes on the same row; with one probe the draws are
    one flat stream, with several their per-chunk layout [P, rows, d] matters)."""
    net = _net(d)
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(n, d, generator=g, dtype=DT) for n in (45, 20, 33)]
    for t1, steps in ((1.0, 8), (0.5, 4)):
        new = density.cnf_logp_many(net, xs, t1, steps, exact_max_dim, probes,
                                    torch.Generator().manual_seed(7), chunk=16)
        g_ref = torch.Generator().manual_seed(7)
        ref = [_ref_cnf_logp(net, x, t1, steps, exact_max_dim, g_ref, 16, probes) for x in xs]
        assert [a.shape for a in new] == [a.shape for a in ref]
        for a, b in zip(new, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=REL, atol=0)
    assert density.cnf_logp_many(net, xs, 0.0)[1].equal(density.std_normal_logp(xs[1]))


# ---------------------------------------------------------------- audits


@pytest.mark.parametrize("max_dim", [16, 1])  # exact (change of variables) / Hutchinson
def test_marginal_audit_equals_previous(max_dim):
    student, teacher = _net(2, seed=1), _net(2, seed=2)
    z = torch.randn(60, 2, generator=torch.Generator().manual_seed(4), dtype=DT)
    xt = torch.randn(40, 2, generator=torch.Generator().manual_seed(5), dtype=DT)
    cfg, K, nfes, k = {"logp_steps": 6, "knn_k": 3, "max_dim": max_dim}, 2, [1, 2, 4], 3
    out = audit.marginal_audit(student, teacher, z, K, nfes, cfg, teacher_samples=xt,
                               generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    for nfe in nfes:
        row = out["nfe"][str(nfe)]
        y, logq, _ = density.student_logq(student, z, solvers.sample_grid(nfe, K))
        lp = _ref_cnf_logp(teacher, y, 1.0, 6, max_dim, g)
        assert row["kl_knn"] == pytest.approx(density.kl_knn(y, lp, k), rel=REL)
        if max_dim >= 2:
            assert row["kl_exact"] == pytest.approx(density.kl_from_logratio(logq, lp), rel=REL)
            assert row["tv"] == pytest.approx(density.tv_from_logratio(logq, lp), rel=REL)
        else:
            assert row["kl_exact"] is None and row["tv"] is None
    lp = _ref_cnf_logp(teacher, xt, 1.0, 6, max_dim, g)
    assert out["teacher_kl_knn"] == pytest.approx(density.kl_knn(xt, lp, k), rel=REL)


@pytest.mark.parametrize("max_dim", [16, 1])
def test_local_window_audit_equals_previous(max_dim):
    student, teacher = _net(2, seed=1), _net(2, seed=2)
    K, steps, knn_k = 3, 6, 3
    ends = solvers.solve(teacher, torch.randn(50, 2, generator=torch.Generator().manual_seed(6),
                                              dtype=DT), [k / K for k in range(K + 1)], 12,
                         "rk4").transpose(0, 1)
    out = audit.local_window_audit(student, teacher, ends, K, steps, max_dim, knn_k,
                                   generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    h = 1.0 / K
    for k, row in enumerate(out["windows"]):
        t0, t1, x = k * h, (k + 1) * h, ends[:, k]
        y, ld, _ = density.euler_logdet(student, x, [t0, t1])
        lp1 = _ref_cnf_logp(teacher, y, t1, max(1, round(steps * t1)), max_dim, g)
        assert row["kl_knn"] == pytest.approx(density.kl_knn(y, lp1, knn_k), rel=REL)
        if max_dim >= 2:
            lq = _ref_cnf_logp(teacher, x, t0, max(1, round(steps * t0)), max_dim, g) - ld
            assert row["kl"] == pytest.approx(density.kl_from_logratio(lq, lp1), rel=REL)
            assert row["tv"] == pytest.approx(density.tv_from_logratio(lq, lp1), rel=REL)
        else:
            assert row["kl"] is None
