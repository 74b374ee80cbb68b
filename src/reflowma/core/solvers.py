"""ODE solvers for ``dx/dt = v(x, t)`` from t = 0 (noise) towards t = 1 (data).

Fixed-step Euler / Heun / RK4 (the classic tableau) / RK38 (Kutta's 3/8 rule, the tableau of
torchdiffeq's ``rk4``: same cost per step, on smooth teacher fields often a smaller error) run
batched under ``torch.no_grad`` unless ``grad=True``;
``solve`` returns the states at every time of a grid (e.g. the window ends of piecewise
reflow), its steps placed by a step grid (``time_grids``: uniform by default, i.e. in proportion
to each segment's length; ``fitted_grid`` fits one to a pilot solve's local errors). The
adaptive ``dopri5`` goes through torchdiffeq.
"""

from __future__ import annotations

import contextlib

import torch

from reflowma.core import time_grids

FIXED = ("euler", "heun", "rk4", "rk38")
METHODS = FIXED + ("dopri5",)


def time_vector(t: float, x: torch.Tensor) -> torch.Tensor:
    """The time t as a ``[B]`` tensor matching x's batch, dtype and device: a stride-0
    expansion of one value (read-only), so networks embed the shared time once per step."""
    return torch.tensor(float(t), dtype=x.dtype, device=x.device).expand(x.shape[0])


def step(v, x: torch.Tensor, t: float, h: float, method: str) -> torch.Tensor:
    """One step of size h from time t."""
    if method == "euler":
        return x + h * v(x, time_vector(t, x))
    if method == "heun":
        k1 = v(x, time_vector(t, x))
        k2 = v(x + h * k1, time_vector(t + h, x))
        return x + 0.5 * h * (k1 + k2)
    if method == "rk4":
        k1 = v(x, time_vector(t, x))
        k2 = v(x + 0.5 * h * k1, time_vector(t + 0.5 * h, x))
        k3 = v(x + 0.5 * h * k2, time_vector(t + 0.5 * h, x))
        k4 = v(x + h * k3, time_vector(t + h, x))
        return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    if method == "rk38":
        k1 = v(x, time_vector(t, x))
        k2 = v(x + h * k1 / 3, time_vector(t + h / 3, x))
        k3 = v(x + h * (k2 - k1 / 3), time_vector(t + 2 * h / 3, x))
        k4 = v(x + h * (k1 - k2 + k3), time_vector(t + h, x))
        return x + (k1 + 3 * (k2 + k3) + k4) * (h / 8)
    raise ValueError(f"unknown fixed-step solver {method!r}; allowed: {', '.join(FIXED)}")


def solve(v, x0: torch.Tensor, times, steps: int, method: str = "euler", grad: bool = False,
          rtol: float = 1e-7, atol: float = 1e-9, grid=None) -> torch.Tensor:
    """States at each time of ``times`` (``times[0]`` is where ``x0`` lives): ``[T, B, *data]``.

    ``steps`` is the number of steps over a unit time interval (ignored by ``dopri5``, which
    takes ``rtol`` / ``atol``); ``grid`` (``time_grids``: the steps ``(t, h)`` of each segment
    of ``times``) places them, ``time_grids.uniform(times, steps)`` by default.
    """
    times = [float(s) for s in times]
    if method == "dopri5":
        from torchdiffeq import odeint  # about 0.6 s after torch, for dopri5 only

        ctx = contextlib.nullcontext() if grad else torch.no_grad()
        with ctx:
            tt = torch.tensor(times, dtype=x0.dtype)
            return odeint(lambda t, x: v(x, t.expand(x.shape[0])), x0, tt,
                          method="dopri5", rtol=rtol, atol=atol)
    if method not in FIXED:
        raise ValueError(f"unknown solver {method!r}; allowed: {', '.join(METHODS)}")
    grid = time_grids.uniform(times, steps) if grid is None else grid
    if len(grid) != len(times) - 1:
        raise ValueError(f"a step grid of {len(grid)} segments for {len(times)} times: it needs "
                         f"one segment per interval, len(times) - 1 = {len(times) - 1}")
    out = [x0]
    x = x0
    ctx = contextlib.nullcontext() if grad else torch.no_grad()
    with ctx:
        for segment in grid:
            for t, h in segment:
                x = step(v, x, t, h, method)
            out.append(x)
        return torch.stack(out)  # inside ctx: without grad=True nothing tracks x0 either


def local_errors(v, x0: torch.Tensor, grid, method: str):
    """Per step of ``grid`` (in order): the RMS over the batch of the local error of that step
    along the solve from ``x0``, estimated by step doubling (one step of h against two of h/2
    from the same state). Costs three solves' network evaluations."""
    errs = []
    x = x0
    with torch.no_grad():
        for segment in grid:
            for t, h in segment:
                full = step(v, x, t, h, method)
                half = step(v, step(v, x, t, h / 2, method), t + h / 2, h / 2, method)
                errs.append(float((full - half).flatten(1).pow(2).sum(-1).mean().sqrt()))
                x = full
    return errs


def fitted_grid(v, pilot: torch.Tensor, times, steps: int, method: str):
    """The ``time_grids.fitted`` grid of ``steps`` per unit for ``times``: its density from the
    local errors of a uniform pilot solve of ``pilot`` with the same steps and method."""
    base = time_grids.uniform(times, steps)
    errs = local_errors(v, pilot, base, method)
    knots = time_grids.step_times(base, times[-1])
    hs = [h for seg in base for _, h in seg]
    density = time_grids.local_error_density(errs, hs, time_grids.ORDER[method])
    return time_grids.warped(times, steps, time_grids.fitted(knots, density))


def sample_grid(nfe: int, K: int = 1) -> list[float]:
    """Euler time grid of a few-step sampler with ``nfe`` steps, window-aware for K windows.

    If ``nfe`` is a multiple of K each window gets ``nfe / K`` equal steps (the grid contains
    every ``t_k``); otherwise the grid is uniform ``i / nfe`` (for K a multiple of nfe every
    step starts at a window start).
    """
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    if nfe % K == 0:
        per = nfe // K
        return [k / K + j / (K * per) for k in range(K) for j in range(per)] + [1.0]
    return [i / nfe for i in range(nfe + 1)]


def euler_sample(v, z: torch.Tensor, grid, grad: bool = False) -> torch.Tensor:
    """Euler steps along an explicit time grid; returns the endpoint."""
    ctx = contextlib.nullcontext() if grad else torch.no_grad()
    x = z
    with ctx:
        for a, b in zip(grid[:-1], grid[1:], strict=True):
            x = x + (b - a) * v(x, time_vector(a, x))
    return x
