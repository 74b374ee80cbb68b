"""Densities of flow pushforwards and divergences estimated from them.

Pure functions, no I/O; inputs ``[N, *data]`` (flattened internally), densities in nats.

* ``cnf_logp``: ``log p_t1(x)`` of the pushforward of N(0, I) at t = 0 under ``dx/dt = v(x, t)``
  (instantaneous change of variables, integrated backwards with RK4; exact divergence by
  autograd up to ``exact_max_dim``, Hutchinson with fixed Rademacher probes above);
  ``cnf_logp_many``: the same for several point sets at one t1, integrated as one batch.
* ``student_logq``: exact log-density of a few-step Euler map's endpoint by the discrete change
  of variables, with a per-sample fold flag (the formula needs an injective map).
* ``knn_entropy`` (Kozachenko-Leonenko), ``kl_knn`` (needs no injectivity),
  ``tv_from_logratio`` (TV = E_q[(1 - p/q)_+] from samples of q), ``kl_from_logratio``
  (KL = E_q[r - 1 - log r], r = p/q) and ``kl_logratio`` (KL = E_q[log q - log p]).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.special import digamma, gammaln

from reflowma.core.autodiff import batch_jacobian, forward_jacobian
from reflowma.core.solvers import time_vector

LOG2PI = math.log(2 * math.pi)


def _flat(a: torch.Tensor) -> torch.Tensor:
    return a.reshape(a.shape[0], -1)


def std_normal_logp(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)`` per sample."""
    zf = _flat(z)
    return -0.5 * (zf.pow(2).sum(-1) + zf.shape[1] * LOG2PI)


def _divergence(v, x: torch.Tensor, t: float, probes: torch.Tensor | None,
                per_probe: bool = False):
    """(v(x, t), div_x v): exact if ``probes`` is None, else the Hutchinson mean over the given
    Rademacher probes ``[P, *x.shape]``; ``per_probe`` adds each probe's estimate ``[P, B]``
    (Hutchinson only).

    Exact: forward mode by the network's own tangent pass where it has one (``v.jvp``, e.g.
    the MLP: one primal pass, the d unit tangents in one product per layer), else one forward
    pass and d vector-Jacobian products through it (any differentiable callable). Measured on
    CPU (benchmarks/divergence_modes.py) both beat a forward/backward on d copies of the batch
    and the generic forward mode (``torch.func.jvp`` or ``jacfwd`` under ``vmap``).
    """
    if probes is None and getattr(v, "jvp", None) is not None:
        with torch.no_grad():
            vx, J = forward_jacobian(v, x.detach(), time_vector(t, x))
        return vx, J.diagonal(dim1=1, dim2=2).sum(-1)
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        vx = v(xg, time_vector(t, xg))
        if probes is None:
            div = batch_jacobian(vx, xg).diagonal(dim1=1, dim2=2).sum(-1)
            return vx.detach(), div.detach()
        div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        P = probes.shape[0]
        parts = []
        for p in range(P):
            e = probes[p].reshape(vx.shape)
            g = torch.autograd.grad((vx * e).sum(), xg, retain_graph=p < P - 1)[0]
            parts.append(_flat(g * e).sum(-1).detach())
            div = div + parts[-1]
    if per_probe:
        return vx.detach(), (div / P).detach(), torch.stack(parts)
    return vx.detach(), (div / P).detach()


def _rk4_logp(v, x: torch.Tensor, t1: float, n: int, probes: torch.Tensor | None,
              se: bool = False):
    """``log p_t1(x)`` by ``n`` RK4 steps of ``(x, I)`` backwards from t1 to 0 (see cnf_logp).
    ``se`` (Hutchinson with P > 1 probes): also the per-sample standard error of that estimate,
    the spread of the P single-probe integrals over sqrt(P) (None otherwise)."""
    h = -float(t1) / n
    times = [float(t1) * (n - i) / n for i in range(n + 1)]  # exact t1 ... 0
    per = se and probes is not None and probes.shape[0] > 1
    acc_p = 0.0  # each probe's integral (per)

    def f(xs, t):
        return _divergence(v, xs, t, probes, per_probe=True) if per else \
            (*_divergence(v, xs, t, probes), None)

    acc = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for i in range(n):
        t, tn = times[i], times[i + 1]
        tm = 0.5 * (t + tn)
        k1, a1, p1 = f(x, t)
        k2, a2, p2 = f(x + 0.5 * h * k1, tm)
        k3, a3, p3 = f(x + 0.5 * h * k2, tm)
        k4, a4, p4 = f(x + h * k3, tn)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        # dI/dt = -div v  =>  I(t + h) = I(t) - h * mean(div)
        acc = acc - h / 6 * (a1 + 2 * a2 + 2 * a3 + a4)
        if per:
            acc_p = acc_p - h / 6 * (p1 + 2 * p2 + 2 * p3 + p4)
    logp = std_normal_logp(x) - acc
    if not se:
        return logp
    return logp, (acc_p.std(0) / math.sqrt(acc_p.shape[0]) if per else None)


