"""Trajectory-matching losses (per-sample distances averaged over the batch)."""

from __future__ import annotations

import math

import torch

NAMES = ("l2", "pseudo_huber")


def distance(pred: torch.Tensor, target: torch.Tensor, kind: str = "l2",
             huber_c: float | None = None) -> torch.Tensor:
    """Per-sample distance ``[B]``.

    ``l2``: squared Euclidean norm. ``pseudo_huber``: ``sqrt(|d|^2 + c^2) - c`` with
    ``c = 0.00054 sqrt(dim)`` by default (as in improved consistency training / 2-RF++).
    """
    d2 = (pred - target).reshape(pred.shape[0], -1).pow(2).sum(-1)
    if kind == "l2":
        return d2
    if kind == "pseudo_huber":
        c = huber_c if huber_c is not None else 0.00054 * math.sqrt(pred[0].numel())
        return torch.sqrt(d2 + c * c) - c
    raise ValueError(f"unknown loss {kind!r}; allowed: {', '.join(NAMES)}")


def tm_loss(v, x_t, t, target, kind="l2", huber_c=None) -> torch.Tensor:
    """Trajectory-matching loss ``E d(v(x_t, t), target)``."""
    return distance(v(x_t, t), target, kind, huber_c).mean()


def heldout_tm_loss(v, ends: torch.Tensor, K: int, generator: torch.Generator,
                    n_t: int = 8, batch: int = 4096) -> float:
    """Mean L2 trajectory-matching loss on held-out couplings ``ends`` ``[N, K + 1, *data]``,
    ``n_t`` uniform times per coupling (from ``generator``, so it is reproducible)."""
    from reflowma.core.interpolant import piecewise_pair

    total, count = 0.0, 0
    with torch.no_grad():
        for _ in range(n_t):
            t = torch.rand(ends.shape[0], generator=generator).to(ends.dtype)
            for lo in range(0, ends.shape[0], batch):
                xt, tgt = piecewise_pair(ends[lo: lo + batch], t[lo: lo + batch], K)
                d = distance(v(xt, t[lo: lo + batch]), tgt)
                total, count = total + float(d.sum()), count + d.shape[0]
    return total / count
