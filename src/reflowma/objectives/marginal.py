"""Marginal-alignment regularizer. See docs/math.md.

For window k (``t_k = k / K``, ``h = 1 / K``) the student's sampler map is one Euler step
``y = Phi(x) = x + h v(x, t_k)`` applied to teacher states ``x ~ p_{t_k}``. The reverse KL
``KL(Phi # p_{t_k} || p_{t_{k+1}})`` has the parameter gradient of the surrogate

    L_k = E[ -log|det dPhi/dx| ] - E[ stopgrad(s(y', t')) . y' ]

with ``s`` the target score (the frozen teacher's, from its velocity), ``t' = t_{k+1}`` and
``y' = y``, except on the last window (``t_{k+1} = 1``, where the score is singular): there
``t' = 1 - eps`` and ``y' = (1 - eps) y`` (``rescale_end``), the exact reverse-KL gradient
towards ``p_1`` smoothed by ``N(0, (eps / (1 - eps))^2 I)``.

log|det|: ``exact`` = ``log|det(I + h J)|`` from the autograd Jacobian, with a fold barrier
(``log det`` above ``delta``, its tangent line below, so folded points are pushed back instead
of rewarded); ``trace`` = ``h tr J`` (first order, exact trace); ``hutchinson`` = ``h eps^T J eps``
averaged over Rademacher probes (first order, unbiased for ``h tr J``, any dimension);
``series`` = ``sum_{k<=n} (-1)^{k+1} eps^T (hJ)^k eps / k`` averaged over the probes, ``n =
series_order`` (``core.logdet``: unbiased for the truncated series, which converges to the exact
value only where every eigenvalue of ``hJ`` lies inside the unit disc; n products per probe).
For a network with an explicit tangent pass (``v.jvp``, the MLP) ``pushforward`` takes J (d unit
tangents) and ``J eps`` (one tangent per probe; ``series``: n chained tangents) in forward mode,
together with ``v(x)``, with no double backward. Other networks (the UNet) take ``exact`` and
``trace`` by the generic ``torch.func`` forward mode too (d tangents in one batched pass: on
an 8x8 UNet about 10x faster than d sequential VJPs on the CPU), and ``hutchinson``/``series``
by the reverse-mode ``logdet_*`` (one VJP per probe and power, with ``create_graph``; the
loss's backward goes through it again). Forward mode on such a network runs attention on the
math backend (``autodiff.velocity_jvp``); the reverse mode keeps the network's own kernels.

``regularizer.discrepancy`` picks the term: ``reverse_kl`` (the surrogate above, the paper's) or
a sample discrepancy (``mmd``, ``sliced_w2``, ``sinkhorn``; ``SampleDiscrepancy``) between the
same pushforward ``Phi # p_{t_k}`` and ``p_{t_{k+1}}``, both known only through samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from reflowma.core import discrepancies
from reflowma.core import logdet as core_logdet  # `logdet` is the mode's name here
from reflowma.core.autodiff import batch_jacobian, forward_jacobian, velocity_jvp
from reflowma.core.interpolant import score_from_velocity
from reflowma.objectives.base import Context, Term, eager

LOGDET_MODES = ("exact", "trace", "hutchinson", "series")
DISCREPANCIES = ("reverse_kl", "mmd", "sliced_w2", "sinkhorn")


def barrier_log(det: torch.Tensor, delta: float | None) -> torch.Tensor:
    """``log det`` for ``det > delta``; ``log delta + (det - delta) / delta`` below (C^1)."""
    if delta is None:
        return torch.log(det.abs())
    safe = torch.clamp(det, min=delta)
    return torch.where(det > delta, torch.log(safe), math.log(delta) + (det - delta) / delta)


def _flat(a: torch.Tensor) -> torch.Tensor:
    return a.reshape(a.shape[0], -1)


def barrier_logdet(J: torch.Tensor, h: float, delta: float | None):
    """(barrier log|det(I + h J)| ``[B]``, det ``[B]``) from Jacobians ``J`` ``[B, d, d]``."""
    M = torch.eye(J.shape[1], dtype=J.dtype, device=J.device) + h * J
    det = torch.linalg.det(M)
    return barrier_log(det, delta), det


def logdet_exact(vx: torch.Tensor, x: torch.Tensor, h: float, delta: float | None):
    """(barrier log|det(I + h J)| ``[B]``, det ``[B]``); ``vx = v(x)``, x requiring grad."""
    return barrier_logdet(batch_jacobian(vx, x, create_graph=True), h, delta)


def logdet_trace(vx: torch.Tensor, x: torch.Tensor, h: float) -> torch.Tensor:
    """``h tr J`` with the exact trace (d vector-Jacobian products)."""
    return h * torch.diagonal(batch_jacobian(vx, x, create_graph=True), dim1=1, dim2=2).sum(-1)


def rademacher(n_probes: int, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``[n_probes, *like.shape]`` of +-1 (like's dtype and device), drawn probe by probe on the
    generator's device (the draws of ``logdet_hutchinson``, in its order)."""
    return torch.stack([torch.randint(0, 2, like.shape, generator=generator,
                                      device=generator.device) * 2 - 1
                        for _ in range(n_probes)]).to(like)


