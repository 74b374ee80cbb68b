"""Velocity networks ``v(x, t)``: x ``[B, *data]``, t ``[B]`` -> ``[B, *data]``.

A time shared by the whole batch (a 0-dim t, or a stride-0 expansion such as
``solvers.time_vector`` makes on every ODE step) is embedded once and broadcast. Without
autograd (the ODE solves of couplings and evaluation), a shared time goes further: its part
of the first layer is folded into that layer's bias once per call (``W_t e(t) + b``, one row),
so the batch's first product has ``dim`` inputs instead of ``dim + time_embed_dim``. Without
autograd the activations run in place, shared time or not. The result equals the one with
autograd to float rounding (the first layer's sum is associated differently: relative
differences of order 1e-7 in float32).
"""

from __future__ import annotations

import math
from itertools import islice

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "elu": nn.ELU}
# the same activations, in place where torch has a kernel for it (no autograd: inference only)
IN_PLACE = {"silu": lambda h: F.silu(h, inplace=True), "relu": torch.relu_, "gelu": F.gelu,
            "tanh": torch.tanh_, "elu": lambda h: F.elu(h, inplace=True)}


def _gelu_prime(a, h):
    return 0.5 * (1 + torch.erf(a / math.sqrt(2))) + a * torch.exp(-0.5 * a * a) / math.sqrt(
        2 * math.pi)


def _silu_prime(a, h):
    """``s (1 + a (1 - s))``, ``s = sigmoid(a)``; without autograd in place, in the same order
    (each product and sum is the same IEEE operation: the same bits either way)."""
    s = torch.sigmoid(a)
    if torch.is_grad_enabled():
        return s * (1 + a * (1 - s))
    return torch.rsub(s, 1).mul_(a).add_(1).mul_(s)


# d act / d a from the pre-activation a and the activation h = act(a) (ELU with alpha = 1)
DERIVATIVES = {
    "silu": _silu_prime,
    "relu": lambda a, h: (a > 0).to(a.dtype),
    "tanh": lambda a, h: 1 - h * h,
    "elu": lambda a, h: torch.where(a > 0, torch.ones_like(a), h + 1),
    "gelu": _gelu_prime,
}


# the same, by module type: each layer of ``net`` is looked up by what it is, not where it is
_IN_PLACE_BY_TYPE = {ACTIVATIONS[k]: IN_PLACE[k] for k in ACTIVATIONS}
_DERIVATIVE_BY_TYPE = {ACTIVATIONS[k]: DERIVATIVES[k] for k in ACTIVATIONS}


def shared_time(t: torch.Tensor) -> bool:
    """Whether ``t`` is one time for every sample: 0-dim, or a ``[B]`` stride-0 expansion.

    Cheap (no comparison of values, no device sync); a ``[B]`` tensor that merely holds equal
    values is not detected (it is embedded per sample, with the same result).
    """
    if t.dim() == 0:
        return True
    try:
        return t.dim() == 1 and t.shape[0] > 1 and t.stride(0) == 0
    except RuntimeError:  # tensors without strides (e.g. under torch.func transforms)
        return False


# the highest time-embedding frequency (radians per unit t) when ``net.time_max_freq`` is absent
TIME_MAX_FREQ = 1000.0


