"""Sample metrics. Inputs are ``[N, d]`` tensors (flatten images first)."""

from __future__ import annotations

import math

import numpy as np
import ot
import torch

from reflowma.core.autodiff import batch_jacobian


def w2_paired(a: torch.Tensor, b: torch.Tensor) -> float:
    """RMS distance of paired samples (same z): an upper bound on W2 via that coupling."""
    return float((a - b).reshape(a.shape[0], -1).pow(2).sum(-1).mean().sqrt())


def w2_unpaired(a: torch.Tensor, b: torch.Tensor) -> float:
    """Exact empirical W2 between two point clouds (POT's network simplex, uniform weights)."""
    A = a.reshape(a.shape[0], -1).double().numpy()
    B = b.reshape(b.shape[0], -1).double().numpy()
    M = ot.dist(A, B)  # squared Euclidean
    wa, wb = np.full(len(A), 1 / len(A)), np.full(len(B), 1 / len(B))
    return math.sqrt(max(0.0, float(ot.emd2(wa, wb, M, numItermax=10_000_000))))


def mmd(a: torch.Tensor, b: torch.Tensor, bandwidths, scale: float | None = None) -> float:
    """Unbiased MMD^2 with a sum of RBF kernels ``exp(-|x-y|^2 / (2 (h s)^2))``.

    ``s`` (scale) defaults to the RMS per-dimension std of ``b``; bandwidths are relative to it.
    """
    a = a.reshape(a.shape[0], -1).double()
    b = b.reshape(b.shape[0], -1).double()
    s = float(scale if scale is not None else b.std(0).pow(2).mean().sqrt() * math.sqrt(b.shape[1]))
    daa, dbb, dab = torch.cdist(a, a).pow(2), torch.cdist(b, b).pow(2), torch.cdist(a, b).pow(2)
    n, m = a.shape[0], b.shape[0]
    total = 0.0
    for h in bandwidths:
        g = 1.0 / (2 * (h * s) ** 2)
        kaa, kbb, kab = torch.exp(-g * daa), torch.exp(-g * dbb), torch.exp(-g * dab)
        # U-statistic; for n == m the cross term also drops the diagonal, which keeps the
        # estimate unbiased and near 0 for paired samples (the same z) of equal laws.
        cross = (kab.sum() - kab.diagonal().sum()) / (n * (n - 1)) if n == m else kab.mean()
        total += float((kaa.sum() - n) / (n * (n - 1)) + (kbb.sum() - m) / (m * (m - 1))
                       - 2 * cross)
    return total


def jacobian(f, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """Per-sample Jacobian ``[B, d, d]`` of a map applied row-wise to ``x`` ``[B, d]``."""
    x = x.detach().requires_grad_(True) if not x.requires_grad else x
    return batch_jacobian(f(x), x, create_graph)


def fold_mask(f, z: torch.Tensor, max_dim: int = 16, chunk: int = 1024):
    """Per z, whether the sampler map folds there (``det df/dz <= 0``); None above
    ``max_dim``."""
    z = z.reshape(z.shape[0], -1)
    if z.shape[1] > max_dim:
        return None
    out = []
    for lo in range(0, z.shape[0], chunk):
        with torch.enable_grad():
            J = jacobian(f, z[lo: lo + chunk]).double()
        out.append(torch.linalg.det(J) <= 0)
    return torch.cat(out)


def fold_fraction(f, z: torch.Tensor, max_dim: int = 16, chunk: int = 1024):
    """Fraction of z where the sampler map folds (``det df/dz <= 0``); None above ``max_dim``."""
    return mask_fraction(fold_mask(f, z, max_dim, chunk))


def mask_fraction(mask):
    """The fraction of True in a fold mask; None for None (the mask was not computed)."""
    return None if mask is None else int(mask.sum()) / mask.shape[0]


def straightness(v, z: torch.Tensor, grid) -> float:
    """``sum_i h_i |(x_1 - x_0) - v(x_{t_i}, t_i)|^2`` averaged over z, on a sampler's grid."""
    xs, vs, x = [z], [], z
    with torch.no_grad():
        for a, b in zip(grid[:-1], grid[1:], strict=True):
            vi = v(x, torch.full((z.shape[0],), a, dtype=z.dtype))
            vs.append(vi)
            x = x + (b - a) * vi
            xs.append(x)
        disp = (x - z).reshape(z.shape[0], -1)
        s = sum((b - a) * (disp - vi.reshape(z.shape[0], -1)).pow(2).sum(-1)
                for (a, b), vi in zip(zip(grid[:-1], grid[1:], strict=True), vs, strict=True))
    return float(s.mean())