def logdet_hutchinson(vx: torch.Tensor, x: torch.Tensor, h: float, n_probes: int,
                      generator: torch.Generator) -> torch.Tensor:
    """``h * mean_p eps_p^T J eps_p`` with Rademacher probes (one VJP each)."""
    est = 0.0
    for _ in range(n_probes):
        eps = (torch.randint(0, 2, vx.shape, generator=generator,
                             device=generator.device) * 2 - 1).to(vx)
        g = torch.autograd.grad((vx * eps).sum(), x, create_graph=True)[0]
        est = est + _flat(g * eps).sum(-1)
    return h * est / n_probes


def logdet_series(vx: torch.Tensor, x: torch.Tensor, h: float, order: int, n_probes: int,
                  generator: torch.Generator) -> torch.Tensor:
    """``mean_p sum_{k<=order} (-1)^{k+1} eps_p^T (hJ)^k eps_p / k`` with Rademacher probes
    (``rademacher``'s draws): ``u_k^T = u_{k-1}^T hJ`` by one VJP each (``create_graph``), so the
    estimate stays differentiable for the parameters. ``u_{k-1}`` is the VJP's cotangent, not a
    factor of a scalar to differentiate: it depends on x, and that dependence is not J's."""
    probes = rademacher(n_probes, vx, generator)
    est = 0.0
    for p in range(n_probes):
        u, quads = probes[p], []
        for _ in range(order):
            u = h * torch.autograd.grad(vx, x, grad_outputs=u, create_graph=True)[0]
            quads.append(_flat(u * probes[p]).sum(-1))
        est = est + core_logdet.series(quads)
    return est / n_probes


def velocity_and_logdet(v, x: torch.Tensor, t: torch.Tensor, h: float, logdet: str,
                        fold_delta: float | None, n_probes: int,
                        generator: torch.Generator | None, series_order: int = 2):
    """``(v(x, t), log-det term [B], det [B] or None)`` in forward mode (no VJPs):
    ``exact``/``trace`` from the full Jacobian (d tangents), ``hutchinson`` from ``J eps`` (one
    tangent per probe, the probes of ``rademacher``), ``series`` from ``(hJ)^k eps`` (chained
    tangents, ``series_order`` passes). Same values as the reverse-mode ``logdet_*`` (up to
    rounding), with the same barrier and the same probe draws."""
    if logdet == "hutchinson":
        probes = rademacher(n_probes, x, generator)
        vx, Ju = velocity_jvp(v, x, t, probes)
        quad = (probes * Ju).reshape(n_probes, x.shape[0], -1).sum(-1)
        return vx, h * quad.sum(0) / n_probes, None
    if logdet == "series":
        probes = rademacher(n_probes, x, generator)
        vx, Ju = velocity_jvp(v, x, t, probes)
        w, quads = h * Ju, []
        for k in range(series_order):
            if k:
                w = h * velocity_jvp(v, x, t, w)[1]
            quads.append((probes * w).reshape(n_probes, x.shape[0], -1).sum(-1))
        return vx, core_logdet.series(quads).sum(0) / n_probes, None
    vx, J = forward_jacobian(v, x, t)
    if logdet == "exact":
        ld, det = barrier_logdet(J, h, fold_delta)
        return vx, ld, det
    return vx, h * torch.diagonal(J, dim1=1, dim2=2).sum(-1), None


def pushforward(v, x: torch.Tensor, tk: torch.Tensor, h: float, logdet: str,
                fold_delta: float | None, n_probes: int, generator: torch.Generator | None,
                series_order: int = 2):
    """``(x, v(x, t_k), log-det term [B], det [B] or None)`` of the window map
    ``x -> x + h v(x, t_k)`` at teacher states ``x`` (returned detached; requiring grad on the
    reverse-mode path): forward mode for a network with ``v.jvp`` and for ``exact``/``trace``
    (the generic ``torch.func`` tangents), VJPs for ``hutchinson``/``series`` otherwise."""
    if logdet not in LOGDET_MODES:
        raise ValueError(f"regularizer.logdet: {logdet!r}; allowed: {', '.join(LOGDET_MODES)}")
    if hasattr(v, "jvp") or logdet in ("exact", "trace"):
        x = x.detach()
        vx, ld, det = velocity_and_logdet(v, x, tk, h, logdet, fold_delta, n_probes, generator,
                                          series_order)
        return x, vx, ld, det
    x = x.detach().requires_grad_(True)
    vx = v(x, tk)
    if logdet == "hutchinson":
        ld = logdet_hutchinson(vx, x, h, n_probes, generator)
    else:
        ld = logdet_series(vx, x, h, series_order, n_probes, generator)
    return x, vx, ld, None


