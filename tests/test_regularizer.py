"""Marginal-alignment regularizer (reflowma.regularizer), float64 checks against closed forms."""

import math

import pytest
import torch
from torch import nn

from reflowma.objectives import marginal as regularizer

DT = torch.float64


class Linear(nn.Module):
    """v(x, t) = W x + b (t ignored)."""

    def __init__(self, W, b):
        super().__init__()
        self.W = nn.Parameter(W.clone())
        self.b = nn.Parameter(b.clone())

    def forward(self, x, t):
        return x @ self.W.T + self.b


def _gauss_kl(mq, Sq, mp, Sp):
    """KL(N(mq, Sq) || N(mp, Sp))."""
    d = mq.shape[0]
    Spi = torch.linalg.inv(Sp)
    dm = mp - mq
    return 0.5 * (torch.trace(Spi @ Sq) + dm @ Spi @ dm - d + torch.logdet(Sp) - torch.logdet(Sq))


def _moment_matched(n, m, S, g):
    """n samples with empirical mean m and (1/n) covariance S exactly."""
    w = torch.randn(n, m.shape[0], generator=g, dtype=DT)
    w = w - w.mean(0)
    Lw = torch.linalg.cholesky(w.T @ w / n)
    w = torch.linalg.solve_triangular(Lw, w.T, upper=False).T  # whitened: cov I
    return m + w @ torch.linalg.cholesky(S).T


def _setup():
    g = torch.Generator().manual_seed(0)
    d = 3
    A0 = torch.randn(d, d, generator=g, dtype=DT)
    A1 = torch.randn(d, d, generator=g, dtype=DT)
    S0 = A0 @ A0.T / d + 0.5 * torch.eye(d, dtype=DT)
    S1 = A1 @ A1.T / d + 0.5 * torch.eye(d, dtype=DT)
    m0 = torch.randn(d, generator=g, dtype=DT)
    m1 = torch.randn(d, generator=g, dtype=DT)
    W = 0.3 * torch.randn(d, d, generator=g, dtype=DT)
    b = 0.3 * torch.randn(d, generator=g, dtype=DT)
    x = _moment_matched(512, m0, S0, g)
    return d, m0, S0, m1, S1, W, b, x


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _grad_errors(stop_grad, last=False, eps=0.05):
    """Relative errors (W, b) of the surrogate's gradient vs finite differences of the KL.

    Non-last window (K=2, k=0): the target is p_{t_1} = N(m1, S1) with its exact score.
    Last window (K=2, k=1, rescale_end): data N(m1, S1); the score of p_t (Gaussian teacher) is
    queried at t = 1 - eps on (1 - eps) y, which must give the reverse-KL gradient towards
    N(m1, S1 + (eps / (1 - eps))^2 I), i.e. p_1 smoothed without shifting it.
    """
    d, m0, S0, m1, S1, W, b, x = _setup()
    K, h = 2, 0.5
    k = 1 if last else 0
    S1i = torch.linalg.inv(S1)
    eye = torch.eye(d, dtype=DT)

    def score_fn(y, t):
        if not last:
            return -(y - m1) @ S1i.T
        tv = float(t[0])
        Ct = (1 - tv) ** 2 * eye + tv**2 * S1
        return -(y - tv * m1) @ torch.linalg.inv(Ct).T

    target = S1 + (eps / (1 - eps)) ** 2 * eye if last else S1
    v = Linear(W, b)
    L, _ = regularizer.surrogate(v, score_fn, x, torch.full((x.shape[0],), k), K,
                                 logdet="exact", fold_delta=None, stop_grad=stop_grad,
                                 eps=eps, rescale_end=True)
    gW, gb = torch.autograd.grad(L, [v.W, v.b])

    def kl(Wp, bp):
        A = torch.eye(d, dtype=DT) + h * Wp
        return _gauss_kl(A @ m0 + h * bp, A @ S0 @ A.T, m1, target)

    eps = 1e-6
    fW = torch.zeros_like(W)
    fb = torch.zeros_like(b)
    for i in range(d):
        for j in range(d):
            E = torch.zeros_like(W)
            E[i, j] = eps
            fW[i, j] = (kl(W + E, b) - kl(W - E, b)) / (2 * eps)
        e = torch.zeros_like(b)
        e[i] = eps
        fb[i] = (kl(W, b + e) - kl(W, b - e)) / (2 * eps)
    return _rel(gW, fW), _rel(gb, fb)


def test_gradient_matches_closed_form_kl():
    eW, eb = _grad_errors(stop_grad=True)
    print(f"stop_grad=True: rel err W {eW:.2e}, b {eb:.2e}")
    assert eW < 1e-6 and eb < 1e-6