class SinusoidalTimeEmbedding(nn.Module):
    """Fixed sin/cos features of t at log-spaced frequencies ``max_freq ** (i / (dim/2 - 1))``.

    t runs over [0, 1], so ``max_freq`` is in radians per unit t: an ODE solver needs a few steps
    per period of the fastest feature to resolve the velocity's variation in t (at 1000, a
    period is 1/160 of the path: a 64-step solve aliases it; at 16, eight steps resolve it).
    """

    def __init__(self, dim: int, max_freq: float = TIME_MAX_FREQ):
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

    def __init__(self, data_shape, width=256, depth=3, activation="silu", time_embed_dim=32,
                 time_max_freq=TIME_MAX_FREQ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; allowed: {sorted(ACTIVATIONS)}")
        self.data_shape = tuple(int(s) for s in data_shape)
        self.dim = int(math.prod(self.data_shape))
        self.activation = activation
        self.embed = SinusoidalTimeEmbedding(time_embed_dim, time_max_freq)
        layers, d_in = [], self.dim + time_embed_dim
        for _ in range(depth):
            layers += [nn.Linear(d_in, width), ACTIVATIONS[activation]()]
            d_in = width
        layers.append(nn.Linear(d_in, self.dim))
        self.net = nn.Sequential(*layers)

    def _input(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``[x flattened, embed(t)]`` ``[B, dim + time_embed_dim]``; a shared t embedded once."""
        B = x.shape[0]
        if shared_time(t):
            emb = self.embed(t.reshape(-1)[:1]).expand(B, -1)
        else:
            emb = self.embed(t)
        return torch.cat([x.reshape(B, -1), emb.to(x.dtype)], dim=-1)

    def _first_layer(self, x: torch.Tensor, t: torch.Tensor, fold: bool) -> torch.Tensor:
        """The first layer's output on ``[x, embed(t)]``; with ``fold`` (one time for the whole
        batch) its time part ``W_t embed(t) + b`` is computed once, as the bias of ``W_x x``."""
        first = self.net[0]
        if not fold:
            return first(self._input(x, t))
        emb = self.embed(t.reshape(-1)[:1]).to(x.dtype)  # [1, time_embed_dim]
        bias = torch.addmm(first.bias, emb, first.weight[:, self.dim:].t()).reshape(-1)
        return torch.addmm(bias, x.reshape(x.shape[0], -1), first.weight[:, :self.dim].t())

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``v(x, t)``: the layers of ``net`` in order. Without autograd (nothing keeps the
        intermediate values) a shared time is folded into the first layer's bias and the
        activations run in place."""
        inference = not torch.is_grad_enabled()
        h = self._first_layer(x, t, fold=inference and shared_time(t))
        for layer in islice(self.net, 1, None):
            in_place = _IN_PLACE_BY_TYPE.get(type(layer)) if inference else None
            h = in_place(h) if in_place is not None else layer(h)
        return h.reshape(x.shape)

    def jvp(self, x: torch.Tensor, t: torch.Tensor, tangents: torch.Tensor):
        """``(v(x, t), J u)`` for tangents ``[n, B, *data]`` -> ``([B, *data], [n, B, *data])``.

        Forward mode written out: the tangents ride along the layers as
        ``T <- act'(a) * T`` and ``T <- T W^T`` (t carries no tangent), all n in one matrix
        product per layer. Plain autograd ops, so a loss on ``J u`` is differentiable for the
        parameters with a single ordinary backward.
        """
        n, B = tangents.shape[0], x.shape[0]
        grad = torch.is_grad_enabled()
        a = self._first_layer(x, t, fold=False)
        T = tangents.reshape(n * B, self.dim) @ self.net[0].weight[:, :self.dim].t()
        for layer in islice(self.net, 1, None):
            if isinstance(layer, nn.Linear):
                a = layer(a)
                T = T @ layer.weight.t()
                continue
            deriv = _DERIVATIVE_BY_TYPE.get(type(layer))
            if deriv is None:
                raise TypeError(f"MLPVelocity.jvp: no tangent rule for {type(layer).__name__}; "
                                f"layers with one: Linear, {', '.join(sorted(ACTIVATIONS))}")
            h = layer(a)
            if grad:
                T = (T.reshape(n, B, -1) * deriv(a, h)).reshape(n * B, -1)
            else:  # the same product, in place (T is this call's own fresh tensor)
                T.view(n, B, -1).mul_(deriv(a, h))
            a = h
        return a.reshape(x.shape), T.reshape(n, *x.shape)


def build(data_shape, cfg: dict) -> MLPVelocity:
    """Network from the ``net`` section of a stage config."""
    return MLPVelocity(data_shape, width=cfg["width"], depth=cfg["depth"],
                       activation=cfg["activation"], time_embed_dim=cfg["time_embed_dim"],
                       time_max_freq=cfg.get("time_max_freq", TIME_MAX_FREQ))
