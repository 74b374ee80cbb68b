"""Fixed-step solvers, ``solve`` on window grids, dopri5 via torchdiffeq, few-step grids.

References: the exact solution of a linear ODE by matrix exponential (scipy, float64) and
torchdiffeq's own ``odeint``.
"""

import math

import numpy as np
import pytest
import torch
import torchdiffeq
from scipy.linalg import expm

from reflowma import models

# dx/dt = a(t) A x with a(t) = 1 + t (time-dependent, commuting with itself at all t), so
from reflowma.core import solvers, time_grids

# x(t) = expm((t + t^2 / 2) A) x0 exactly.
A = np.array([[-0.5, 2.0], [-1.5, -0.3]])
A_T = torch.tensor(A)
X0 = torch.tensor([[1.0, -0.5], [0.3, 2.0], [-1.2, 0.7]], dtype=torch.float64)


def linear_field(x, t):
    return (1 + t).reshape(-1, 1) * (x @ A_T.T)


def exact(t):
    return torch.from_numpy(X0.numpy() @ expm((t + t**2 / 2) * A).T)


def nonlinear_field(x, t):
    tt = t.reshape(-1, 1)
    return torch.stack([torch.sin(x[:, 1]) - 0.3 * x[:, 0], -x[:, 0] ** 3 / 3 + torch.cos(x[:, 1])],
                       1) * (1 + tt)


@pytest.mark.parametrize(("method", "order", "ns"), [
    ("euler", 1, [32, 64, 128, 256]),
    ("heun", 2, [16, 32, 64, 128]),
    ("rk4", 4, [8, 16, 32, 64]),   # errors 1e-5 .. 1e-9: far above float64 round-off
    ("rk38", 4, [8, 16, 32, 64]),
])
def test_order_of_convergence(method, order, ns):
    ref = exact(1.0)
    errs = [float((solvers.solve(linear_field, X0, [0.0, 1.0], n, method)[-1] - ref).abs().max())
            for n in ns]
    slope = -np.polyfit(np.log(ns), np.log(errs), 1)[0]
    # +-0.15: the asymptotic regime is reached at these h (pre-asymptotic terms are O(h)).
    assert abs(slope - order) < 0.15, (method, slope, errs)


def test_solve_returns_states_at_window_ends():
    times = [0.0, 0.25, 0.5, 1.0]
    out = solvers.solve(linear_field, X0, times, 128, "rk4")
    assert out.shape == (4, *X0.shape)
    assert torch.equal(out[0], X0)
    for i, t in enumerate(times):
        # RK4 with h = 1/128: global error ~ 1e-10 here; 1e-8 leaves margin.
        torch.testing.assert_close(out[i], exact(t), rtol=0, atol=1e-8)
    # steps are spread over the segments in proportion to their length
    assert [len(s) for s in time_grids.uniform(times, 128)] == [32, 32, 64]
    assert [len(s) for s in time_grids.uniform([0.0, 0.01, 1.0], 4)] == [1, 4]


def test_solve_grad_flag_and_unknown_method():
    x = X0.clone().requires_grad_(True)
    assert not solvers.solve(linear_field, x, [0.0, 1.0], 4, "heun")[-1].requires_grad
    assert solvers.solve(linear_field, x, [0.0, 1.0], 4, "heun", grad=True)[-1].requires_grad
    with pytest.raises(ValueError, match="midpoint.*allowed: euler, heun, rk4, rk38, dopri5"):
        solvers.solve(linear_field, X0, [0.0, 1.0], 4, "midpoint")
    with pytest.raises(ValueError, match="allowed: euler, heun, rk4"):
        solvers.step(linear_field, X0, 0.0, 0.1, "dopri5")


def test_rk38_is_torchdiffeqs_rk4():
    """rk38 (Kutta's 3/8 rule) is the tableau of torchdiffeq's fixed-grid ``rk4``: the same
    states step for step, to float64 round-off (the sums are grouped differently), on a
    nonlinear time-dependent field; the classic rk4 differs from both by its truncation error."""
    times = torch.linspace(0, 1, 9, dtype=torch.float64)
    ours = solvers.solve(nonlinear_field, X0, times.tolist(), 16, "rk38")
    ref = torchdiffeq.odeint(lambda t, x: nonlinear_field(x, t.expand(x.shape[0])), X0, times,
                             method="rk4", options={"step_size": 1 / 16})
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-13)
    classic = solvers.solve(nonlinear_field, X0, times.tolist(), 16, "rk4")
    assert float((classic - ref).abs().max()) > 1e-7


