"""Isotropic Gaussian mixtures in closed form, and their marginals along the interpolant.

For data ``sum_i w_i N(m_i, s^2 I)`` and noise N(0, I) at t = 0, the marginal of
``x_t = (1 - t) z + t x`` is ``sum_i w_i N(t m_i, (t^2 s^2 + (1 - t)^2) I)``: log-density,
score and the exact velocity ``E[x - z | x_t]`` are closed form (used as test references).
"""

from __future__ import annotations

import math

import torch


class IsoGMM:
    def __init__(self, means: torch.Tensor, std: float, weights: torch.Tensor | None = None):
        self.means = means
        self.std = float(std)
        n = means.shape[0]
        self.weights = weights if weights is not None else torch.full((n,), 1.0 / n,
                                                                      dtype=means.dtype)

    def _params(self, t):
        t = torch.as_tensor(t, dtype=self.means.dtype)
        var = t**2 * self.std**2 + (1 - t) ** 2
        return t, var

    def _resp(self, x, t):
        t, var = self._params(t)
        mt = t.reshape(-1, 1, 1) * self.means[None] if t.dim() else t * self.means[None]
        var = var.reshape(-1, 1) if var.dim() else var
        d = x.shape[-1]
        sq = (x[:, None, :] - mt).pow(2).sum(-1)
        logc = torch.log(self.weights)[None] - 0.5 * sq / var - 0.5 * d * torch.log(2 * math.pi
                                                                                   * var)
        return logc, mt, var

    def log_prob(self, x: torch.Tensor, t=1.0) -> torch.Tensor:
        """``log p_t(x)``; x ``[B, d]``, t scalar or ``[B]``."""
        logc, _, _ = self._resp(x, t)
        return torch.logsumexp(logc, dim=1)

    def score(self, x: torch.Tensor, t=1.0) -> torch.Tensor:
        """``grad_x log p_t(x)``."""
        logc, mt, var = self._resp(x, t)
        r = torch.softmax(logc, dim=1)
        return ((r[..., None] * (mt - x[:, None, :])).sum(1)) / var

    def velocity(self, x: torch.Tensor, t) -> torch.Tensor:
        """Exact marginal velocity ``E[x1 - z | x_t = x] = (x + (1 - t) s_t(x)) / t``, t > 0."""
        t = torch.as_tensor(t, dtype=x.dtype)
        tb = t.reshape(-1, 1) if t.dim() else t
        return (x + (1 - tb) * self.score(x, t)) / tb

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` samples, drawn on the means' device (the generator's device must match)."""
        idx = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.means.shape[1], generator=generator, dtype=self.means.dtype,
                            device=self.means.device)
        return self.means[idx] + self.std * noise


def eight_gaussians(radius: float = 4.0, std: float = 0.5, dtype=torch.float32) -> IsoGMM:
    """Eight equal modes on a circle of the given radius."""
    ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = radius * torch.stack([torch.cos(ang), torch.sin(ang)], dim=1)
    return IsoGMM(means.to(dtype), std)
