"""Per-sample Jacobians of row-wise maps ``v(x, t)``: reverse mode (one vector-Jacobian product
per output dimension) and forward mode (Jacobian-vector products, all tangents in one pass).

Row-wise: sample b of the output depends on sample b of the input only, so pushing the same
tangent through every row (or pulling the same cotangent back) gives every sample's product at
once. Shapes: states ``[B, *data]``, ``t`` ``[B]``, tangents ``[n, B, *data]``.
"""

from __future__ import annotations

import torch
from torch.func import jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel


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


def velocity_jvp(v, x: torch.Tensor, t: torch.Tensor, tangents: torch.Tensor):
    """``(v(x, t), [J_b u_{p,b}])``: the output ``[B, *data]`` and the Jacobian-vector products
    ``[n, B, *data]`` for tangents ``[n, B, *data]`` (forward mode, one pass for all n).

    Uses ``v.jvp(x, t, tangents)`` when the network has one (an explicit tangent pass, cheaper
    than the generic transform), else ``torch.func.jvp`` under ``vmap`` over the tangents, with
    attention on the math backend (the fused ``scaled_dot_product_attention`` kernels have no
    forward-mode derivative). Both stay differentiable for the parameters (ordinary autograd
    records the tangent pass), so a loss on the products backpropagates without any double
    backward.
    """
    own = getattr(v, "jvp", None)
    if own is not None:
        return own(x, t, tangents)
    x = x.detach()

    def push(u):
        return jvp(lambda z: v(z, t), (x,), (u,))

    with sdpa_kernel(SDPBackend.MATH):
        return vmap(push, out_dims=(None, 0))(tangents)


def forward_jacobian(v, x: torch.Tensor, t: torch.Tensor):
    """``(v(x, t) [B, *data], J [B, d, d])`` with ``J[b, i, j] = dv_i / dx_j`` (flattened),
    by d Jacobian-vector products with the unit vectors (forward mode; for small d)."""
    B, d = x.shape[0], x[0].numel()
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    basis = eye.reshape(d, 1, *x.shape[1:]).expand(d, *x.shape)
    out, cols = velocity_jvp(v, x, t, basis)
    return out, cols.reshape(d, B, d).permute(1, 2, 0)