def test_dopri5_agrees_with_torchdiffeq_and_rk4():
    times = [0.0, 0.5, 1.0]
    ours = solvers.solve(nonlinear_field, X0, times, 1, "dopri5", rtol=1e-9, atol=1e-11)
    direct = torchdiffeq.odeint(lambda t, x: nonlinear_field(x, t.expand(x.shape[0])), X0,
                                torch.tensor(times, dtype=torch.float64), method="dopri5",
                                rtol=1e-9, atol=1e-11)
    # same algorithm and tolerances: identical up to round-off
    torch.testing.assert_close(ours, direct, rtol=0, atol=1e-13)
    rk4 = solvers.solve(nonlinear_field, X0, times, 512, "rk4")
    # two different accurate solvers: both ~1e-9 from the truth here
    torch.testing.assert_close(ours, rk4, rtol=0, atol=1e-7)
    # and dopri5 solves the linear problem exactly to its tolerance
    lin = solvers.solve(linear_field, X0, [0.0, 1.0], 1, "dopri5", rtol=1e-10, atol=1e-12)[-1]
    torch.testing.assert_close(lin, exact(1.0), rtol=0, atol=1e-8)


@pytest.mark.parametrize(("nfe", "K", "grid"), [
    (1, 1, [0.0, 1.0]),
    (4, 1, [0.0, 0.25, 0.5, 0.75, 1.0]),
    (2, 2, [0.0, 0.5, 1.0]),
    (4, 2, [0.0, 0.25, 0.5, 0.75, 1.0]),
    (6, 3, [0.0, 1 / 6, 1 / 3, 0.5, 2 / 3, 5 / 6, 1.0]),
    (3, 2, [0.0, 1 / 3, 2 / 3, 1.0]),     # not a multiple of K: uniform
    (1, 4, [0.0, 1.0]),                   # K a multiple of nfe: uniform, starts at t_0
    (2, 4, [0.0, 0.5, 1.0]),
    (3, 4, [0.0, 1 / 3, 2 / 3, 1.0]),
])
def test_sample_grid(nfe, K, grid):
    got = solvers.sample_grid(nfe, K)
    assert len(got) == nfe + 1
    np.testing.assert_allclose(got, grid, rtol=0, atol=1e-12)
    assert all(b > a for a, b in zip(got[:-1], got[1:], strict=False))
    if nfe % K == 0:  # window-aware: every window end t_k is a grid point
        for k in range(K + 1):
            assert min(abs(g - k / K) for g in got) < 1e-12


def test_sample_grid_rejects_nfe_0():
    with pytest.raises(ValueError, match="nfe must be >= 1"):
        solvers.sample_grid(0, 1)


def test_euler_sample_equals_manual_euler():
    torch.manual_seed(0)
    v = models.build((2,), {"width": 16, "depth": 2, "activation": "silu", "time_embed_dim": 8})
    z = torch.randn(32, 2)
    grid = [0.0, 0.1, 0.5, 0.55, 1.0]
    x = z.clone()
    with torch.no_grad():
        for a, b in zip(grid[:-1], grid[1:], strict=True):
            x = x + (b - a) * v(x, solvers.time_vector(a, x))
    got = solvers.euler_sample(v, z, grid)
    assert torch.equal(got, x)  # the same operations in the same order
    assert not got.requires_grad
    assert solvers.euler_sample(v, z.requires_grad_(True), grid, grad=True).requires_grad
    # Euler on the uniform grid = solve(..., "euler") with the same number of steps
    ref = solvers.solve(v, z.detach(), [0.0, 1.0], 4, "euler")[-1]
    torch.testing.assert_close(solvers.euler_sample(v, z.detach(), solvers.sample_grid(4)), ref,
                               rtol=1e-6, atol=1e-6)


def test_one_euler_step_is_exact_for_constant_field():
    c = torch.tensor([[math.pi, -1.0]], dtype=torch.float64)
    out = solvers.solve(lambda x, t: c.expand_as(x), X0, [0.0, 1.0], 1, "euler")[-1]
    torch.testing.assert_close(out, X0 + c, rtol=0, atol=1e-15)
