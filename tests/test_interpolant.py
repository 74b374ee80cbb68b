"""Interpolant, window grids, piecewise targets, score from velocity, time samplers.

References: hand-built couplings with a numpy loop, an independent closed-form velocity of a
Gaussian mixture, autograd of the mixture's log-density, and scipy's KS test.
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from reflowma.core import gmm, interpolant, time_samplers


def _ref_piecewise(ends: np.ndarray, t: np.ndarray, K: int):
    """Independent reference: a plain loop over the batch."""
    xs, tg, ks = [], [], []
    for b in range(ends.shape[0]):
        k = min(int(math.floor(t[b] * K)), K - 1)
        lo, hi = ends[b, k], ends[b, k + 1]
        u = (t[b] - k / K) * K
        xs.append(lo + u * (hi - lo))
        tg.append((hi - lo) * K)
        ks.append(k)
    return np.array(xs), np.array(tg), np.array(ks)


@pytest.mark.parametrize("K", [1, 2, 4])
def test_piecewise_pair_on_known_coupling(K):
    g = torch.Generator().manual_seed(K)
    B, d = 64, 3
    ends = torch.randn(B, K + 1, d, generator=g, dtype=torch.float64)
    boundaries = torch.tensor([k / K for k in range(K + 1)], dtype=torch.float64)
    t = torch.cat([boundaries, torch.rand(B - K - 1, generator=g, dtype=torch.float64)])
    xt, target = interpolant.piecewise_pair(ends, t, K)
    assert xt.shape == target.shape == (B, d)
    rx, rt, rk = _ref_piecewise(ends.numpy(), t.numpy(), K)
    np.testing.assert_allclose(xt.numpy(), rx, rtol=0, atol=1e-12)  # float64 round-off
    np.testing.assert_allclose(target.numpy(), rt, rtol=0, atol=1e-12)
    assert torch.equal(interpolant.window_of(t, K), torch.from_numpy(rk))
    # window index at the boundaries: t_k opens window k; t = 1 belongs to the last window
    assert interpolant.window_of(boundaries, K).tolist() == [*range(K), K - 1]
    # at t_k the point is the teacher state itself
    for k in range(K + 1):
        torch.testing.assert_close(xt[k], ends[k, k], rtol=0, atol=1e-12)
    # x_t lies on the segment of its window: x_t = lo + u (hi - lo) with u in [0, 1]
    k = torch.from_numpy(rk)
    lo, hi = ends[torch.arange(B), k], ends[torch.arange(B), k + 1]
    u = ((xt - lo) * (hi - lo)).sum(-1) / (hi - lo).pow(2).sum(-1)
    assert (u >= -1e-12).all() and (u <= 1 + 1e-12).all()
    torch.testing.assert_close(lo + u[:, None] * (hi - lo), xt, rtol=0, atol=1e-12)
    # and the target is that segment's slope
    torch.testing.assert_close(target, (hi - lo) * K, rtol=0, atol=1e-12)


def test_piecewise_pair_k1_is_the_linear_interpolant():
    g = torch.Generator().manual_seed(0)
    z, x = torch.randn(16, 2, generator=g), torch.randn(16, 2, generator=g)
    t = torch.rand(16, generator=g)
    xt, tgt = interpolant.piecewise_pair(torch.stack([z, x], 1), t, 1)
    torch.testing.assert_close(xt, (1 - t[:, None]) * z + t[:, None] * x)
    torch.testing.assert_close(tgt, x - z)


def test_window_start_pair():
    K = 4
    ends = torch.arange(3 * (K + 1) * 2, dtype=torch.float64).reshape(3, K + 1, 2) ** 2
    k = torch.tensor([0, 3, 2])
    x0, tgt, tk = interpolant.window_start_pair(ends, k, K)
    for b in range(3):
        kb = int(k[b])
        assert torch.equal(x0[b], ends[b, kb])
        torch.testing.assert_close(tgt[b], (ends[b, kb + 1] - ends[b, kb]) * K)
    assert tk.tolist() == [0.0, 0.75, 0.5]
    # consistent with piecewise_pair at t = t_k
    xt, tgt2 = interpolant.piecewise_pair(ends, tk, K)
    torch.testing.assert_close(xt, x0)
    torch.testing.assert_close(tgt2, tgt)


def test_union_grid_and_grid_indices():
    assert interpolant.union_grid([1, 2, 4]) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert interpolant.union_grid([4, 1, 4]) == [0.0, 0.25, 0.5, 0.75, 1.0]
    g = interpolant.union_grid([3, 2])
    np.testing.assert_allclose(g, [0, 1 / 3, 0.5, 2 / 3, 1], rtol=0, atol=1e-12)
    times = interpolant.union_grid([1, 2, 4])
    assert interpolant.grid_indices(times, 1) == [0, 4]
    assert interpolant.grid_indices(times, 2) == [0, 2, 4]
    assert interpolant.grid_indices(times, 4) == [0, 1, 2, 3, 4]
    assert interpolant.grid_indices(g, 3) == [0, 1, 3, 4]
    with pytest.raises(ValueError, match=r"does not contain the window end 0\.333.*K=3"):
        interpolant.grid_indices(times, 3)
    with pytest.raises(ValueError, match="K=8"):
        interpolant.grid_indices(times, 8)
    with pytest.raises(ValueError, match="K must be >= 1"):
        interpolant.window_grid(0)
    assert interpolant.window_grid(4).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]


def _velocity_reference(means: np.ndarray, s: float, x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """E[x1 - z | x_t = x] for x1 ~ (1/M) sum N(m_i, s^2 I), z ~ N(0, I), written from scratch:
    per component, c = t^2 s^2 + (1 - t)^2 and E[x1 - z | x_t, i] = m_i + (t s^2 - (1 - t)) / c
    (x_t - t m_i); mixed by the posterior responsibilities."""
    c = (t**2 * s**2 + (1 - t) ** 2)[:, None]                     # [B, 1]
    diff = x[:, None, :] - t[:, None, None] * means[None]        # [B, M, d]
    logr = -0.5 * (diff**2).sum(-1) / c
    r = np.exp(logr - logr.max(1, keepdims=True))
    r /= r.sum(1, keepdims=True)
    vi = means[None] + ((t[:, None] * s**2 - (1 - t[:, None])) / c)[..., None] * diff
    return (r[..., None] * vi).sum(1)


def test_score_from_velocity_exact_gmm():
    mix = gmm.eight_gaussians(dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    n = 400
    t = torch.linspace(0.05, 0.99, n, dtype=torch.float64)
    x1 = mix.sample(n, g)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    x = interpolant.interpolate(z, x1, t)  # samples of p_t
    v = mix.velocity(x, t)
    # gmm's velocity against the independent closed form (float64 round-off)
    ref = _velocity_reference(mix.means.numpy(), mix.std, x.numpy(), t.numpy())
    np.testing.assert_allclose(v.numpy(), ref, rtol=1e-10, atol=1e-10)
    s = interpolant.score_from_velocity(v, x, t)
    exact = mix.score(x, t)
    rel = ((s - exact).norm(dim=1) / exact.norm(dim=1)).max()
    assert rel < 1e-9, float(rel)  # float64; 1/(1-t) <= 100 amplifies round-off only
    # the score itself against autograd of the log-density (independent of gmm.score)
    xg = x.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(mix.log_prob(xg, t).sum(), xg)
    rel = ((s - auto).norm(dim=1) / auto.norm(dim=1)).max()
    assert rel < 1e-9, float(rel)


def test_score_from_velocity_rejects_t1():
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="t < 1"):
        interpolant.score_from_velocity(x, x, torch.tensor([0.5, 1.0]))


N_SAMPLES = 20000


@pytest.mark.parametrize("a", [1.0, 4.0, 8.0])
def test_u_shaped_matches_cosh_density(a):
    t = time_samplers.get("u_shaped")(N_SAMPLES, torch.Generator().manual_seed(1), a=a)
    assert t.shape == (N_SAMPLES,) and t.min() >= 0 and t.max() <= 1

    def cdf(s):  # integral of cosh(a (u - 1/2)) on [0, s], normalised
        return (np.sinh(a * (s - 0.5)) + np.sinh(a / 2)) / (2 * np.sinh(a / 2))

    # fixed seed, so deterministic; p > 0.01 means no detectable misfit at n = 20000
    assert stats.kstest(t.numpy().astype(np.float64), cdf).pvalue > 0.01
    if a >= 4:  # and the test has power: the uniform law is rejected
        assert stats.kstest(t.numpy(), "uniform").pvalue < 1e-6


@pytest.mark.parametrize(("mean", "std"), [(0.0, 1.0), (0.5, 0.7)])
def test_logit_normal(mean, std):
    t = time_samplers.get("logit_normal")(N_SAMPLES, torch.Generator().manual_seed(2),
                                          mean=mean, std=std)
    assert t.min() > 0 and t.max() < 1
    logit = np.log(t.numpy().astype(np.float64)) - np.log1p(-t.numpy().astype(np.float64))
    assert stats.kstest(logit, stats.norm(mean, std).cdf).pvalue > 0.01
    assert stats.kstest(logit, stats.norm(mean + 0.1, std).cdf).pvalue < 1e-6


def test_uniform_and_unknown_sampler():
    t = time_samplers.get("uniform")(N_SAMPLES, torch.Generator().manual_seed(3))
    assert stats.kstest(t.numpy(), "uniform").pvalue > 0.01
    with pytest.raises(ValueError, match="beta.*allowed: uniform, u_shaped, logit_normal"):
        time_samplers.get("beta")
