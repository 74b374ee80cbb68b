"""The linear interpolant, window grids and piecewise-reflow targets.

Conventions: t = 0 is noise, t = 1 is data; ``x_t = (1 - t) z + t x``; target velocity
``x - z``. Piecewise reflow with K windows uses ``t_k = k / K`` (K = 1 is vanilla reflow); on
window k the target is the slope of the straight segment between the teacher states at the
window ends. Shapes: states ``[B, T, *data]`` over a time grid ``[T]``; ``t`` is ``[B]``.
"""

from __future__ import annotations

import torch


def window_grid(K: int, dtype=torch.float64) -> torch.Tensor:
    """Window ends ``t_k = k / K`` for k = 0..K, shape ``[K + 1]``."""
    if K < 1:
        raise ValueError(f"K must be >= 1, got {K}")
    return torch.arange(K + 1, dtype=dtype) / K


def union_grid(Ks) -> list[float]:
    """Sorted union of the window grids of several K (the times couplings must store)."""
    times = {round(k / K, 12) for K in Ks for k in range(K + 1)}
    return sorted(times)


def _bcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)


def interpolate(z: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 - t) z + t x``."""
    tb = _bcast(t, z)
    return (1 - tb) * z + tb * x


def grid_indices(times, K: int) -> list[int]:
    """Indices into a stored time grid of the K + 1 window ends of a K-window student."""
    idx = []
    for k in range(K + 1):
        tk = k / K
        match = [i for i, s in enumerate(times) if abs(float(s) - tk) < 1e-9]
        if not match:
            raise ValueError(f"time grid {list(times)} does not contain the window end {tk} "
                             f"(K={K})")
        idx.append(match[0])
    return idx


def window_of(t: torch.Tensor, K: int) -> torch.Tensor:
    """Window index of each time, ``floor(t K)`` clamped to ``[0, K - 1]``."""
    return torch.clamp(torch.floor(t * K).long(), 0, K - 1)


def piecewise_pair(ends: torch.Tensor, t: torch.Tensor, K: int):
    """Point on the teacher's piecewise-straight path and its target velocity.

    ``ends``: ``[B, K + 1, *data]`` teacher states at ``t_k = k / K``; ``t``: ``[B]`` in [0, 1].
    Returns ``(x_t, target)``, each ``[B, *data]``: on window k,
    ``x_t = x_k + (t - t_k) / dt * (x_{k+1} - x_k)`` and ``target = (x_{k+1} - x_k) / dt``.
    """
    k = window_of(t, K)
    b = torch.arange(ends.shape[0], device=ends.device)
    lo, hi = ends[b, k], ends[b, k + 1]
    dt = 1.0 / K
    u = (t - k.to(t.dtype) * dt) / dt
    return interpolate(lo, hi, u), (hi - lo) / dt


def window_start_pair(ends: torch.Tensor, k: torch.Tensor, K: int):
    """Teacher state at window start ``t_k`` and the window's straight target; k is ``[B]``."""
    b = torch.arange(ends.shape[0], device=ends.device)
    lo, hi = ends[b, k], ends[b, k + 1]
    return lo, (hi - lo) * K, k.to(ends.dtype) / K


def score_from_velocity(v: torch.Tensor, x: torch.Tensor, t: torch.Tensor,
                        check: bool = True) -> torch.Tensor:
    """Score of p_t from the velocity of the linear interpolant with N(0, I) noise at t = 0.

    ``E[z | x_t = x] = x - t v(x, t)``, hence ``s(x, t) = -(x - t v) / (1 - t)`` for t < 1.
    ``check``: refuse any t >= 1 (reading t waits for the device; callers whose t is below 1
    by construction, such as a training step, pass False).
    """
    tb = _bcast(t, x)
    if check and torch.any(tb >= 1):
        raise ValueError("score_from_velocity needs t < 1 (the score is singular at t = 1)")
    return -(x - tb * v) / (1 - tb)