def test_gradient_last_window_rescaled_end():
    eW, eb = _grad_errors(stop_grad=True, last=True)
    print(f"last window, rescale_end: rel err W {eW:.2e}, b {eb:.2e}")
    assert eW < 1e-6 and eb < 1e-6


def test_gradient_wrong_without_stop_grad():
    eW, eb = _grad_errors(stop_grad=False)
    print(f"stop_grad=False: rel err W {eW:.3f}, b {eb:.3f}")
    assert max(eW, eb) > 0.1


def _mlp():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3)).double()

    def v(x, t):
        return net(torch.cat([x, t[:, None]], -1))

    return v


def _ref_trace(v, x, t, h):
    J = torch.func.vmap(torch.func.jacrev(lambda xi, ti: v(xi[None], ti[None])[0]))(x, t)
    return h * J.diagonal(dim1=-2, dim2=-1).sum(-1)


def test_trace_exact_and_hutchinson_unbiased():
    v = _mlp()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, generator=g, dtype=DT).requires_grad_(True)
    t = torch.rand(6, generator=g, dtype=DT)
    h = 0.25
    ref = _ref_trace(v, x, t, h)
    vx = v(x, t)
    tr = regularizer.logdet_trace(vx, x, h)
    assert torch.allclose(tr, ref, rtol=0, atol=1e-13)
    M = 2000
    est = torch.stack([regularizer.logdet_hutchinson(vx, x, h, 1, g) for _ in range(M)])
    mean, se = est.mean(0), est.std(0) / math.sqrt(M)
    assert torch.all(se > 0)
    assert torch.all((mean - ref).abs() < 5 * se), ((mean - ref) / se)
    # n_probes averages single probes: same mean, smaller spread
    many = torch.stack([regularizer.logdet_hutchinson(vx, x, h, 16, g) for _ in range(200)])
    assert torch.all(many.std(0) < est.std(0))


def test_fold_barrier_c1():
    delta = 1e-3
    assert regularizer.barrier_log(torch.tensor([delta], dtype=DT), delta).item() == \
        pytest.approx(math.log(delta), abs=1e-15)
    for dd in (1e-9, 1e-7):
        lo = torch.tensor([delta - dd], dtype=DT, requires_grad=True)
        hi = torch.tensor([delta + dd], dtype=DT, requires_grad=True)
        flo, fhi = regularizer.barrier_log(lo, delta), regularizer.barrier_log(hi, delta)
        assert abs(float((fhi - flo).detach())) < 3 * dd / delta  # continuous, slope 1/delta
        glo = torch.autograd.grad(flo.sum(), lo)[0]
        ghi = torch.autograd.grad(fhi.sum(), hi)[0]
        assert float(glo) == pytest.approx(1 / delta, rel=1e-12)
        assert float(ghi) == pytest.approx(1 / delta, rel=2 * dd / delta)  # C^1 at delta
    above = torch.tensor([2e-3, 0.1, 1.0, 7.0], dtype=DT)
    assert torch.allclose(regularizer.barrier_log(above, delta), above.log(), rtol=0, atol=1e-15)
    below = torch.tensor([-2.0, -1e-3, 0.0, 5e-4], dtype=DT)
    lin = math.log(delta) + (below - delta) / delta
    out = regularizer.barrier_log(below, delta)
    assert torch.all(torch.isfinite(out)) and torch.allclose(out, lin, rtol=0, atol=1e-12)
    # a folded point has a gradient pushing det up (not rewarded like log|det| would)
    det = torch.tensor([-0.5], dtype=DT, requires_grad=True)
    assert float(torch.autograd.grad(regularizer.barrier_log(det, delta).sum(), det)[0]) > 0


@pytest.mark.parametrize("rescale", [True, False])
def test_last_window_score_query(rescale):
    v = _mlp()
    eps, K = 0.05, 2
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 3, generator=g, dtype=DT)
    k = torch.tensor([0, 1, 1, 0, 1, 0])
    seen = {}

    def score_fn(y, t):
        seen["y"], seen["t"] = y.detach().clone(), t.detach().clone()
        return -y

    regularizer.surrogate(v, score_fn, x, k, K, logdet="exact", eps=eps, rescale_end=rescale)
    with torch.no_grad():
        y = x + 0.5 * v(x, k.to(DT) / K)
    last = k == 1
    assert torch.allclose(seen["t"][last], torch.full((3,), 1 - eps, dtype=DT), atol=0)
    assert torch.allclose(seen["t"][~last], torch.full((3,), 0.5, dtype=DT), atol=0)
    scale = (1 - eps) if rescale else 1.0
    assert torch.allclose(seen["y"][last], scale * y[last], rtol=0, atol=1e-14)
    assert torch.allclose(seen["y"][~last], y[~last], rtol=0, atol=1e-14)
