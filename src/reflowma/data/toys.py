"""Seeded 2D toy distributions. Each sampler: ``(n, generator) -> [n, 2]`` float32, drawn on the
generator's device (``ToyDataset.to`` and ``MixtureDataset.to`` give datasets that sample there).

``8gaussians`` is an isotropic Gaussian mixture (``EIGHT_GAUSSIANS``: radius and std): its
dataset object owns that mixture, so the sampler and the exact density the audit uses are one
object (``MixtureDataset``), never two copies of the parameters.
"""

from __future__ import annotations

import copy
import math

import torch

from reflowma.core.gmm import IsoGMM, eight_gaussians
from reflowma.data.base import Dataset

EIGHT_GAUSSIANS = {"radius": 4.0, "std": 0.5}


def _8gaussians(n, g):
    return eight_gaussians_dataset().to(g.device).sample(n, g)


def _moons(n, g, noise=0.1):
    n1, dev = n // 2, g.device
    a = torch.rand(n1, generator=g, device=dev) * math.pi
    b = torch.rand(n - n1, generator=g, device=dev) * math.pi
    upper = torch.stack([torch.cos(a), torch.sin(a)], 1)
    lower = torch.stack([1 - torch.cos(b), 0.5 - torch.sin(b)], 1)
    x = torch.cat([upper, lower])[torch.randperm(n, generator=g, device=dev)]
    x = x + noise * torch.randn(n, 2, generator=g, device=dev)
    return 2.0 * (x - torch.tensor([0.5, 0.25], device=dev))


def _checkerboard(n, g):
    dev = g.device
    x1 = torch.rand(n, generator=g, device=dev) * 4 - 2
    x2 = (torch.rand(n, generator=g, device=dev)
          - torch.randint(0, 2, (n,), generator=g, device=dev) * 2.0)
    x2 = x2 + torch.floor(x1) % 2
    return torch.stack([x1, x2], 1) * 2


def _spirals(n, g, noise=0.1):
    dev = g.device
    r = torch.sqrt(torch.rand(n, generator=g, device=dev)) * 3 * math.pi
    sign = torch.randint(0, 2, (n,), generator=g, device=dev) * 2.0 - 1
    x = torch.stack([sign * r * torch.cos(r), sign * r * torch.sin(r)], 1) / 2.5
    return x + noise * torch.randn(n, 2, generator=g, device=dev)


TOYS = {"8gaussians": _8gaussians, "moons": _moons, "checkerboard": _checkerboard,
        "spirals": _spirals}


def sample_toy(name: str, n: int, generator: torch.Generator) -> torch.Tensor:
    if name not in TOYS:
        raise ValueError(f"unknown toy dataset {name!r}; allowed: {', '.join(TOYS)}")
    return TOYS[name](n, generator).float()


class ToyDataset(Dataset):
    """A 2D toy from its sampler ``(n, generator) -> [n, 2]`` (no closed-form density)."""

    shape = (2,)

    def __init__(self, sampler):
        self.sampler = sampler

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.sampler(n, generator).float()

    def to(self, device) -> ToyDataset:
        """Itself: the sampler draws on the generator's device."""
        return self


class MixtureDataset(Dataset):
    """Samples and exact density of one isotropic Gaussian mixture.

    ``mixture`` is the float64 copy (``log_prob``, ``score`` and the audit's score error use
    it); samples are drawn in float32 from the same means, std and weights (float32 draws, as
    the toy pipeline always made them).
    """

    def __init__(self, mixture: IsoGMM):
        self.mixture = IsoGMM(mixture.means.double(), mixture.std, mixture.weights.double())
        self._sampler = IsoGMM(mixture.means.float(), mixture.std, mixture.weights.float())
        self.shape = (int(mixture.means.shape[1]),)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self._sampler.sample(n, generator).float()

    def to(self, device) -> MixtureDataset:
        """A copy whose sampler lives on ``device`` (draws there, from a generator there);
        ``mixture`` (the float64 density) stays where it is."""
        out = copy.copy(self)
        s = self._sampler
        out._sampler = IsoGMM(s.means.to(device), s.std, s.weights.to(device))
        return out

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact data log-density ``[B]`` (float64) at x ``[B, *shape]``."""
        return self.mixture.log_prob(x.reshape(x.shape[0], -1).double())

    def score(self, x: torch.Tensor, t: float = 1.0) -> torch.Tensor:
        """Score of the interpolant's marginal ``p_t`` (data at t = 1)."""
        return self.mixture.score(x.reshape(x.shape[0], -1).double(), t)


def eight_gaussians_dataset(radius: float | None = None, std: float | None = None):
    """The ``8gaussians`` dataset (parameters default to ``EIGHT_GAUSSIANS``)."""
    radius = EIGHT_GAUSSIANS["radius"] if radius is None else radius
    std = EIGHT_GAUSSIANS["std"] if std is None else std
    return MixtureDataset(eight_gaussians(radius, std, dtype=torch.float64))
