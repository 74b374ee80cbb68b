"""UNet velocity network for images: x ``[B, C, H, W]``, t ``[B]`` -> ``[B, C, H, W]``.

The DDPM/ADM-style layout: a 3x3 input conv to ``channels``; per resolution level ``i`` with
multiplier ``m_i``, ``res_blocks`` residual blocks to ``channels * m_i`` (self-attention after
each where the current side length is in ``attention_resolutions``) and, except at the last
level, a 3x3 stride-2 conv; a middle res-attn-res block; the mirrored up path with
``res_blocks + 1`` blocks per level, each taking the matching down-path activation
concatenated on channels, and nearest-neighbour x2 upsampling + 3x3 conv; GroupNorm, SiLU and
a zero-initialised 3x3 output conv.

A residual block is GroupNorm -> SiLU -> conv3x3 -> (+ Linear(SiLU(temb))) -> GroupNorm ->
SiLU -> dropout -> conv3x3 (zero-initialised), plus a 1x1 conv on the skip path where the
channel count changes. The time embedding is the sinusoidal features of t (t in [0, 1], the
``SinusoidalTimeEmbedding`` of the MLP) followed by Linear -> SiLU -> Linear to
``4 * channels``, added in every residual block. Attention: GroupNorm, a 1x1 conv to q, k, v,
``heads`` heads of scaled dot-product attention over the H*W positions, a zero-initialised 1x1
output projection, residual. GroupNorm uses ``gcd(norm_groups, channels)`` groups, so tiny
widths (tests) work. Everything acts per sample (no batch statistics), as the per-sample
Jacobians of the regularizer and the fold fraction require.

How it runs (same parameters and values as the plain layers; tests/test_unet.py):

* attention: the 1x1 convs are applied as matrix products on the positions (``[B, HW, C]``,
  their weights viewed as ``[C_out, C]``), so q, k and v come out ``[B, heads, HW, C/heads]``
  with unit stride in the head dimension, the layout ``scaled_dot_product_attention``'s fused
  kernels (flash, memory-efficient, the CPU flash kernel) take; q, k, v strided otherwise would
  send it to the unfused math path (the ``[HW, HW]`` score matrix in memory, bf16 upcast on
  the CPU). The fused kernels have no derivative of their backward, so when the input
  requires grad (a Jacobian with respect to x may be differentiated again: the regularizer's
  log-det) the net runs attention on the math backend, which does.
* GroupNorm (``GroupNorm``): under autocast on CUDA, PyTorch's policy runs ``group_norm`` in
  float32, casting every bf16 activation up and the result back down at the next conv; here
  it runs in the activation's dtype (the kernel accumulates its statistics in float32), with
  its weight and bias cast instead. On the CPU the kernel takes bf16 input with float32
  parameters as is, and without autocast nothing changes.
* the time embedding's SiLU, the same for every residual block, is applied once per call.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn
from torch.autograd import forward_ad
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from reflowma.models.mlp import TIME_MAX_FREQ, SinusoidalTimeEmbedding, shared_time


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that keeps a lower-precision input's dtype on accelerators (see the
    module docstring); the same parameters and, in float32, the same function."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype or x.device.type == "cpu":
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return group_norm_in_dtype(x, self.num_groups, self.weight, self.bias, self.eps)


def group_norm_in_dtype(x: torch.Tensor, groups: int, weight: torch.Tensor,
                        bias: torch.Tensor, eps: float) -> torch.Tensor:
    """GroupNorm of ``x`` in ``x``'s dtype, autocast off, ``weight`` and ``bias`` cast to it."""
    with torch.autocast(x.device.type, enabled=False):
        return F.group_norm(x, groups, weight.to(x.dtype), bias.to(x.dtype), eps)


def _norm(c: int, groups: int) -> GroupNorm:
    return GroupNorm(math.gcd(groups, c), c)


def _zero(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


class ResBlock(nn.Module):
    """Two 3x3 convs with GroupNorm/SiLU, the time embedding added between them; ``forward``
    takes the embedding after its SiLU (``UNetVelocity`` applies it once for all blocks)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in, groups), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = _norm(c_out, groups)
        self.drop = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb_act):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb_act)[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the spatial positions, residual."""

    def __init__(self, c: int, heads: int, groups: int):
        super().__init__()
        if c % heads:
            raise ValueError(f"net.heads = {heads} must divide the channel count {c}")
        self.heads = heads
        self.norm = _norm(c, groups)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = _zero(nn.Conv2d(c, c, 1))

    def forward(self, x, emb=None):
        B, C, H, W = x.shape
        # positions [B, HW, C] (free for a channels-last input), the 1x1 convs as products
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(B, H * W, C)
        qkv = F.linear(tokens, self.qkv.weight.flatten(1), self.qkv.bias)
        q, k, v = qkv.view(B, H * W, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4) \
            .unbind(0)  # each [B, heads, HW, C/heads], unit stride in the last dimension
        h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, H * W, C)
        out = F.linear(h, self.proj.weight.flatten(1), self.proj.bias)
        return x + out.view(B, H, W, C).permute(0, 3, 1, 2)


