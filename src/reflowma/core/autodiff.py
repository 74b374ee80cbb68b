"""Per-sample Jacobians of row-wise maps (one vector-Jacobian product per output dimension)."""

from __future__ import annotations

import torch


def batch_jacobian(y: torch.Tensor, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """``dy_b / dx_b`` for every sample b: ``[B, d_out, d_in]`` (both sides flattened).

    ``y`` must have been computed from ``x`` (requiring grad) sample by sample, so that
    ``grad(y[:, i].sum(), x)`` holds row i of every sample's Jacobian. With ``create_graph`` the
    result is differentiable (for losses built on it); otherwise the graph is freed at the end.
    """
    yf = y.reshape(y.shape[0], -1)
    d = yf.shape[1]
    rows = [torch.autograd.grad(yf[:, i].sum(), x, create_graph=create_graph,
                                retain_graph=create_graph or i < d - 1)[0]
            for i in range(d)]
    return torch.stack([r.reshape(r.shape[0], -1) for r in rows], dim=1)
