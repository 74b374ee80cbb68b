"""``log|det(I + A)|`` of a window map ``y = x + h v(x, t)`` (``A = h J``, ``J = dv/dx``) and
the approximations the regularizer can use instead. Pure functions on per-sample matrices
``A`` ``[B, d, d]`` and Rademacher probes ``[P, B, d]``.

* exact: ``log|det(I + A)|`` (``exact``; its sign says whether the map folds there).
* first order: ``tr A`` (the ``trace``/``hutchinson`` modes of the regularizer).
* series of order n: ``sum_{k=1..n} (-1)^{k+1} tr(A^k) / k``, the truncated Taylor series of
  ``sum_i log(1 + lambda_i)`` over the eigenvalues ``lambda_i`` of A. It converges to the exact
  value as n grows iff the spectral radius ``rho(A) < 1``; then the remainder of each eigenvalue
  is at most ``|lambda|^{n+1} / ((n + 1)(1 - |lambda|))``. For ``rho(A) > 1`` the terms grow
  like ``rho^k / k``: a higher order is further off, and no order approximates the log-det.
* Hutchinson: ``eps^T A^k eps`` with Rademacher ``eps`` is unbiased for ``tr(A^k)``; for k = 1
  its variance is ``2 (|S|_F^2 - sum_i S_ii^2)``, ``S = (A + A^T) / 2`` (``hutchinson_variance``).
"""

from __future__ import annotations

import torch


def series_coefficients(order: int) -> list[float]:
    """``(-1)^{k+1} / k`` for ``k = 1..order``: the Taylor coefficients of ``log(1 + x)``."""
    if order < 1:
        raise ValueError(f"series order must be >= 1, got {order}")
    return [(-1.0) ** (k + 1) / k for k in range(1, order + 1)]


def series(terms) -> torch.Tensor:
    """``sum_k (-1)^{k+1} terms[k - 1] / k`` over the first axis of ``terms`` (``[order, ...]``:
    ``tr(A^k)`` or their probe estimates ``eps^T A^k eps``)."""
    return sum(c * t for c, t in zip(series_coefficients(len(terms)), terms, strict=True))


def exact(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log|det(I + A)| [B], sign of det [B])``."""
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    sign, logabs = torch.linalg.slogdet(eye + A)
    return logabs, sign


def power_traces(A: torch.Tensor, order: int) -> torch.Tensor:
    """``tr(A^k)`` for ``k = 1..order``: ``[order, B]``."""
    out, P = [], A
    for k in range(order):
        if k:
            P = P @ A
        out.append(P.diagonal(dim1=-2, dim2=-1).sum(-1))
    return torch.stack(out)


def power_quads(A: torch.Tensor, probes: torch.Tensor, order: int) -> torch.Tensor:
    """``eps^T A^k eps`` for ``k = 1..order`` and every probe ``eps`` (``probes [P, B, d]``):
    ``[order, P, B]``."""
    out, w = [], probes
    for _ in range(order):
        w = torch.einsum("bij,pbj->pbi", A, w)  # A^k eps
        out.append((probes * w).sum(-1))
    return torch.stack(out)


def spectral_radius(A: torch.Tensor) -> torch.Tensor:
    """``max_i |lambda_i(A)|`` per sample ``[B]`` (the series converges iff it is < 1)."""
    return torch.linalg.eigvals(A).abs().amax(-1)


def hutchinson_variance(A: torch.Tensor) -> torch.Tensor:
    """Variance of one Rademacher probe's ``eps^T A eps`` per sample ``[B]``:
    ``2 (|S|_F^2 - sum_i S_ii^2)`` with ``S = (A + A^T) / 2``."""
    S = 0.5 * (A + A.transpose(-1, -2))
    return 2.0 * (S.pow(2).sum((-2, -1)) - S.diagonal(dim1=-2, dim2=-1).pow(2).sum(-1))


def rademacher(shape, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """+-1 of ``shape`` drawn from ``generator`` (CPU)."""
    return (torch.randint(0, 2, tuple(shape), generator=generator) * 2 - 1).to(dtype)
