"""log|det(I + hJ)| and its approximations: the truncated series (``regularizer.logdet:
series``) against closed forms, inside and outside its radius of convergence; its estimator in
the regularizer (forward and reverse mode); the log-det diagnostics of evaluate
(``evaluation.logdet_gap``); the exact log-det of a UNet by forward mode. Float64 throughout."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from reflowma.core import logdet as LD
from reflowma.core.autodiff import batch_jacobian
from reflowma.evaluation import logdet_gap
from reflowma.models import mlp, unet
from reflowma.objectives import marginal

DT = torch.float64


def _matrix(d: int, radius: float, seed: int = 0) -> torch.Tensor:
    """A non-symmetric d x d matrix with spectral radius ``radius``."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=DT)
    return A * (radius / float(torch.linalg.eigvals(A).abs().max()))


def _series_error(A: torch.Tensor, order: int) -> float:
    exact, _ = LD.exact(A[None])
    return abs(float(LD.series(LD.power_traces(A[None], order))[0] - exact[0]))


def test_series_converges_inside_its_radius_within_the_remainder_bound():
    """rho(A) = 0.6: the error of the order-n series stays below the per-eigenvalue remainder
    bound sum_i |l_i|^{n+1} / ((n + 1)(1 - |l_i|)) (which falls to 0; complex eigenvalues
    make the error itself oscillate), 1e-4 at n = 16."""
    A = _matrix(6, 0.6)
    lam = torch.linalg.eigvals(A).abs()
    errors = [_series_error(A, n) for n in range(1, 17)]
    for n, err in enumerate(errors, start=1):
        bound = float((lam ** (n + 1) / ((n + 1) * (1 - lam))).sum())
        assert err <= bound * (1 + 1e-9), (n, err, bound)
    assert errors[-1] < 1e-4 and errors[-1] < errors[0] / 100


def test_series_diverges_outside_its_radius():
    """rho(A) = 1.5 (one eigenvalue 1.5, det(I + A) > 0): the terms grow like 1.5^k / k, so a
    higher order is further from the exact value, without bound."""
    A = torch.diag(torch.tensor([1.5, 0.3, -0.2], dtype=DT))
    errors = [_series_error(A, n) for n in (2, 4, 8, 16)]
    assert all(b > a for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] > 10 * errors[0]


def test_power_traces_and_quads_closed_form():
    A = _matrix(4, 0.9, seed=1)[None]
    probes = LD.rademacher((3, 1, 4), torch.Generator().manual_seed(0))
    quads = LD.power_quads(A, probes, 3)
    for k in range(3):
        Ak = torch.linalg.matrix_power(A[0], k + 1)
        assert torch.allclose(LD.power_traces(A, 3)[k, 0], Ak.trace(), rtol=1e-13)
        for p in range(3):
            assert torch.allclose(quads[k, p, 0], probes[p, 0] @ Ak @ probes[p, 0], rtol=1e-13)


def test_hutchinson_mean_and_variance_over_all_probes():
    """Over all 2^d Rademacher probes (exact expectation), eps^T A^k eps averages to tr(A^k)
    and one probe's variance (k = 1) is hutchinson_variance's closed form."""
    d = 5
    A = _matrix(d, 0.8, seed=2)[None]
    probes = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=d)), dtype=DT)[:, None]
    quads = LD.power_quads(A, probes, 3)
    assert torch.allclose(quads.mean(1)[:, 0], LD.power_traces(A, 3)[:, 0], rtol=1e-12)
    var = quads[0, :, 0].var(unbiased=False)
    assert torch.allclose(var, LD.hutchinson_variance(A)[0], rtol=1e-12)


class Linear(nn.Module):
    """v(x, t) = W x + b: J = W everywhere (no ``jvp``: the reverse-mode path)."""

    def __init__(self, W):
        super().__init__()
        self.W = nn.Parameter(W.clone())

    def forward(self, x, t):
        return x @ self.W.T + 1.0


