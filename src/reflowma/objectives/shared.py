"""The window-start term and the marginal regularizer from one forward on one batch
(``regularizer.share_window_start: true``).

Both terms evaluate the student at teacher states at the window starts, ``v(x_k, t_k)``. With
the option on, once the regularizer is on (from its warm start), one batch of
``regularizer.batch_size`` couplings with the window k uniform over the K windows gives both:
the regularizer's pass (``marginal.pushforward``: ``v(x_k, t_k)`` with its tangents, or its
VJPs) and, from the same ``v(x_k, t_k)``, the window-start term
``d(v(x_k, t_k), (x_{k+1} - x_k) K)``. It is an estimator choice, not the same numbers: after
the warm start the window-start term averages over the regularizer's batch instead of its own
``train.batch_size`` draws, and the two terms' gradients come from the same samples. Before the
warm start the window-start term is the one of the option off (same batch, same draws).

Draws happen on the generator's device (``base``); the shared forward calls the eager module
behind a compiled one (``base.eager``: the regularizer differentiates twice), so after the warm
start the window-start value comes from it too (same parameters, same values).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reflowma.core import interpolant, losses
from reflowma.objectives import marginal
from reflowma.objectives.base import Term, eager
from reflowma.objectives.trajectory import WindowStart


@dataclass(kw_only=True)
class SharedWindowStart(Term):
    """Parts ``window_start`` and ``reg`` (the keys and weights of the two terms it joins)."""

    window_start: WindowStart
    regularizer: marginal.MarginalAlignment

    def parts(self, v, step: int, generator: torch.Generator) -> list[tuple]:
        window_start, reg = self.window_start, self.regularizer
        if step < reg.start_step:
            return window_start.parts(v, step, generator)
        ctx, n, gd = reg.ctx, reg.batch_size, generator.device
        ends, dev, K, opt = ctx.ends, ctx.device, ctx.K, reg.options
        b = torch.randint(0, ends.shape[0], (n,), generator=generator, device=gd)
        k = torch.randint(0, K, (n,), generator=generator, device=gd)
        x, target, tk = interpolant.window_start_pair(ends[b], k, K)
        x, vx, ld, det = marginal.pushforward(eager(v), x.to(dev), tk.to(dev), 1.0 / K,
                                              opt["logdet"], opt["fold_delta"], opt["n_probes"],
                                              generator, opt.get("series_order", 2))
        window_start_value = losses.distance(vx, target.to(dev), window_start.distance,
                                             window_start.huber_c).mean()
        reg_value, stats = marginal.alignment(reg.score, x, vx, ld, det, k.to(dev), K,
                                              eps=opt["eps"], rescale_end=opt["rescale_end"])
        return [(window_start.key, window_start.weight, window_start_value, {}),
                (reg.key, reg.weight, reg_value, stats)]

    def keys(self) -> list[str]:
        return [self.window_start.key, self.regularizer.key]