def cnf_logp_many(v, xs, t1: float = 1.0, steps: int = 100, exact_max_dim: int = 16,
                  probes: int = 1, generator: torch.Generator | None = None,
                  chunk: int = 2048, se: bool = False):
    """``cnf_logp`` of several point sets ``xs`` (each ``[N_j, *data]``) that share ``t1``,
    integrated as one batch (concatenated, then in chunks of ``chunk`` rows); returns one
    ``[N_j]`` tensor per set. ``se``: returns ``(log-densities, standard errors)``, the second
    a list of per-sample standard errors of the Hutchinson estimate (its P single-probe
    integrals' spread over sqrt(P)), or None (exact divergence, or one probe).

    Equals ``[cnf_logp(v, x, t1, ...) for x in xs]`` with the same generator: the Hutchinson
    probes are drawn set by set and chunk by chunk of each set, in that order, exactly as the
    separate calls draw them (each row keeps its probe, whatever chunk it is integrated in).
    """
    xs = [x.detach() for x in xs]
    if t1 <= 0 or not xs:
        out = [std_normal_logp(x) for x in xs]
        return (out, None) if se else out
    d = _flat(xs[0]).shape[1]
    exact = d <= exact_max_dim
    pr = None
    if not exact:
        pr = torch.cat([(torch.randint(0, 2, (probes, *x[lo: lo + chunk].shape),
                                       generator=generator) * 2 - 1).to(x)
                        for x in xs for lo in range(0, x.shape[0], chunk)], dim=1)
    x_all = torch.cat(xs)
    n = max(1, int(steps))
    sizes = [x.shape[0] for x in xs]
    parts = [_rk4_logp(v, x_all[lo: lo + chunk], t1, n,
                       None if pr is None else pr[:, lo: lo + chunk], se=se)
             for lo in range(0, x_all.shape[0], chunk)]
    if not se:
        return list(torch.cat(parts).split(sizes))
    out = list(torch.cat([lp for lp, _ in parts]).split(sizes))
    if parts[0][1] is None:
        return out, None
    return out, list(torch.cat([e for _, e in parts]).split(sizes))


def cnf_logp(v, x1: torch.Tensor, t1: float = 1.0, steps: int = 100, exact_max_dim: int = 16,
             probes: int = 1, generator: torch.Generator | None = None,
             chunk: int = 2048) -> torch.Tensor:
    """``log p_t1(x1)`` of the flow pushforward of N(0, I) (t = 0) under ``dx/dt = v(x, t)``.

    Integrates ``(x, I)`` backwards from ``t1`` to 0 with ``steps`` RK4 steps (over ``[0, t1]``;
    at least one), where ``dI/dt = -div v`` and ``I(t1) = 0``; then
    ``log p_t1(x1) = log N(x(0); 0, I) - I(0)``. ``t1 < 1`` gives the intermediate marginals
    ``p_{t_k}`` (``t1 = 0`` is ``log N(x1)``). ``v`` must be finite at t = 0 (the last RK4 stage
    is evaluated there). Divergence: exact for ``d <= exact_max_dim``, else ``probes``
    Rademacher probes drawn once per chunk from ``generator`` and held fixed along the path
    (unbiased for log p). Evaluate in float64 for accuracy (model and x in the same dtype).
    Several sets at the same ``t1``: ``cnf_logp_many`` (one batched integration).
    """
    return cnf_logp_many(v, [x1], t1, steps, exact_max_dim, probes, generator, chunk)[0]