def alignment(score_fn, x: torch.Tensor, vx: torch.Tensor, ld: torch.Tensor, det, k, K: int, *,
              eps: float, rescale_end: bool, stop_grad: bool = True):
    """The surrogate ``(-ld - stopgrad(s(y', t')) . y').mean()`` and its stats, from the window
    map's pieces (``pushforward``): ``y = x + vx / K``, ``y'`` and ``t'`` as in the module
    docstring."""
    h, tk = 1.0 / K, k.to(x.dtype) / K
    y = x + h * vx
    stats = {}
    if det is not None:
        stats["folded"] = (det <= 0).to(torch.float64).mean().detach()
    last = (k + 1) == K
    t_end = torch.where(last, torch.full_like(tk, 1.0 - eps), (k + 1).to(x.dtype) / K)
    scale = torch.where(last & rescale_end, torch.full_like(tk, 1.0 - eps), torch.ones_like(tk))
    y_end = y * scale.reshape(-1, *([1] * (y.dim() - 1)))
    s = score_fn(y_end.detach() if stop_grad else y_end, t_end)
    if stop_grad:
        s = s.detach()
    align = _flat(s * y_end).sum(-1)
    stats["logdet"] = ld.detach().mean()
    return (-ld - align).mean(), stats


def surrogate(v, score_fn, x: torch.Tensor, k: torch.Tensor, K: int, *, logdet: str = "exact",
              fold_delta: float | None = 1e-3, eps: float = 0.05, rescale_end: bool = True,
              n_probes: int = 1, generator: torch.Generator | None = None,
              stop_grad: bool = True, series_order: int = 2):
    """Surrogate ``L`` (scalar) whose parameter gradient is the reverse-KL gradient, and stats.

    ``x``: teacher states at the window starts ``[B, *data]``; ``k``: window index ``[B]``;
    ``score_fn(y, t) -> [B, *data]`` the target score at time ``t`` ``[B]``.
    """
    x, vx, ld, det = pushforward(v, x, k.to(x.dtype) / K, 1.0 / K, logdet, fold_delta, n_probes,
                                 generator, series_order)
    return alignment(score_fn, x, vx, ld, det, k, K, eps=eps, rescale_end=rescale_end,
                     stop_grad=stop_grad)


def teacher_score_fn(teacher):
    """Target score ``s_T(y, t) = -(y - t v_T(y, t)) / (1 - t)`` of a frozen teacher, at the
    times ``t < 1`` the surrogate builds (not read back: no host-device sync)."""

    def score(y, t):
        return score_from_velocity(teacher(y, t), y, t, check=False)

    return score


@dataclass(kw_only=True)
class MarginalAlignment(Term):
    """The surrogate on a batch of window-start states ``x_k`` drawn from the couplings, with
    the window ``k`` drawn uniformly from ``windows``; on from ``start_step`` (warm start)."""

    ctx: Context
    batch_size: int = 256
    windows: tuple[int, ...] = (0,)
    options: dict | None = None

    def __post_init__(self):
        self.score = teacher_score_fn(self.ctx.teacher)
        self._windows = {}  # device -> the windows as a tensor there (made once)

    def window_tensor(self, device: torch.device) -> torch.Tensor:
        if device not in self._windows:
            self._windows[device] = torch.tensor(self.windows, device=device)
        return self._windows[device]

    def loss(self, v, generator):
        ends, dev, n, gd = self.ctx.ends, self.ctx.device, self.batch_size, generator.device
        b = torch.randint(0, ends.shape[0], (n,), generator=generator, device=gd)
        k = self.window_tensor(gd)[torch.randint(0, len(self.windows), (n,), generator=generator,
                                                 device=gd)]
        return surrogate(eager(v), self.score, ends[b, k].to(dev), k.to(dev), self.ctx.K,
                         generator=generator, **self.options)


