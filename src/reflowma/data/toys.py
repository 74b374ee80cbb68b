"""Seeded 2D toy distributions. Each sampler: ``(n, generator) -> [n, 2]`` float32."""

from __future__ import annotations

import math

import torch

from reflowma.core.gmm import eight_gaussians


def _8gaussians(n, g):
    return eight_gaussians().sample(n, g)


def _moons(n, g, noise=0.1):
    n1 = n // 2
    a = torch.rand(n1, generator=g) * math.pi
    b = torch.rand(n - n1, generator=g) * math.pi
    upper = torch.stack([torch.cos(a), torch.sin(a)], 1)
    lower = torch.stack([1 - torch.cos(b), 0.5 - torch.sin(b)], 1)
    x = torch.cat([upper, lower])[torch.randperm(n, generator=g)]
    x = x + noise * torch.randn(n, 2, generator=g)
    return 2.0 * (x - torch.tensor([0.5, 0.25]))


def _checkerboard(n, g):
    x1 = torch.rand(n, generator=g) * 4 - 2
    x2 = torch.rand(n, generator=g) - torch.randint(0, 2, (n,), generator=g) * 2.0
    x2 = x2 + torch.floor(x1) % 2
    return torch.stack([x1, x2], 1) * 2


def _spirals(n, g, noise=0.1):
    r = torch.sqrt(torch.rand(n, generator=g)) * 3 * math.pi
    sign = torch.randint(0, 2, (n,), generator=g) * 2.0 - 1
    x = torch.stack([sign * r * torch.cos(r), sign * r * torch.sin(r)], 1) / 2.5
    return x + noise * torch.randn(n, 2, generator=g)


TOYS = {"8gaussians": _8gaussians, "moons": _moons, "checkerboard": _checkerboard,
        "spirals": _spirals}


def sample_toy(name: str, n: int, generator: torch.Generator) -> torch.Tensor:
    if name not in TOYS:
        raise ValueError(f"unknown toy dataset {name!r}; allowed: {', '.join(TOYS)}")
    return TOYS[name](n, generator).float()
