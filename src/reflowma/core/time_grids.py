"""Step grids of the fixed-step ODE solves: where in [0, 1] the steps go.

A step grid holds, for each segment ``[a, b]`` of a list of stored times (e.g. the window ends
``t_k = k / K`` of the couplings), the steps ``(t_i, h_i)`` that cross it; a solve records the
state at the end of every segment, so every grid here steps exactly onto each stored time.

* ``uniform``: ``max(1, round(steps * (b - a)))`` equal steps per segment.
* ``warped(times, steps, warp)``: steps uniform in a warped time ``u = warp.inverse(t)``: per
  segment ``n = max(1, round(steps * (u_b - u_a)))`` steps at ``t = warp(u_a + j (u_b - u_a) / n)``,
  the last one ending on ``b``. ``steps`` is then the number of steps over the unit u-interval.

  - ``power(rho)``: ``t = 1 - (1 - u)^rho``; rho > 1 puts the steps near the data end t = 1,
    where a trained teacher's field bends most (EDM's rho grid concentrates its steps at low
    noise the same way).
  - ``fitted(knots, density)``: the warp whose step density follows a measured density, e.g.
    ``local_error_density`` of a pilot solve: for a method of order p the local error of a step
    is ``e ~ C(t) h^(p + 1)``, and a step density proportional to ``C^(1 / (p + 1))`` makes every
    step's local error the same, which minimises the sum of the local errors for a given number
    of steps. The warp is the normalised cumulative density, piecewise linear between knots.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# order p of each fixed-step method (local error O(h^(p + 1)))
ORDER = {"euler": 1, "heun": 2, "rk4": 4, "rk38": 4}


def uniform(times, steps: int) -> list[list[tuple[float, float]]]:
    """``max(1, round(steps * length))`` equal steps ``(a + i h, h)`` per segment of ``times``."""
    grid = []
    for a, b in zip(times[:-1], times[1:], strict=True):
        n = max(1, round(steps * (b - a)))
        h = (b - a) / n
        grid.append([(a + i * h, h) for i in range(n)])
    return grid


@dataclass(frozen=True)
class Warp:
    """A monotone map ``t = warp(u)`` of [0, 1] onto itself and its inverse, both on floats."""

    forward: Callable[[float], float]
    inverse: Callable[[float], float]

    def __call__(self, u: float) -> float:
        return self.forward(u)


def power(rho: float) -> Warp:
    """``t = 1 - (1 - u)^rho`` (rho = 1: uniform)."""
    if rho <= 0:
        raise ValueError(f"power grid: rho must be > 0, got {rho}")
    return Warp(lambda u: 1.0 - (1.0 - u) ** rho, lambda t: 1.0 - (1.0 - t) ** (1.0 / rho))


def fitted(knots, density) -> Warp:
    """The warp whose step density is ``density[i]`` on ``[knots[i], knots[i + 1]]`` (piecewise
    constant, > 0): ``u(t)`` = the normalised integral of the density, linear between knots."""
    knots, density = np.asarray(knots, np.float64), np.asarray(density, np.float64)
    if knots.ndim != 1 or density.shape != (knots.size - 1,) or np.any(np.diff(knots) <= 0):
        raise ValueError("fitted grid: knots must increase and carry one density per interval")
    if np.any(~np.isfinite(density)) or np.any(density <= 0):
        raise ValueError("fitted grid: the density must be finite and > 0")
    cum = np.concatenate([[0.0], np.cumsum(density * np.diff(knots))])
    cum /= cum[-1]
    return Warp(lambda u: float(np.interp(u, cum, knots)),
                lambda t: float(np.interp(t, knots, cum)))


def warped(times, steps: int, warp: Warp) -> list[list[tuple[float, float]]]:
    """Steps uniform in ``u = warp.inverse(t)``, segment by segment (module docstring)."""
    grid = []
    for a, b in zip(times[:-1], times[1:], strict=True):
        ua, ub = warp.inverse(a), warp.inverse(b)
        n = max(1, round(steps * (ub - ua)))
        pts = [a] + [warp(ua + j * (ub - ua) / n) for j in range(1, n)] + [b]
        grid.append([(p, q - p) for p, q in zip(pts[:-1], pts[1:], strict=True)])
    return grid


def local_error_density(errors, h, order: int, floor: float = 0.1) -> np.ndarray:
    """Step density ``C^(1 / (order + 1))`` from the local errors ``e_i`` of pilot steps of
    sizes ``h_i`` (``C = e / h^(order + 1)``), normalised to mean 1 and kept at least ``floor``
    (so a stretch where the measured error is at rounding level still gets steps)."""
    h = np.asarray(h, np.float64)
    c = np.maximum(np.asarray(errors, np.float64), 0.0) / h ** (order + 1)
    d = c ** (1.0 / (order + 1))
    if not np.any(d > 0):
        return np.ones_like(d)
    d = d / d.mean()
    return np.maximum(d, floor)


def step_times(grid, end: float = 1.0) -> list[float]:
    """Every step's start time, then ``end``, in order (what a file records of its grid)."""
    return [t for seg in grid for t, _ in seg] + [float(end)]


def n_steps(grid) -> int:
    return sum(len(seg) for seg in grid)