class UNetVelocity(nn.Module):
    """DDPM/ADM-style UNet (see the module docstring); ``data_shape = (C, H, W)``."""

    def __init__(self, data_shape, channels=128, channel_mult=(1, 2, 2, 2), res_blocks=2,
                 attention_resolutions=(16,), dropout=0.0, heads=1, norm_groups=32,
                 time_embed_dim=None, time_max_freq=TIME_MAX_FREQ):
        super().__init__()
        if len(data_shape) != 3:
            raise ValueError(f"net.name: unet needs image data [C, H, W], got shape "
                             f"{tuple(data_shape)} (use an image dataset or layout)")
        self.data_shape = tuple(int(s) for s in data_shape)
        C, H, W = self.data_shape
        levels = len(channel_mult)
        if H % 2 ** (levels - 1) or W % 2 ** (levels - 1):
            raise ValueError(f"net.channel_mult: {levels} levels halve the image "
                             f"{levels - 1} times; {H}x{W} is not divisible by "
                             f"{2 ** (levels - 1)}")
        emb = 4 * channels
        self.embed = SinusoidalTimeEmbedding(time_embed_dim or channels, time_max_freq)
        self.time_mlp = nn.Sequential(nn.Linear(time_embed_dim or channels, emb), nn.SiLU(),
                                      nn.Linear(emb, emb))
        attn = set(int(r) for r in attention_resolutions)
        self.conv_in = nn.Conv2d(C, channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips, cur, res = [channels], channels, H
        for i, m in enumerate(channel_mult):
            for _ in range(res_blocks):
                blk = [ResBlock(cur, channels * m, emb, dropout, norm_groups)]
                cur = channels * m
                if res in attn:
                    blk.append(Attention(cur, heads, norm_groups))
                self.down.append(nn.ModuleList(blk))
                skips.append(cur)
            if i < levels - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(cur, cur, 3, stride=2, padding=1)]))
                skips.append(cur)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(cur, cur, emb, dropout, norm_groups),
                                  Attention(cur, heads, norm_groups),
                                  ResBlock(cur, cur, emb, dropout, norm_groups)])
        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(channel_mult))):
            for j in range(res_blocks + 1):
                blk = [ResBlock(cur + skips.pop(), channels * m, emb, dropout, norm_groups)]
                cur = channels * m
                if res in attn:
                    blk.append(Attention(cur, heads, norm_groups))
                if i > 0 and j == res_blocks:
                    blk.append(Upsample(cur))
                    res *= 2
                self.up.append(nn.ModuleList(blk))
        self.out = nn.Sequential(_norm(cur, norm_groups), nn.SiLU(),
                                 _zero(nn.Conv2d(cur, C, 3, padding=1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # attention on the twice-differentiable math backend when x requires grad
        with attention_backend(x):
            return self._forward(x, t)

    def _forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # a time shared by the batch: one embedding row [1, E], broadcast in every block
        emb = F.silu(self.time_mlp(
            self.embed(t.reshape(-1)[:1] if shared_time(t) else t).to(x.dtype)))
        h = self.conv_in(x)
        hs = [h]
        for blk in self.down:
            for layer in blk:
                h = layer(h, emb) if isinstance(layer, ResBlock | Attention) else layer(h)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for blk in self.up:
            h = torch.cat([h, hs.pop()], dim=1)
            for layer in blk:
                h = layer(h, emb) if isinstance(layer, ResBlock | Attention) else layer(h)
        return self.out(h)


def attention_backend(x: torch.Tensor):
    """The attention kernels of a forward on ``x``: any (the fused ones where they apply), or
    the math backend alone when a derivative with respect to x is taken: ``x`` requires grad
    in grad mode (that derivative may itself be differentiated, and the fused kernels' backward
    has no derivative), or ``x`` carries a forward-mode tangent (``torch.func.jvp``, dual
    tensors: the fused kernels have no forward-mode formula)."""
    if ((x.requires_grad and torch.is_grad_enabled())
            or forward_ad.unpack_dual(x).tangent is not None
            or torch._C._functorch.is_functorch_wrapped_tensor(x)):
        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def build(data_shape, cfg: dict) -> UNetVelocity:
    """Network from the ``net`` section of a stage config (fields: ``$defs/net_unet``)."""
    return UNetVelocity(data_shape, channels=cfg["channels"],
                        channel_mult=tuple(cfg["channel_mult"]), res_blocks=cfg["res_blocks"],
                        attention_resolutions=tuple(cfg["attention_resolutions"]),
                        dropout=cfg["dropout"], heads=cfg["heads"],
                        norm_groups=cfg["norm_groups"],
                        time_max_freq=cfg.get("time_max_freq", TIME_MAX_FREQ))
