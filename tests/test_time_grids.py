"""Step grids (``core.time_grids``) and the fitted grid of ``solvers.fitted_grid``.

Every grid steps onto each stored time exactly; the warps are monotone maps of [0, 1] with
their inverses; the uniform grid is the steps ``solve`` takes by default (the same bits); and on
a field whose stiffness sits near t = 1 (the exact flow to a narrow Gaussian, closed form) the
fitted grid and the power grid reach a smaller error than uniform steps at the same count, while
all of them converge at RK4's order.
"""

import math

import numpy as np
import pytest
import torch

from reflowma.core import solvers, time_grids

TIMES = [0.0, 0.25, 0.5, 0.75, 1.0]
MU, SIGMA = 1.5, 0.05


def gauss_field(x, t):
    """Exact velocity of the linear interpolant from N(0, 1) to N(MU, SIGMA^2) (per coordinate):
    ``v = MU + s'(t) / s(t) (x - t MU)``, ``s(t)^2 = (1 - t)^2 + t^2 SIGMA^2``; the flow is
    ``x_t = t MU + s(t) z``."""
    t = t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    s2 = (1 - t) ** 2 + t**2 * SIGMA**2
    return MU + (t * SIGMA**2 - (1 - t)) / s2 * (x - t * MU)


def gauss_exact(z, t):
    return t * MU + math.sqrt((1 - t) ** 2 + t**2 * SIGMA**2) * z


def _err(states, z):
    return max(float((states[i] - gauss_exact(z, t)).abs().max()) for i, t in enumerate(TIMES))


@pytest.mark.parametrize("grid", ["uniform", "power", "fitted"])
def test_every_grid_steps_onto_the_stored_times(grid):
    z = torch.randn(64, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g = {"uniform": lambda: time_grids.uniform(TIMES, 20),
         "power": lambda: time_grids.warped(TIMES, 20, time_grids.power(3.0)),
         "fitted": lambda: solvers.fitted_grid(gauss_field, z, TIMES, 20, "rk4")}[grid]()
    assert len(g) == len(TIMES) - 1
    for (a, b), seg in zip(zip(TIMES[:-1], TIMES[1:], strict=True), g, strict=True):
        assert seg[0][0] == a and math.isclose(seg[-1][0] + seg[-1][1], b, abs_tol=1e-15)
        assert all(h > 0 for _, h in seg)
        if grid != "uniform":  # explicit points: each step ends where the next one starts
            assert all(math.isclose(t + h, nt, abs_tol=1e-15)
                       for (t, h), (nt, _) in zip(seg[:-1], seg[1:], strict=True))
    # about `steps` steps over [0, 1] (rounding per segment)
    assert abs(time_grids.n_steps(g) - 20) <= len(TIMES) - 1


def test_uniform_grid_is_the_default_solve():
    z = torch.randn(32, 2)
    v = lambda x, t: torch.sin(3 * x) * (1 + t[:, None])  # noqa: E731
    assert torch.equal(solvers.solve(v, z, TIMES, 12, "rk4"),
                       solvers.solve(v, z, TIMES, 12, "rk4",
                                     grid=time_grids.uniform(TIMES, 12)))
    with pytest.raises(ValueError, match="segments"):
        solvers.solve(v, z, TIMES, 12, "rk4", grid=time_grids.uniform([0.0, 1.0], 12))


@pytest.mark.parametrize("warp", [time_grids.power(0.5), time_grids.power(7.0),
                                  time_grids.fitted([0.0, 0.3, 0.9, 1.0], [1.0, 0.2, 5.0])])
def test_warps_are_monotone_with_their_inverse(warp):
    u = np.linspace(0, 1, 101)
    t = np.array([warp(x) for x in u])
    assert t[0] == 0.0 and t[-1] == pytest.approx(1.0, abs=1e-15) and np.all(np.diff(t) > 0)
    assert np.allclose([warp.inverse(x) for x in t], u, atol=1e-12)


def test_fitted_warp_follows_its_density():
    # density 1 on [0, 0.5], 3 on [0.5, 1]: a quarter of u covers the first half of t
    w = time_grids.fitted([0.0, 0.5, 1.0], [1.0, 3.0])
    assert w.inverse(0.5) == pytest.approx(0.25) and w(0.25) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="density"):
        time_grids.fitted([0.0, 1.0], [0.0])
    with pytest.raises(ValueError, match="rho"):
        time_grids.power(0.0)


def test_local_error_density():
    # C = e / h^5 -> density C^(1/5): errors 32x larger give twice the density; normalised to
    # mean 1; a zero error keeps the floor
    d = time_grids.local_error_density([1.0, 32.0, 0.0], [0.1] * 3, order=4, floor=0.1)
    assert d[1] / d[0] == pytest.approx(2.0) and d[2] == 0.1
    assert np.all(time_grids.local_error_density([0.0, 0.0], [0.1, 0.1], 4) == 1.0)


def test_local_errors_of_rk4_scale_as_h5():
    z = torch.randn(256, 1, dtype=torch.float64)
    e8 = solvers.local_errors(gauss_field, z, time_grids.uniform([0.0, 0.5], 64), "rk4")
    e16 = solvers.local_errors(gauss_field, z, time_grids.uniform([0.0, 0.5], 128), "rk4")
    # the first step from t = 0 at h = 1/64 and at h/2: local error ratio 2^5 (within 10 %)
    assert e8[0] / e16[0] == pytest.approx(32, rel=0.1)


def test_fitted_and_power_grids_beat_uniform_where_the_field_is_stiff_near_one():
    z = torch.randn(512, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    errs = {}
    for steps in (16, 32):
        grids = {"uniform": time_grids.uniform(TIMES, steps),
                 "power": time_grids.warped(TIMES, steps, time_grids.power(3.0)),
                 "fitted": solvers.fitted_grid(gauss_field, z[:64], TIMES, steps, "rk4")}
        for name, g in grids.items():
            errs[name, steps] = _err(solvers.solve(gauss_field, z, TIMES, steps, "rk4", grid=g),
                                     z)
            assert abs(time_grids.n_steps(g) - steps) <= 4
    for steps in (16, 32):
        assert errs["fitted", steps] < errs["uniform", steps] / 4
        assert errs["power", steps] < errs["uniform", steps] / 2
    # each still converges at fourth order once resolved (doubling the steps: ~16x less)
    assert errs["fitted", 16] / errs["fitted", 32] > 8