def knn_entropy(x, k: int = 5) -> float:
    """Kozachenko-Leonenko entropy estimate (nats) of samples ``[N, *data]``.

    ``H = psi(N) - psi(k) + log V_d + (d / N) sum_i log r_i`` with ``r_i`` the distance to the
    k-th nearest neighbour and ``V_d`` the unit-ball volume. Duplicate points (distance 0) are
    skipped: ``r_i`` is the distance to the k-th neighbour at a positive distance, so the
    estimate stays finite (it then describes the distinct support points).
    """
    a = np.asarray(x.detach().cpu().numpy() if torch.is_tensor(x) else x, dtype=np.float64)
    a = a.reshape(a.shape[0], -1)
    N, d = a.shape
    _, inv, counts = np.unique(a, axis=0, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    if len(counts) <= k:
        raise ValueError(f"knn_entropy: needs more than k = {k} distinct points, got {len(counts)}")
    mult = counts[inv]  # copies of each point, itself included
    m = int(counts.max())
    dist, _ = cKDTree(a).query(a, k=k + m)
    dist = dist.reshape(N, -1)
    r = dist[np.arange(N), mult - 1 + k]
    log_vd = 0.5 * d * math.log(math.pi) - gammaln(0.5 * d + 1)
    return float(digamma(N) - digamma(k) + log_vd + d * np.mean(np.log(r)))


def kl_knn(q_samples, logp_at_q, k: int = 5) -> float:
    """``KL(q || p) ~= -H_kNN(q) - mean log p(x_i)``, ``x_i ~ q`` (no density of q needed)."""
    return -knn_entropy(q_samples, k) - float(torch.as_tensor(logp_at_q, dtype=torch.float64)
                                              .mean())


def tv_from_logratio(logq, logp) -> float:
    """``TV(q, p) = E_q[(1 - p/q)_+]`` from log-densities at samples of q."""
    lq = torch.as_tensor(logq, dtype=torch.float64)
    lp = torch.as_tensor(logp, dtype=torch.float64)
    return float(torch.clamp(-torch.expm1(lp - lq), min=0).mean())


def kl_from_logratio(logq, logp) -> float:
    """``KL(q || p)`` from log-densities at samples of q: ``E_q[r - 1 - log r]``, ``r = p/q``.

    Unbiased (``E_q[r] = 1`` where p is a normalized density supported within q's support),
    non-negative per sample and of much lower variance than ``E_q[log q - log p]`` when q is
    close to p (that plain estimate is ``kl_logratio``; both are reported by the audit).
    """
    d = torch.as_tensor(logp, dtype=torch.float64) - torch.as_tensor(logq, dtype=torch.float64)
    return float((torch.expm1(d) - d).mean())


def kl_logratio(logq, logp) -> float:
    """Plain ``E_q[log q - log p]`` (unbiased, can be negative on finite samples)."""
    return float((torch.as_tensor(logq, dtype=torch.float64)
                  - torch.as_tensor(logp, dtype=torch.float64)).mean())


def _logdet_step(v, x: torch.Tensor, t: float, h: float):
    """(x + h v(x, t), log|det(I + h J)|, det) for one Euler step, exact Jacobian."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        vx = v(xg, time_vector(t, xg))
        J = batch_jacobian(vx, xg)
    M = torch.eye(J.shape[1], dtype=J.dtype, device=J.device) + h * J
    sign, logabs = torch.linalg.slogdet(M)
    return (x + h * vx).detach(), logabs.detach(), (sign * torch.exp(logabs)).detach()


def euler_logdet(v, x: torch.Tensor, grid, chunk: int = 2048):
    """Euler map along ``grid`` applied to x: ``(y, sum_i log|det(I + h_i J_i)|, folded)``.

    ``folded`` (bool ``[N]``) marks the points where some step has ``det <= 0``.
    """
    grid = [float(s) for s in grid]
    ys, lds, fs = [], [], []
    for lo in range(0, x.shape[0], chunk):
        xc = x[lo: lo + chunk].detach()
        total = torch.zeros(xc.shape[0], dtype=xc.dtype, device=xc.device)
        folded = torch.zeros(xc.shape[0], dtype=torch.bool, device=xc.device)
        for a, b in zip(grid[:-1], grid[1:], strict=True):
            xc, ld, det = _logdet_step(v, xc, a, b - a)
            total = total + ld
            folded |= det <= 0
        ys.append(xc)
        lds.append(total)
        fs.append(folded)
    return torch.cat(ys), torch.cat(lds), torch.cat(fs)


def student_logq(v, z: torch.Tensor, grid, chunk: int = 2048):
    """Endpoint, log-density and fold flag of the Euler map along ``grid`` applied to z ~ N(0,I).

    ``log q(y) = log N(z; 0, I) - sum_i log|det(I + h_i J_v(x_i, t_i))|``: exact where the map
    is injective. ``folded`` (bool ``[N]``) marks z where some step has ``det <= 0``; where any
    sample folds the map is not injective and ``log q`` is not the density of the endpoint.
    Returns ``(y, logq, folded)``.
    """
    y, ld, folded = euler_logdet(v, z, grid, chunk)
    return y, std_normal_logp(z) - ld, folded
