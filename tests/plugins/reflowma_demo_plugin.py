"""A plug-in module as a user would write it, outside the package: it registers a dataset, a
network, an objective term and a metric. Loaded by ``REFLOWMA_PLUGINS=reflowma_demo_plugin``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from reflowma.data import DATASETS, Dataset
from reflowma.evaluation.spec import STUDENT, TEACHER_CEILING, TEACHER_EULER, Metric, register
from reflowma.models import MODELS
from reflowma.objectives import OBJECTIVES, Term

NAMES = {"data": "demo_ring", "net": "demo_tiny", "objective": "demo_velocity_norm",
         "metric": "demo_radius"}


class Ring(Dataset):
    """Points on a noisy circle of radius 2, shape (2,)."""

    shape = (2,)

    def sample(self, n, generator):
        a = torch.rand(n, generator=generator) * 2 * math.pi
        r = 2.0 + 0.1 * torch.randn(n, generator=generator)
        return torch.stack([r * torch.cos(a), r * torch.sin(a)], dim=-1)


class TinyVelocity(nn.Module):
    """``v(x, t)``: one hidden layer on ``[x, t]``."""

    def __init__(self, data_shape, hidden):
        super().__init__()
        self.data_shape = tuple(data_shape)
        d = math.prod(self.data_shape)
        self.net = nn.Sequential(nn.Linear(d + 1, hidden), nn.SiLU(), nn.Linear(hidden, d))

    def forward(self, x, t):
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        h = torch.cat([x.reshape(x.shape[0], -1), t.reshape(-1, 1).to(x.dtype)], dim=-1)
        return self.net(h).reshape(x.shape)


def build_tiny(data_shape, cfg):
    return TinyVelocity(data_shape, cfg["hidden"])


build_tiny.schema = {"type": "object", "additionalProperties": False,
                     "required": ["name", "hidden"],
                     "properties": {"name": {"const": "demo_tiny"},
                                    "hidden": {"type": "integer", "minimum": 1}}}


@dataclass
class VelocityNorm(Term):
    """``E |v(x_0, 0)|^2`` on noise states: a (useless) penalty that shows up in the logs."""

    ctx: object = None

    def loss(self, v, generator):
        ends = self.ctx.ends
        b = torch.randint(0, ends.shape[0], (32,), generator=generator)
        x = ends[b, 0].to(self.ctx.device)
        return v(x, torch.zeros(x.shape[0], device=x.device)).pow(2).mean(), {"calls": 1.0}


def mean_radius(s, cfg):
    return float(s.y.reshape(s.y.shape[0], -1).norm(dim=-1).mean())


DATASETS.register(NAMES["data"], lambda cfg: Ring())
MODELS.register(NAMES["net"], build_tiny)
OBJECTIVES.register(NAMES["objective"],
                    lambda entry, cfg, ctx: VelocityNorm(key="demo_vnorm", weight=0.01, ctx=ctx))
register(Metric(NAMES["metric"], "mean radius", "data units", figure=True,
                paths={STUDENT: "nfe.{nfe}.demo_radius",
                       TEACHER_EULER: "teacher_euler.{nfe}.demo_radius",
                       TEACHER_CEILING: "teacher_ceiling.demo_radius"},
                compute=mean_radius))


def unregister() -> None:
    from reflowma.evaluation.spec import METRICS

    DATASETS.unregister(NAMES["data"])
    MODELS.unregister(NAMES["net"])
    OBJECTIVES.unregister(NAMES["objective"])
    METRICS.unregister(NAMES["metric"])
