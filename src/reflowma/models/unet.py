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
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from reflowma.models.mlp import SinusoidalTimeEmbedding, shared_time


def _norm(c: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, c), c)


def _zero(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


class ResBlock(nn.Module):
    """Two 3x3 convs with GroupNorm/SiLU, the time embedding added between them."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in, groups), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = _norm(c_out, groups)
        self.drop = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
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
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W) \
            .permute(1, 0, 2, 4, 3).unbind(0)  # each [B, heads, HW, C/heads]
        h = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(h.permute(0, 1, 3, 2).reshape(B, C, H, W))


class UNetVelocity(nn.Module):
    """DDPM/ADM-style UNet (see the module docstring); ``data_shape = (C, H, W)``."""

    def __init__(self, data_shape, channels=128, channel_mult=(1, 2, 2, 2), res_blocks=2,
                 attention_resolutions=(16,), dropout=0.0, heads=1, norm_groups=32,
                 time_embed_dim=None):
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
        self.embed = SinusoidalTimeEmbedding(time_embed_dim or channels)
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
        # a time shared by the batch: one embedding row [1, E], broadcast in every block
        emb = self.time_mlp(self.embed(t.reshape(-1)[:1] if shared_time(t) else t).to(x.dtype))
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


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def build(data_shape, cfg: dict) -> UNetVelocity:
    """Network from the ``net`` section of a stage config (fields: ``$defs/net_unet``)."""
    return UNetVelocity(data_shape, cfg["channels"], tuple(cfg["channel_mult"]),
                        cfg["res_blocks"], tuple(cfg["attention_resolutions"]), cfg["dropout"],
                        cfg["heads"], cfg["norm_groups"])
