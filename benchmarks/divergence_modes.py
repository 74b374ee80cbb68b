"""Exact divergence ``div_x v(x, t)`` of an MLP velocity, four ways, interleaved (ms per call).

Why ``density._divergence`` uses one forward pass and d VJPs: on CPU (float64) it measured
faster than the alternatives at d = 2 and on par or faster at d = 16:

* ``copies``: one forward/backward on d copies of the batch (the audit's previous method);
* ``vjp``: one forward pass, d vector-Jacobian products through it (``density._divergence``);
* ``jvp_vmap``: forward mode, ``torch.func.jvp`` over the d basis directions under ``vmap``;
* ``jacfwd_vmap``: ``torch.func.jacfwd`` of the per-sample map under ``vmap``;
* ``own_jvp``: ``autodiff.forward_jacobian``, which uses the network's explicit tangent pass
  (``MLPVelocity.jvp``: one primal pass, all d tangents in one product per layer).

``python benchmarks/divergence_modes.py [--dims 2,16] [--batch 1000] [--width 256]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.func import jacfwd, jvp, vmap

from reflowma.core.autodiff import forward_jacobian
from reflowma.core.solvers import time_vector
from reflowma.evaluation import density
from reflowma.models import mlp


def copies(net, x, t):
    B, d = x.shape
    xg = x.repeat(d, 1).requires_grad_(True)
    with torch.enable_grad():
        vx = net(xg, time_vector(t, xg))
        E = torch.eye(d, dtype=x.dtype).repeat_interleave(B, dim=0)
        g = torch.autograd.grad(vx, xg, grad_outputs=E)[0]
    return (g * E).sum(-1).reshape(d, B).sum(0)


def vjp(net, x, t):
    return density._divergence(net, x, t, None)[1]


def jvp_vmap(net, x, t):
    B, d = x.shape
    tv = time_vector(t, x)
    E = torch.eye(d, dtype=x.dtype).unsqueeze(1).expand(d, B, d)
    cols = vmap(lambda u: jvp(lambda a: net(a, tv), (x,), (u,))[1])(E)  # [d, B, d]: J e_i
    return torch.einsum("ibi->b", cols)


def jacfwd_vmap(net, x, t):
    J = vmap(jacfwd(lambda a, s: net(a[None], s[None])[0]))(x, time_vector(t, x))
    return J.diagonal(dim1=-2, dim2=-1).sum(-1)


def own_jvp(net, x, t):
    return forward_jacobian(net, x, time_vector(t, x))[1].diagonal(dim1=1, dim2=2).sum(-1)


MODES = {"copies": copies, "vjp": vjp, "jvp_vmap": jvp_vmap, "jacfwd_vmap": jacfwd_vmap,
         "own_jvp": own_jvp}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dims", default="2,16")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    for d in (int(s) for s in args.dims.split(",")):
        torch.manual_seed(0)
        net = mlp.MLPVelocity((d,), args.width, 3).double().eval().requires_grad_(False)
        x = torch.randn(args.batch, d, dtype=torch.float64)
        ref = copies(net, x, 0.5)
        times = {k: [] for k in MODES}
        for k, f in MODES.items():  # warm-up and agreement
            err = float((f(net, x, 0.5) - ref).abs().max() / ref.abs().max())
            assert err < 1e-12, (k, err)
        for _ in range(args.repeats):
            for k, f in MODES.items():
                t0 = time.perf_counter()
                f(net, x, 0.5)
                times[k].append(time.perf_counter() - t0)
        for k, ts in times.items():
            print(f"d={d:3d} batch={args.batch} width={args.width} threads="
                  f"{torch.get_num_threads()} {k:12s} min {1e3 * min(ts):8.1f} ms  "
                  f"median {1e3 * statistics.median(ts):8.1f} ms", flush=True)


if __name__ == "__main__":
    main()
