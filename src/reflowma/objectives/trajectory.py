"""Trajectory matching on the teacher's piecewise-straight paths, and the window-start term.

On window k (``t_k = k / K``) the target at ``x_t`` is ``(x_{t_{k+1}} - x_{t_k}) / (1 / K)``,
the straight segment between the teacher states at the window ends; K = 1 is vanilla reflow.
The window-start term queries only ``t = t_k``, the points a K-step sampler evaluates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reflowma.core import interpolant, losses, time_samplers
from reflowma.objectives.base import Context, Term


@dataclass
class TrajectoryMatching(Term):
    ctx: Context | None = None
    batch_size: int = 256
    time_sampler: dict | None = None
    distance: str = "l2"
    huber_c: float | None = None

    def loss(self, v, generator):
        ends, dev, bs, ts = self.ctx.ends, self.ctx.device, self.batch_size, self.time_sampler
        b = torch.randint(0, ends.shape[0], (bs,), generator=generator, device=generator.device)
        t = time_samplers.get(ts["name"])(bs, generator, **ts).to(ends.dtype)
        xt, target = interpolant.piecewise_pair(ends[b], t, self.ctx.K)
        return losses.tm_loss(v, xt.to(dev), t.to(dev), target.to(dev), self.distance,
                              self.huber_c), {}


@dataclass
class WindowStart(Term):
    ctx: Context | None = None
    batch_size: int = 256
    distance: str = "l2"
    huber_c: float | None = None

    def loss(self, v, generator):
        ends, dev, bs, K = self.ctx.ends, self.ctx.device, self.batch_size, self.ctx.K
        b = torch.randint(0, ends.shape[0], (bs,), generator=generator, device=generator.device)
        k = torch.randint(0, K, (bs,), generator=generator, device=generator.device)
        x0, target, tk = interpolant.window_start_pair(ends[b], k, K)
        return losses.tm_loss(v, x0.to(dev), tk.to(dev), target.to(dev), self.distance,
                              self.huber_c), {}


def trajectory_matching(entry: dict, cfg: dict, ctx: Context) -> TrajectoryMatching:
    return TrajectoryMatching("tm", 1.0, 0, ctx, cfg["train"]["batch_size"],
                              cfg["time_sampler"], cfg["loss"]["name"], cfg["loss"]["huber_c"])


def window_start(entry: dict, cfg: dict, ctx: Context) -> WindowStart:
    return WindowStart("window_start", cfg["window_start_weight"], 0, ctx,
                       cfg["train"]["batch_size"], cfg["loss"]["name"], cfg["loss"]["huber_c"])