def sample_discrepancy(name: str, y: torch.Tensor, target: torch.Tensor,
                       generator: torch.Generator, *, mmd_scales=(0.5, 1.0, 2.0),
                       n_projections: int = 64, sinkhorn_eps: float = 0.1,
                       sinkhorn_iters: int = 100, sinkhorn_tol: float = 1e-4) -> torch.Tensor:
    """``D(y, target)`` for two sample sets ``[m, *data]`` (gradient through ``y``).

    ``mmd``: unbiased MMD² with bandwidths ``mmd_scales`` times the median distance of the
    (detached) target batch: the scale follows ``p_{t_{k+1}}``, which goes from unit noise to
    the data's spread across windows, and several scales keep both the spread between modes
    (the median, for multimodal data) and the shape within one resolved. ``sliced_w2``: over
    ``n_projections`` directions drawn from ``generator`` each call. ``sinkhorn``: debiased
    Sinkhorn divergence on ``|.|²`` with ``eps = sinkhorn_eps`` (data units squared).
    """
    if name == "mmd":
        bandwidths = discrepancies.median_bandwidths(target, mmd_scales)
        return discrepancies.mmd2(y, target, bandwidths)
    if name == "sliced_w2":
        d = target[0].numel()
        th = discrepancies.random_directions(n_projections, d, generator, torch.float32,
                                             generator.device)
        return discrepancies.sliced_w2(y, target, th.to(y))
    if name == "sinkhorn":
        return discrepancies.sinkhorn_divergence(y, target, sinkhorn_eps, sinkhorn_iters,
                                                 sinkhorn_tol)
    raise ValueError(f"regularizer.discrepancy: {name!r}; allowed: {', '.join(DISCREPANCIES)}")


@dataclass(kw_only=True)
class SampleDiscrepancy(Term):
    """Mean over the windows ``k`` in ``windows`` of ``D(Phi_k # x_k, x'_{k+1})``: per window,
    ``m = max(2, batch_size // len(windows))`` teacher states ``x_k`` (the student's one Euler
    step ``y = x + h v(x, t_k)``) against ``m`` teacher states at ``t_{k+1}`` of *independently*
    drawn couplings, so the term compares distributions, not pairs (that is trajectory
    matching). Windows are compared one by one, never pooled: pooled sets of different ``k``
    would let one window's mass stand in for another's. The last window's targets are the
    teacher endpoints (no score, so no ``eps`` rescaling)."""

    ctx: Context
    batch_size: int = 256
    windows: tuple[int, ...] = (0,)
    name: str = "mmd"
    options: dict | None = None

    def loss(self, v, generator):
        ends, dev, K = self.ctx.ends, self.ctx.device, self.ctx.K
        m = max(2, self.batch_size // len(self.windows))
        h, total, stats = 1.0 / K, 0.0, {}
        for k in self.windows:
            b = torch.randint(0, ends.shape[0], (m,), generator=generator, device=generator.device)
            b2 = torch.randint(0, ends.shape[0], (m,), generator=generator,
                               device=generator.device)
            x, target = ends[b, k].to(dev), ends[b2, k + 1].to(dev)
            y = x + h * v(x, torch.full((m,), k / K, dtype=x.dtype, device=dev))
            dk = sample_discrepancy(self.name, y, target, generator, **(self.options or {}))
            stats[f"w{k}"] = dk.detach()
            total = total + dk
        return total / len(self.windows), stats


def marginal_alignment(cfg: dict, ctx: Context) -> Term:
    """The regularizer term of a reflow config's ``regularizer`` section: ``MarginalAlignment``
    for ``discrepancy: reverse_kl`` (the default), else ``SampleDiscrepancy``."""
    reg = cfg["regularizer"]
    windows = range(ctx.K) if reg["windows"] == "all" else reg["windows"]
    start = int(reg["warm_start"] * ctx.steps)
    name = reg.get("discrepancy", "reverse_kl")
    if name != "reverse_kl":
        options = {k: reg[k] for k in ("n_projections", "sinkhorn_eps", "sinkhorn_iters",
                                       "sinkhorn_tol") if k in reg}
        if "mmd_scales" in reg:
            options["mmd_scales"] = tuple(reg["mmd_scales"])
        return SampleDiscrepancy(key="reg", weight=reg["weight"], start_step=start, ctx=ctx,
                                 batch_size=reg["batch_size"], windows=tuple(windows), name=name,
                                 options=options)
    options = {k: reg[k] for k in ("logdet", "fold_delta", "eps", "rescale_end", "n_probes")}
    if reg["logdet"] == "series":
        options["series_order"] = reg["series_order"]
    return MarginalAlignment(key="reg", weight=reg["weight"], start_step=start, ctx=ctx,
                             batch_size=reg["batch_size"], windows=tuple(windows),
                             options=options)
