"""Trajectory-matching losses (per-sample distances averaged over the batch)."""

from __future__ import annotations

import math

import torch

from reflowma.core.interpolant import piecewise_pair

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
                    n_t: int = 8, batch: int | None = None, device=None) -> float:
    """Mean L2 trajectory-matching loss on held-out couplings ``ends`` ``[N, K + 1, *data]``,
    ``n_t`` uniform times per coupling (from ``generator``, so it is reproducible). Chunks of
    ``batch`` couplings (None: all at once) go to ``device`` (``ends``' own if None), where
    ``v`` is; the sum stays there (float64) until the end."""
    dev = ends.device if device is None else torch.device(device)
    batch = batch or max(1, ends.shape[0])
    total, count = torch.zeros((), dtype=torch.float64, device=dev), 0
    with torch.no_grad():
        for _ in range(n_t):
            t = torch.rand(ends.shape[0], generator=generator).to(ends.dtype)
            for lo in range(0, ends.shape[0], batch):
                tc = t[lo: lo + batch].to(dev)
                xt, tgt = piecewise_pair(ends[lo: lo + batch].to(dev), tc, K)
                d = distance(v(xt, tc), tgt)
                total, count = total + d.sum().to(torch.float64), count + d.shape[0]
    return float(total) / count