@pytest.mark.parametrize("order", [1, 2, 4])
def test_regularizer_series_on_a_linear_field_is_its_closed_form(order):
    """With v = W x, the series log-det of ``surrogate`` is, probe by probe,
    sum_k (-1)^{k+1} eps^T (hW)^k eps / k (the probes of ``rademacher`` from the same seed), and
    its mean over many probes is the exact-trace series, whose distance to log det(I + hW) is
    the truncation bias the remainder bound allows (eigenvalues of hW inside the unit disc)."""
    d, h = 4, 0.5
    W = _matrix(d, 1.4, seed=3)  # rho(hW) = 0.7
    v = Linear(W)
    x = torch.randn(8, d, dtype=DT).requires_grad_(True)
    est = marginal.logdet_series(v(x, None), x, h, order, 3, torch.Generator().manual_seed(7))
    probes = marginal.rademacher(3, x, torch.Generator().manual_seed(7))
    A = h * W.detach()
    ref = torch.stack([LD.series([torch.einsum("bi,ij,bj->b", probes[p],
                                               torch.linalg.matrix_power(A, k), probes[p])
                                  for k in range(1, order + 1)]) for p in range(3)]).mean(0)
    assert torch.allclose(est, ref, rtol=1e-12, atol=1e-13)
    # unbiased for the exact-trace series: 1500 single-probe estimates, 5 standard errors
    g = torch.Generator().manual_seed(8)
    xs = x[:1].detach().requires_grad_(True)
    vx = v(xs, None)
    many = torch.stack([marginal.logdet_series(vx, xs, h, order, 1, g)[0]
                        for _ in range(1500)]).detach()
    target = float(LD.series(LD.power_traces(A[None], order))[0])
    assert abs(float(many.mean()) - target) < 5 * float(many.std()) / math.sqrt(1500)
    exact = float(LD.exact(A[None])[0][0])
    lam = torch.linalg.eigvals(A).abs()
    bound = float((lam ** (order + 1) / ((order + 1) * (1 - lam))).sum())
    assert abs(target - exact) <= bound


def test_series_forward_and_reverse_modes_agree_with_gradients():
    """The MLP (own ``jvp``: chained tangents) and the same MLP behind a closure (reverse
    mode: chained VJPs) give the same series surrogate and parameter gradient (same probes)."""
    torch.manual_seed(0)
    net = mlp.MLPVelocity((3,), 16, 2, "silu").to(DT)

    def closure(x, t):
        return net(x, t)

    x = torch.randn(12, 3, dtype=DT)
    k = torch.tensor([0, 1] * 6)
    teacher = mlp.MLPVelocity((3,), 16, 2, "silu").to(DT)
    score = marginal.teacher_score_fn(teacher)
    out = []
    for v in (net, closure):
        L, _ = marginal.surrogate(v, score, x, k, 2, logdet="series", series_order=3,
                                  n_probes=2, generator=torch.Generator().manual_seed(4))
        g = torch.autograd.grad(L, list(net.parameters()))
        out.append((L.detach(), torch.cat([a.flatten() for a in g])))
    assert abs(float(out[0][0] - out[1][0])) < 1e-12 * abs(float(out[1][0]))
    assert float((out[0][1] - out[1][1]).norm() / out[1][1].norm()) < 1e-10


def _unet(d_side=4):
    torch.manual_seed(1)
    u = unet.UNetVelocity((1, d_side, d_side), 4, (1, 2), 1, (), 0.0, 1, 4).to(DT)
    for p in u.parameters():
        nn.init.normal_(p, std=0.1)  # the zero-initialised convs would make J = 0
    return u


def _grads(loss, net):
    """Flat parameter gradient (zeros for parameters J does not depend on, e.g. the output
    bias)."""
    gs = torch.autograd.grad(loss, list(net.parameters()), allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten()
                      for g, p in zip(gs, net.parameters(), strict=True)])


def test_unet_exact_logdet_by_forward_mode_matches_reverse_mode():
    """A UNet has no ``jvp``: ``exact`` goes through torch.func forward mode; same value and
    parameter gradient as the reverse-mode barrier log-det (d VJPs with create_graph)."""
    u = _unet()
    x, t = torch.randn(5, 1, 4, 4, dtype=DT), torch.full((5,), 0.5, dtype=DT)
    h, delta = 0.5, 1e-3
    _, ld, _ = marginal.velocity_and_logdet(u, x, t, h, "exact", delta, 1, None)
    g = _grads(ld.sum(), u)
    xr = x.clone().requires_grad_(True)
    ref, _ = marginal.logdet_exact(u(xr, t), xr, h, delta)
    assert torch.allclose(ld, ref, rtol=1e-10, atol=1e-12)
    ga, gb = g, _grads(ref.sum(), u)
    assert float((ga - gb).norm() / gb.norm()) < 1e-9


