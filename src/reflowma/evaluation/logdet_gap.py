"""How far the regularizer's log-det approximations are from ``log|det(I + h J)|`` on a student.

Per window k of a K-window student (``h = 1 / K``, ``t_k = k / K``) and a fixed batch of
teacher states ``x ~ p_{t_k}`` (the points the regularizer sees): the per-sample Jacobian ``J``
of ``v(., t_k)`` by forward mode (d unit tangents, in chunks of at most ``rows`` network rows,
on the network's device), ``A = h J`` in float64, and for every point

* ``exact``: ``log|det(I + A)|`` (``folded``: the fraction with ``det <= 0``);
* ``first_order``: ``tr A`` (the ``trace`` mode; ``hutchinson`` estimates it);
* ``hutchinson``: one Rademacher probe's ``eps^T A eps``, for each of ``n_probes`` probes
  (``probe_std``: the spread of one probe, mean over points; ``probe_std_exact``: its closed
  form ``core.logdet.hutchinson_variance``, root mean square over points; an average of P
  probes has 1/sqrt(P) of it);
* ``series<n>``: the truncated series of order n with exact traces, ``series<n>_hutchinson``:
  with one probe (as the ``series`` mode of the regularizer estimates it);
* the spectral radius of A (the series converges iff it is below 1).

Each estimator's ``gap_abs`` is ``mean |estimate - exact|`` over points (and probes), its
``gap_rel`` that divided by ``mean |exact|``. Pure functions; no I/O.
"""

from __future__ import annotations

import math

import torch

from reflowma.core import logdet
from reflowma.core.autodiff import velocity_jvp


def jacobians(v, x: torch.Tensor, t: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """``J [B, d, d]`` (float64, CPU) of ``v(., t)`` at the points ``x`` ``[B, *data]``, by d
    unit tangents in forward mode, ``max(1, rows // B)`` tangents per network call (all at
    once for ``rows=None``); ``x`` and ``t`` on the network's device."""
    B, d = x.shape[0], x[0].numel()
    per = d if rows is None else max(1, min(d, rows // B))
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    cols = []
    with torch.no_grad():
        for lo in range(0, d, per):
            basis = eye[lo: lo + per].reshape(-1, 1, *x.shape[1:]).expand(-1, *x.shape)
            _, Ju = velocity_jvp(v, x, t, basis)
            cols.append(Ju.reshape(Ju.shape[0], B, d).double().cpu())
    return torch.cat(cols).permute(1, 2, 0)  # [B, d_out, d_in]


def _summary(est: torch.Tensor, exact: torch.Tensor, scale: float) -> dict:
    """mean, gap_abs, gap_rel of estimates ``[..., B]`` against ``exact [B]``."""
    gap = float((est - exact).abs().mean())
    return {"mean": float(est.mean()), "gap_abs": gap,
            "gap_rel": gap / scale if scale > 0 else None}


def window_gaps(A: torch.Tensor, probes: torch.Tensor, orders) -> dict:
    """The diagnostics above for ``A = h J`` ``[B, d, d]`` (float64) and Rademacher ``probes``
    ``[P, B, d]``; ``orders``: the series orders (each >= 2)."""
    exact, sign = logdet.exact(A)
    scale = float(exact.abs().mean())
    n = max([1, *orders])
    traces = logdet.power_traces(A, n)
    quads = logdet.power_quads(A, probes, n)
    rho = logdet.spectral_radius(A)
    probe_std_exact = math.sqrt(float(logdet.hutchinson_variance(A).mean()))
    est = {"first_order": _summary(traces[0], exact, scale),
           "hutchinson": {**_summary(quads[0], exact, scale),
                          "probe_std": float(quads[0].std(0).mean()) if quads.shape[1] > 1
                          else None,
                          "probe_std_exact": probe_std_exact}}
    for o in orders:
        est[f"series{o}"] = _summary(logdet.series(traces[:o]), exact, scale)
        est[f"series{o}_hutchinson"] = _summary(logdet.series(quads[:o]), exact, scale)
    return {"n_points": int(A.shape[0]), "n_probes": int(probes.shape[0]),
            "exact": float(exact.mean()), "exact_abs": scale,
            "folded": float((sign <= 0).double().mean()),
            "spectral_radius_median": float(rho.median()), "spectral_radius_max": float(rho.max()),
            "frac_radius_ge_1": float((rho >= 1).double().mean()), "estimators": est}


def logdet_gaps(v, ends: torch.Tensor, K: int, n_probes: int, orders,
                generator: torch.Generator, rows: int | None = None,
                dev: torch.device | None = None) -> dict:
    """Per window k: ``window_gaps`` of the student ``v`` at the teacher states ``ends[:, k]``
    (``ends``: ``[N, K + 1, *data]``, e.g. the first test couplings), ``t = k / K``,
    ``h = 1 / K``. Probes are drawn window by window from ``generator``."""
    h = 1.0 / K
    dev = dev or ends.device
    out = []
    for k in range(K):
        x = ends[:, k]
        B = x.shape[0]
        t = torch.full((B,), k / K, dtype=x.dtype)
        J = jacobians(v, x.to(dev), t.to(dev), rows)
        probes = logdet.rademacher((n_probes, B, J.shape[1]), generator)
        out.append({"k": k, "t": k / K, "h": h, **window_gaps(h * J, probes, orders)})
    return {"windows": out}
