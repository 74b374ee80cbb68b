"""Velocity networks ``v(x, t)``: x ``[B, *data]``, t ``[B]`` -> ``[B, *data]``."""

from __future__ import annotations

import math

import torch
from torch import nn

ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "elu": nn.ELU}


class SinusoidalTimeEmbedding(nn.Module):
    """Fixed sin/cos features of t at log-spaced frequencies ``max_freq ** (i / (dim/2 - 1))``."""

    def __init__(self, dim: int, max_freq: float = 1000.0):
        super().__init__()
        if dim % 2 or dim < 4:
            raise ValueError(f"time_embed_dim must be even and >= 4, got {dim}")
        half = dim // 2
        freqs = torch.exp(torch.arange(half) * (math.log(max_freq) / (half - 1)))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        arg = t.reshape(-1, 1).to(self.freqs.dtype) * self.freqs
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)


class MLPVelocity(nn.Module):
    """MLP velocity field for data of any shape (flattened to ``dim``), time-embedded input."""

    def __init__(self, data_shape, width=256, depth=3, activation="silu", time_embed_dim=32):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; allowed: {sorted(ACTIVATIONS)}")
        self.data_shape = tuple(int(s) for s in data_shape)
        self.dim = int(math.prod(self.data_shape))
        self.embed = SinusoidalTimeEmbedding(time_embed_dim)
        layers, d_in = [], self.dim + time_embed_dim
        for _ in range(depth):
            layers += [nn.Linear(d_in, width), ACTIVATIONS[activation]()]
            d_in = width
        layers.append(nn.Linear(d_in, self.dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        h = torch.cat([x.reshape(x.shape[0], -1), self.embed(t).to(x.dtype)], dim=-1)
        return self.net(h).reshape(x.shape)


def build(data_shape, cfg: dict) -> MLPVelocity:
    """Network from the ``net`` section of a stage config."""
    return MLPVelocity(data_shape, cfg["width"], cfg["depth"], cfg["activation"],
                       cfg["time_embed_dim"])
