"""Sample discrepancies between two point sets ``x`` ``[n, *data]`` and ``y`` ``[m, *data]``.

Pure functions on tensors, differentiable w.r.t. both sets; points are flattened to
``[n, d]``. All use the squared Euclidean geometry of the data space:

* ``mmd2``: unbiased (U-statistic) kernel MMD² with a sum of Gaussian kernels
  ``exp(-|a - b|² / (2 s²))`` over the bandwidths ``s``;
* ``median_bandwidths``: ``scales`` times the median pairwise distance of a set (detached);
* ``sliced_w2``: sliced Wasserstein-2 squared, ``mean_p W2²(theta_p # x, theta_p # y)`` over unit
  directions ``theta``; the 1D W2² of equal-size sets is the mean squared difference of the
  sorted projections;
* ``sinkhorn_divergence``: ``S_eps(x, y) = OT_eps(x, y) - OT_eps(x, x) / 2 - OT_eps(y, y) / 2``
  with ``OT_eps = min_P <P, C> + eps KL(P | a b^T)``, ``C = |x_i - y_j|²``, uniform weights;
  log-domain Sinkhorn, gradient by the envelope theorem (see ``entropic_ot``).
"""

from __future__ import annotations

import math

import torch


def _flat(a: torch.Tensor) -> torch.Tensor:
    return a.reshape(a.shape[0], -1)


def sqdist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``[n, m]`` (exact form, so the gradient is finite at 0)."""
    return (_flat(x)[:, None, :] - _flat(y)[None, :, :]).pow(2).sum(-1)


def median_bandwidths(y: torch.Tensor, scales=(0.5, 1.0, 2.0)) -> list[float]:
    """``scales`` times the median distance between distinct points of ``y`` (no gradient)."""
    with torch.no_grad():
        d2 = sqdist(y, y)
        n = d2.shape[0]
        off = d2[~torch.eye(n, dtype=torch.bool, device=d2.device)]
        med = float(off.median().clamp_min(1e-12).sqrt()) if off.numel() else 1.0
    return [s * med for s in scales]


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidths) -> torch.Tensor:
    """Unbiased MMD² (U-statistic: diagonal terms left out) with the kernel
    ``sum_s exp(-|a - b|² / (2 s²))``; needs at least two points in each set."""
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError("mmd2 needs at least two points in each set")

    def k(a, b):
        d2 = sqdist(a, b)
        return sum(torch.exp(-d2 / (2.0 * s * s)) for s in bandwidths)

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return sxx + syy - 2.0 * kxy.mean()


def random_directions(n: int, d: int, generator: torch.Generator | None = None,
                      dtype=torch.float32, device=None) -> torch.Tensor:
    """``n`` directions uniform on the unit sphere of R^d ``[n, d]`` (normalized Gaussians),
    drawn on ``device`` (the generator's)."""
    th = torch.randn(n, d, generator=generator, dtype=dtype, device=device)
    return th / th.norm(dim=1, keepdim=True).clamp_min(1e-12)


def sliced_w2(x: torch.Tensor, y: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Sliced W2² of two equal-size sets along ``directions`` ``[p, d]`` (unit rows):
    ``mean_p mean_i (sort(x theta_p)_i - sort(y theta_p)_i)²``."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"sliced_w2 needs equal-size sets, got {x.shape[0]} and {y.shape[0]}")
    th = directions.to(x)
    px = torch.sort(_flat(x) @ th.T, dim=0).values
    py = torch.sort(_flat(y) @ th.T, dim=0).values
    return (px - py).pow(2).mean()


def _sinkhorn_potentials(C: torch.Tensor, eps: float, iters: int, tol: float):
    """Dual potentials ``(f, g)`` of entropic OT with uniform weights on the cost ``C`` ``[n, m]``
    (log-domain alternating updates; stops after ``iters`` or when the potentials move less
    than ``tol``). No gradient."""
    n, m = C.shape
    loga = torch.full((n,), -math.log(n), dtype=C.dtype, device=C.device)
    logb = torch.full((m,), -math.log(m), dtype=C.dtype, device=C.device)
    f, g = torch.zeros_like(loga), torch.zeros_like(logb)
    with torch.no_grad():
        for _ in range(iters):
            f_new = -eps * torch.logsumexp(logb[None, :] + (g[None, :] - C) / eps, dim=1)
            g_new = -eps * torch.logsumexp(loga[:, None] + (f_new[:, None] - C) / eps, dim=0)
            delta = max(float((f_new - f).abs().max()), float((g_new - g).abs().max()))
            f, g = f_new, g_new
            if delta < tol:
                break
    return f, g, loga, logb


def _sinkhorn_self_potential(C: torch.Tensor, eps: float, iters: int, tol: float):
    """The potential ``f = g`` of entropic OT of a uniform set with itself (symmetric cost):
    averaged updates ``f <- (f + T(f)) / 2``, which converge in a few iterations. No gradient."""
    n = C.shape[0]
    loga = torch.full((n,), -math.log(n), dtype=C.dtype, device=C.device)
    f = torch.zeros_like(loga)
    with torch.no_grad():
        for _ in range(iters):
            f_new = 0.5 * (f - eps * torch.logsumexp(loga[None, :] + (f[None, :] - C) / eps, 1))
            delta = float((f_new - f).abs().max())
            f = f_new
            if delta < tol:
                break
    return f, f, loga, loga


def entropic_ot(x: torch.Tensor, y: torch.Tensor | None, eps: float, iters: int = 100,
                tol: float = 1e-6) -> torch.Tensor:
    """``OT_eps(x, y) = min_P <P, C> + eps KL(P | a b^T)``, uniform ``a``, ``b``, ``C = |x - y|²``.

    The potentials come from Sinkhorn without gradient; the value is the dual objective
    ``<a, f> + <b, g> - eps <a b^T, exp((f + g^T - C) / eps) - 1>`` at those fixed potentials,
    differentiated only through ``C``: by the envelope theorem its gradient ``sum_ij P_ij dC_ij``
    is the gradient of ``OT_eps`` at convergence (exact up to the Sinkhorn tolerance), at the
    memory of one cost matrix instead of ``iters`` unrolled ones. ``y = None``: ``x`` with itself
    (symmetric updates).
    """
    if y is None:
        C = sqdist(x, x)
        f, g, loga, logb = _sinkhorn_self_potential(C.detach(), eps, iters, tol)
    else:
        C = sqdist(x, y)
        f, g, loga, logb = _sinkhorn_potentials(C.detach(), eps, iters, tol)
    logP = loga[:, None] + logb[None, :] + (f[:, None] + g[None, :] - C) / eps
    return loga.exp() @ f + logb.exp() @ g - eps * (logP.exp().sum() - 1.0)


def sinkhorn_divergence(x: torch.Tensor, y: torch.Tensor, eps: float, iters: int = 100,
                        tol: float = 1e-6) -> torch.Tensor:
    """Debiased ``S_eps(x, y) = OT_eps(x, y) - OT_eps(x, x) / 2 - OT_eps(y, y) / 2`` (0 for
    identical sets, ``-> W2²`` as ``eps -> 0``, ``-> MMD`` with kernel ``-|.|²`` as
    ``eps -> inf``)."""
    return (entropic_ot(x, y, eps, iters, tol) - 0.5 * entropic_ot(x, None, eps, iters, tol)
            - 0.5 * entropic_ot(y, None, eps, iters, tol))
