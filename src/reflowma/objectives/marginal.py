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
averaged over Rademacher probes (first order, unbiased for ``h tr J``, any dimension).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from reflowma.core.autodiff import batch_jacobian
from reflowma.core.interpolant import score_from_velocity
from reflowma.objectives.base import Context, Term

LOGDET_MODES = ("exact", "trace", "hutchinson")


def barrier_log(det: torch.Tensor, delta: float | None) -> torch.Tensor:
    """``log det`` for ``det > delta``; ``log delta + (det - delta) / delta`` below (C^1)."""
    if delta is None:
        return torch.log(det.abs())
    safe = torch.clamp(det, min=delta)
    return torch.where(det > delta, torch.log(safe), math.log(delta) + (det - delta) / delta)


def _flat(a: torch.Tensor) -> torch.Tensor:
    return a.reshape(a.shape[0], -1)


def logdet_exact(vx: torch.Tensor, x: torch.Tensor, h: float, delta: float | None):
    """(barrier log|det(I + h J)| ``[B]``, det ``[B]``); ``vx = v(x)``, x requiring grad."""
    J = batch_jacobian(vx, x, create_graph=True)
    M = torch.eye(J.shape[1], dtype=J.dtype, device=J.device) + h * J
    det = torch.linalg.det(M)
    return barrier_log(det, delta), det


def logdet_trace(vx: torch.Tensor, x: torch.Tensor, h: float) -> torch.Tensor:
    """``h tr J`` with the exact trace (d vector-Jacobian products)."""
    return h * torch.diagonal(batch_jacobian(vx, x, create_graph=True), dim1=1, dim2=2).sum(-1)


def logdet_hutchinson(vx: torch.Tensor, x: torch.Tensor, h: float, n_probes: int,
                      generator: torch.Generator) -> torch.Tensor:
    """``h * mean_p eps_p^T J eps_p`` with Rademacher probes (one VJP each)."""
    est = 0.0
    for _ in range(n_probes):
        eps = (torch.randint(0, 2, vx.shape, generator=generator) * 2 - 1).to(vx)
        g = torch.autograd.grad((vx * eps).sum(), x, create_graph=True)[0]
        est = est + _flat(g * eps).sum(-1)
    return h * est / n_probes


def surrogate(v, score_fn, x: torch.Tensor, k: torch.Tensor, K: int, *, logdet: str = "exact",
              fold_delta: float | None = 1e-3, eps: float = 0.05, rescale_end: bool = True,
              n_probes: int = 1, generator: torch.Generator | None = None,
              stop_grad: bool = True):
    """Surrogate ``L`` (scalar) whose parameter gradient is the reverse-KL gradient, and stats.

    ``x``: teacher states at the window starts ``[B, *data]``; ``k``: window index ``[B]``;
    ``score_fn(y, t) -> [B, *data]`` the target score at time ``t`` ``[B]``.
    """
    if logdet not in LOGDET_MODES:
        raise ValueError(f"regularizer.logdet: {logdet!r}; allowed: {', '.join(LOGDET_MODES)}")
    h = 1.0 / K
    x = x.detach().requires_grad_(True)
    tk = k.to(x.dtype) / K
    vx = v(x, tk)
    y = x + h * vx
    stats = {}
    if logdet == "exact":
        ld, det = logdet_exact(vx, x, h, fold_delta)
        stats["folded"] = float((det <= 0).to(torch.float64).mean())
    elif logdet == "trace":
        ld = logdet_trace(vx, x, h)
    else:
        ld = logdet_hutchinson(vx, x, h, n_probes, generator)
    last = (k + 1) == K
    t_end = torch.where(last, torch.full_like(tk, 1.0 - eps), (k + 1).to(x.dtype) / K)
    scale = torch.where(last & rescale_end, torch.full_like(tk, 1.0 - eps), torch.ones_like(tk))
    y_end = y * scale.reshape(-1, *([1] * (y.dim() - 1)))
    s = score_fn(y_end.detach() if stop_grad else y_end, t_end)
    if stop_grad:
        s = s.detach()
    align = _flat(s * y_end).sum(-1)
    stats["logdet"] = float(ld.detach().mean())
    return (-ld - align).mean(), stats


def teacher_score_fn(teacher):
    """Target score ``s_T(y, t) = -(y - t v_T(y, t)) / (1 - t)`` of a frozen teacher."""

    def score(y, t):
        return score_from_velocity(teacher(y, t), y, t)

    return score


@dataclass
class MarginalAlignment(Term):
    """The surrogate on a batch of window-start states ``x_k`` drawn from the couplings, with
    the window ``k`` drawn uniformly from ``windows``; on from ``start_step`` (warm start)."""

    ctx: Context | None = None
    batch_size: int = 256
    windows: tuple[int, ...] = (0,)
    options: dict | None = None

    def __post_init__(self):
        self.score = teacher_score_fn(self.ctx.teacher)

    def loss(self, v, generator):
        ends, dev, n = self.ctx.ends, self.ctx.device, self.batch_size
        b = torch.randint(0, ends.shape[0], (n,), generator=generator)
        k = torch.tensor(self.windows)[torch.randint(0, len(self.windows), (n,),
                                                     generator=generator)]
        return surrogate(v, self.score, ends[b, k].to(dev), k.to(dev), self.ctx.K,
                         generator=generator, **self.options)


def marginal_alignment(entry: dict, cfg: dict, ctx: Context) -> MarginalAlignment:
    """The regularizer term of a reflow config's ``regularizer`` section."""
    reg = cfg["regularizer"]
    windows = range(ctx.K) if reg["windows"] == "all" else reg["windows"]
    options = {k: reg[k] for k in ("logdet", "fold_delta", "eps", "rescale_end", "n_probes")}
    return MarginalAlignment("reg", reg["weight"], int(reg["warm_start"] * ctx.steps), ctx,
                             reg["batch_size"], tuple(windows), options)
