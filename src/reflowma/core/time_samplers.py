"""Training-time samplers on [0, 1] (t = 0 noise, t = 1 data). Each returns ``[n]``, drawn on
the generator's device."""

from __future__ import annotations

import math

import torch

NAMES = ("uniform", "u_shaped", "logit_normal")


def uniform(n: int, generator: torch.Generator, **_) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=generator.device)


def u_shaped(n: int, generator: torch.Generator, a: float = 4.0, **_) -> torch.Tensor:
    """Density proportional to ``cosh(a (t - 1/2))`` (2-rectified flow++), by inverse CDF."""
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=generator.device)
    t = 0.5 + torch.asinh((2 * u - 1) * math.sinh(a / 2)) / a
    return t.float().clamp(0.0, 1.0)


def logit_normal(n: int, generator: torch.Generator, mean: float = 0.0, std: float = 1.0, **_):
    """``t = sigmoid(m + s * eps)``, eps ~ N(0, 1) (as in SD3)."""
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator,
                                                  device=generator.device))


def get(name: str):
    try:
        return {"uniform": uniform, "u_shaped": u_shaped, "logit_normal": logit_normal}[name]
    except KeyError:
        raise ValueError(f"unknown time sampler {name!r}; allowed: {', '.join(NAMES)}") from None