def test_jacobians_of_the_diagnostics_match_reverse_mode_in_chunks():
    u = _unet()
    x, t = torch.randn(3, 1, 4, 4, dtype=DT), torch.full((3,), 0.25, dtype=DT)
    xr = x.clone().requires_grad_(True)
    ref = batch_jacobian(u(xr, t), xr)
    for rows in (None, 3, 20):  # all tangents at once, one per call, 6 per call
        assert torch.allclose(logdet_gap.jacobians(u, x, t, rows), ref, rtol=1e-10,
                              atol=1e-12)


def test_window_gaps_of_a_diagonal_map():
    """A = diag(a): exact sum log|1 + a_i|, first order sum a_i, every probe gives tr A (so the
    Hutchinson gap is the first-order gap and its spread 0), series from the scalar Taylor
    sums; the spectral radius is max |a_i|; det < 0 where an odd number of a_i < -1."""
    a = torch.tensor([[0.5, -0.3, 0.2], [-1.5, 0.1, 0.0]], dtype=DT)
    A = torch.diag_embed(a)
    probes = LD.rademacher((4, 2, 3), torch.Generator().manual_seed(0))
    w = logdet_gap.window_gaps(A, probes, [2, 3])
    exact = torch.log((1 + a).abs()).sum(-1)
    first = a.sum(-1)
    assert w["exact"] == pytest.approx(float(exact.mean()), rel=1e-12)
    e = w["estimators"]
    gap1 = float((first - exact).abs().mean())
    assert e["first_order"]["gap_abs"] == pytest.approx(gap1, rel=1e-12)
    assert e["first_order"]["gap_rel"] == pytest.approx(gap1 / float(exact.abs().mean()))
    assert e["hutchinson"]["gap_abs"] == pytest.approx(gap1, rel=1e-12)
    assert e["hutchinson"]["probe_std"] == 0 and e["hutchinson"]["probe_std_exact"] == 0
    s3 = (a - a**2 / 2 + a**3 / 3).sum(-1)
    assert e["series3"]["mean"] == pytest.approx(float(s3.mean()), rel=1e-12)
    assert e["series3_hutchinson"]["gap_abs"] == pytest.approx(
        float((s3 - exact).abs().mean()), rel=1e-12)
    assert w["spectral_radius_max"] == pytest.approx(1.5)
    assert w["frac_radius_ge_1"] == 0.5 and w["folded"] == 0.5


def test_logdet_gaps_per_window_of_a_student():
    """Window k is evaluated at ends[:, k], t = k / K, h = 1 / K: its exact value is
    log|det(I + J / K)| of the reverse-mode Jacobian there."""
    u = _unet()
    K = 2
    ends = torch.randn(4, K + 1, 1, 4, 4, dtype=DT)
    out = logdet_gap.logdet_gaps(u, ends, K, 3, [2], torch.Generator().manual_seed(0), rows=16)
    assert [w["k"] for w in out["windows"]] == [0, 1]
    for w in out["windows"]:
        xr = ends[:, w["k"]].clone().requires_grad_(True)
        J = batch_jacobian(u(xr, torch.full((4,), w["k"] / K, dtype=DT)), xr)
        ref = torch.linalg.slogdet(torch.eye(16, dtype=DT) + J / K)[1].mean()
        assert w["h"] == 0.5 and w["exact"] == pytest.approx(float(ref), rel=1e-10)
        assert w["n_points"] == 4 and w["n_probes"] == 3


def test_series_order_changes_only_the_series_students_fingerprint():
    """``regularizer.series_order`` is read by ``logdet: series`` only: the other modes'
    fingerprints (resume state, student file) are those of a config without the field."""
    from reflowma.core.seeding import fingerprint
    from reflowma.infra import config
    from reflowma.stages.reflow import reflow_identity
    from reflowma.training.loop import identity

    cfg = config.stage_config("reflow", "toy")

    def fp(logdet, order=None):
        reg = {**cfg["regularizer"], "logdet": logdet}
        if order is None:
            reg.pop("series_order")
        else:
            reg["series_order"] = order
        return fingerprint(reflow_identity({**cfg, "regularizer": reg}), "sha", [0.0, 1.0])

    assert fp("exact", 2) == fp("exact", 5) == fp("exact")
    assert fp("series", 2) != fp("series", 3)
    assert reflow_identity(cfg)["regularizer"] != identity(cfg)["regularizer"]
