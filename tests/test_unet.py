"""The UNet velocity network (``net.name: unet``): shapes, per-sample independence,
determinism, the parameter count against a closed form and the TorchCFM CIFAR-10 reference;
its attention and normalisation against the plain layers' formulas, and the casts it makes
under bf16 autocast."""

from __future__ import annotations

import collections
import json
import time

import pytest
import torch
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from reflowma import models
from reflowma.infra import config
from reflowma.models import unet

TINY = {"name": "unet", "channels": 8, "channel_mult": [1, 2], "res_blocks": 1,
        "attention_resolutions": [4], "dropout": 0.0, "heads": 2, "norm_groups": 4}
CIFAR = {"name": "unet", "channels": 128, "channel_mult": [1, 2, 2, 2], "res_blocks": 2,
         "attention_resolutions": [16], "dropout": 0.1, "heads": 1, "norm_groups": 32}


def _closed_form_count(C, ch, mult, nres, attn_res, side):
    """Parameters of the UNet layout of reflowma/models/unet.py counted layer by layer."""
    conv = lambda i, o, k: i * o * k * k + o  # noqa: E731
    lin = lambda i, o: i * o + o  # noqa: E731
    emb = 4 * ch

    def res(i, o):
        return 2 * i + conv(i, o, 3) + lin(emb, o) + 2 * o + conv(o, o, 3) + (
            conv(i, o, 1) if i != o else 0)

    def att(c):
        return 2 * c + conv(c, 3 * c, 1) + conv(c, c, 1)

    n = lin(ch, emb) + lin(emb, emb) + conv(C, ch, 3)
    skips, cur, r = [ch], ch, side
    for i, m in enumerate(mult):
        for _ in range(nres):
            n += res(cur, ch * m) + (att(ch * m) if r in attn_res else 0)
            cur = ch * m
            skips.append(cur)
        if i < len(mult) - 1:
            n += conv(cur, cur, 3)
            skips.append(cur)
            r //= 2
    n += 2 * res(cur, cur) + att(cur)
    for i, m in reversed(list(enumerate(mult))):
        for j in range(nres + 1):
            n += res(cur + skips.pop(), ch * m) + (att(ch * m) if r in attn_res else 0)
            cur = ch * m
            if i > 0 and j == nres:
                n += conv(cur, cur, 3)
                r *= 2
    return n + 2 * cur + conv(cur, C, 3)


def test_cifar_size_matches_the_reference_count():
    """TorchCFM's CIFAR-10 UNet (128 channels, 1-2-2-2, 2 res blocks, attention at 16x16) is
    quoted as 34.09M parameters: that figure is the count divided by 2**20 (as its scripts
    print it), i.e. 35,746,307 parameters, which is also the DDPM CIFAR-10 UNet's 35.7M. Ours is
    the same layout, so the count agrees exactly (well inside the +-2 % the issue allows)."""
    with torch.device("meta"):  # no memory for the 36M weights
        net = models.build((3, 32, 32), CIFAR)
    n = models.n_params(net)
    assert n == _closed_form_count(3, 128, (1, 2, 2, 2), 2, {16}, 32)
    assert abs(n / 2**20 - 34.09) / 34.09 < 0.02
    assert n == 35_746_307


@pytest.mark.parametrize("shape,cfg", [
    ((1, 8, 8), TINY),
    ((1, 28, 28), {**TINY, "channel_mult": [1, 2, 2], "attention_resolutions": [7]}),
    ((3, 16, 16), {**TINY, "attention_resolutions": [8]})])
def test_shapes_and_count(shape, cfg):
    torch.manual_seed(0)
    net = models.build(shape, cfg)
    x = torch.randn(3, *shape)
    assert net(x, torch.rand(3)).shape == (3, *shape)
    assert net(x, torch.tensor(0.5)).shape == (3, *shape)
    attn = {shape[1] // 2 ** i for i in range(len(cfg["channel_mult"]))} & set(
        cfg["attention_resolutions"])
    assert attn, "the case must exercise attention"
    assert models.n_params(net) == _closed_form_count(
        shape[0], cfg["channels"], cfg["channel_mult"], cfg["res_blocks"],
        set(cfg["attention_resolutions"]), shape[1])


def test_samples_do_not_mix_and_the_network_is_deterministic():
    """GroupNorm and attention act per sample: the Jacobians of the regularizer and of the fold
    fraction (per-sample VJPs on a batch) need that. Nonzero output conv so gradients flow."""
    torch.manual_seed(0)
    net = models.build((1, 8, 8), TINY).eval()
    torch.nn.init.normal_(net.out[-1].weight)
    x = torch.randn(4, 1, 8, 8, requires_grad=True)
    t = torch.rand(4)
    y = net(x, t)
    g = torch.autograd.grad(y[0].sum(), x)[0]
    assert g[0].abs().sum() > 0 and g[1:].abs().max() == 0
    torch.testing.assert_close(net(x[1:2], t[1:2]), y[1:2], rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    net2 = models.build((1, 8, 8), TINY).eval()
    torch.nn.init.normal_(net2.out[-1].weight)
    assert torch.equal(net2(x, t), y)


def test_tiny_unet_is_fast_enough_for_cpu_tests():
    torch.manual_seed(0)
    net = models.build((1, 28, 28), {**TINY, "channel_mult": [1, 2, 2],
                                     "attention_resolutions": [7]})
    x = torch.randn(64, 1, 28, 28)
    t0 = time.perf_counter()
    for _ in range(3):
        net(x, torch.rand(64)).pow(2).mean().backward()
    # one thread (conftest): about 0.55 s per step on a loaded shared core; the bound leaves
    # room for contention, and catches an accidental quadratic blow-up (e.g. attention at 28x28)
    assert (time.perf_counter() - t0) / 3 < 3.0


def test_schema_and_shape_errors():
    net = f"net={json.dumps(TINY)}"
    cfg = config.stage_config("teacher", None, ["data.name=digits", "data.layout=image", net])
    assert cfg["net"] == TINY
    with pytest.raises(config.ConfigError, match="teacher.net.width"):
        config.stage_config("teacher", None, [net, "net.width=3"])
    with pytest.raises(config.ConfigError, match="teacher.net.heads"):
        config.stage_config("teacher", None, [net, "net.heads=0"])
    with pytest.raises(ValueError, match="image data"):
        models.build((64,), TINY)
    with pytest.raises(ValueError, match="not divisible"):
        models.build((1, 6, 6), {**TINY, "channel_mult": [1, 2, 2]})


def _reference_forward(net, x, t):
    """The network's function written with the plain layers: 1x1 convs on [B, C, H, W],
    attention from q, k, v laid out [B, heads, HW, C/heads] straight from the conv output
    (scores, softmax and products spelt out), nn.GroupNorm's function, the embedding's SiLU
    inside every residual block."""

    def norm(m, h):
        return F.group_norm(h, m.num_groups, m.weight, m.bias, m.eps)

    def res(m, h, emb):
        a = m.conv1(F.silu(norm(m.norm1, h))) + m.emb(F.silu(emb))[:, :, None, None]
        return m.skip(h) + m.conv2(m.drop(F.silu(norm(m.norm2, a))))

    def attn(m, h):
        B, C, H, W = h.shape
        q, k, v = m.qkv(norm(m.norm, h)).reshape(B, 3, m.heads, C // m.heads, H * W) \
            .permute(1, 0, 2, 4, 3).unbind(0)
        w = torch.softmax(q @ k.transpose(-1, -2) / (C // m.heads) ** 0.5, dim=-1)
        return h + m.proj((w @ v).permute(0, 1, 3, 2).reshape(B, C, H, W))

    def layer(m, h, emb):
        if isinstance(m, unet.ResBlock):
            return res(m, h, emb)
        return attn(m, h) if isinstance(m, unet.Attention) else m(h)

    emb = net.time_mlp(net.embed(t).to(x.dtype))
    h = net.conv_in(x)
    hs = [h]
    for blk in net.down:
        for m in blk:
            h = layer(m, h, emb)
        hs.append(h)
    for m in net.mid:
        h = layer(m, h, emb)
    for blk in net.up:
        h = torch.cat([h, hs.pop()], dim=1)
        for m in blk:
            h = layer(m, h, emb)
    norm_out, act, conv = net.out
    return conv(act(norm(norm_out, h)))


def _randomised(shape, cfg, dtype=torch.float64):
    """A net whose zero-initialised layers (residual convs, attention output, output conv)
    get random weights, so every path contributes to the output."""
    torch.manual_seed(0)
    net = models.build(shape, cfg).to(dtype).eval()
    for p in net.parameters():
        if not p.abs().sum():
            torch.nn.init.normal_(p, std=0.1)
    return net


CASES = [((1, 8, 8), TINY),
         ((3, 16, 16), {**TINY, "attention_resolutions": [8, 4], "heads": 4, "channels": 16})]


@pytest.mark.parametrize("shape,cfg", CASES)
@pytest.mark.parametrize("grad", [False, True])
def test_forward_equals_the_plain_layers_formula(shape, cfg, grad):
    """In float64 the net (fused attention kernel without input grad, the math backend with
    it) equals the reference written with the plain layers to 1e-12: the two differ only in
    the order of float64 sums (about 1e-16 relative per operation, over ~50 layers)."""
    net = _randomised(shape, cfg)
    x = torch.randn(5, *shape, dtype=torch.float64, requires_grad=grad)
    t = torch.rand(5, dtype=torch.float64)
    want = _reference_forward(net, x, t)
    assert want.abs().max() > 0.1  # every layer contributes
    torch.testing.assert_close(net(x, t), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(net(x, t[0].expand(5)), _reference_forward(
        net, x, t[0].expand(5)), rtol=1e-12, atol=1e-12)  # a shared time (one embedding row)


def test_float32_fused_and_math_attention_agree():
    """float32, the CPU's fused attention kernel (x without grad) against the math backend
    (x requiring grad): the same function, summed in another order: float32 rounding
    (2^-24 relative per operation) accumulated over the net stays below 1e-5 of the output."""
    net = _randomised((3, 16, 16), CASES[1][1], torch.float32)
    x = torch.randn(4, 3, 16, 16)
    t = torch.rand(4)
    fused = net(x, t)
    math_path = net(x.clone().requires_grad_(True), t).detach()
    scale = fused.abs().max()
    assert (fused - math_path).abs().max() <= 1e-5 * scale


def test_fused_attention_path_keeps_samples_apart():
    """Per-sample independence on the fused path too: one sample's output alone equals its
    row of the batch to float32 rounding (1e-5 of the output's scale, as above); another
    sample's values would differ at the scale of the output itself."""
    net = _randomised((3, 16, 16), CASES[1][1], torch.float32)
    x, t = torch.randn(4, 3, 16, 16), torch.rand(4)
    with torch.no_grad():
        alone, batch = net(x[2:3], t[2:3]), net(x, t)
    assert (alone - batch[2:3]).abs().max() <= 1e-5 * alone.abs().max()
    assert (alone - batch[1:2]).abs().max() > 0.1 * alone.abs().max()


def test_input_jacobian_can_be_differentiated_again():
    """The regularizer's Hutchinson log-det differentiates a VJP with respect to x (create_graph)
    and backpropagates through it: the net runs attention on the math backend then (the fused
    kernels' backward has no derivative). The parameter gradient of eps^T J eps matches a
    central difference along a random direction of the attention's qkv weight (float64)."""
    net = _randomised((1, 8, 8), TINY).train()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    t = torch.rand(3, dtype=torch.float64)
    eps = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(1)) * 2.0 - 1

    def quad():
        xx = x.clone().requires_grad_(True)
        g = torch.autograd.grad((net(xx, t) * eps).sum(), xx, create_graph=True)[0]
        return (g * eps).sum()

    w = net.mid[1].qkv.weight
    (grad,) = torch.autograd.grad(quad(), w)
    d = torch.randn_like(w)
    w0 = w.detach().clone()
    w.data = w0 + 1e-6 * d
    up = quad().detach()
    w.data = w0 - 1e-6 * d
    down = quad().detach()
    w.data = w0
    assert abs((up - down).item() / 2e-6 - (grad * d).sum().item()) < 1e-5 * max(
        1.0, abs((grad * d).sum().item()))


def test_group_norm_in_dtype_matches_float64():
    """The accelerator path of GroupNorm (bf16 in, bf16 out, statistics accumulated in float32
    by the kernel, weight and bias rounded to bf16): against the float64 GroupNorm of the same
    bf16 input, y = w * xhat + b, the error is bf16 rounding: w's and b's (2^-9 relative each,
    so 2^-9 (|w xhat| + |b|)), the output's (2^-9 |y|) and the float32 statistics' (~1e-7):
    below 2^-8 (|w xhat| + |b| + |y|), twice the sum of the three."""
    torch.manual_seed(0)
    x = (torch.randn(4, 16, 6, 6) * 3 + 1).to(torch.bfloat16)
    w, b = torch.randn(16) + 1, torch.randn(16)
    y = unet.group_norm_in_dtype(x, 4, w, b, 1e-5)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    xhat = F.group_norm(x.double(), 4, eps=1e-5)
    wx, bb = w.double()[:, None, None] * xhat, b.double()[:, None, None]
    want = wx + bb
    err = (y.double() - want).abs()
    assert (err <= 2.0**-8 * (wx.abs() + bb.abs() + want.abs())).all()
    assert err.max() > 0  # bf16: not the float64 values


def test_group_norm_is_nn_group_norm_off_accelerators():
    """In float32, and on the CPU in any dtype, the GroupNorm is nn.GroupNorm's function to the
    bit (the CPU kernel takes bf16 input with float32 parameters itself); its parameters have
    nn.GroupNorm's names, so state dicts load either way."""
    torch.manual_seed(0)
    gn, plain = unet.GroupNorm(4, 16), torch.nn.GroupNorm(4, 16)
    torch.nn.init.normal_(gn.weight)
    plain.load_state_dict(gn.state_dict())
    x = torch.randn(2, 16, 5, 5)
    assert torch.equal(gn(x), plain(x))
    assert torch.equal(gn(x.bfloat16()), plain(x.bfloat16()))


class _Casts(TorchDispatchMode):
    """Counts dtype casts (aten._to_copy) of a forward: of the parameters, and of the rest."""

    def __init__(self, params):
        super().__init__()
        self.ptrs = {p.untyped_storage().data_ptr() for p in params}
        self.count = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default:
            ptr = args[0].untyped_storage().data_ptr()
            self.count["param" if ptr in self.ptrs else "activation"] += 1
        return func(*args, **(kwargs or {}))


def test_bf16_autocast_casts_only_parameters_input_and_time_embedding():
    """Under bf16 autocast (CPU) a forward casts its parameters (once each, for the convs and
    linears) and two activations: the float32 input (first conv) and the time embedding (first
    linear). Attention on q, k, v laid out for the fused kernel adds none (on the math path
    the CPU upcasts q, k, v and casts the result back: at least 4 casts per attention block,
    the count the strided q, k, v of the plain formula cost on every forward)."""
    torch.manual_seed(0)
    cfg = {**TINY, "channel_mult": [1, 2, 2], "attention_resolutions": [7, 14]}
    net = models.build((1, 28, 28), cfg)
    n_attention = sum(isinstance(m, unet.Attention) for m in net.modules())
    assert n_attention >= 3
    weights = [p for n, p in net.named_parameters() if "norm" not in n and "out.0" not in n]
    x, t = torch.randn(2, 1, 28, 28), torch.rand(2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), _Casts(
            net.parameters()) as c:
        y = net(x, t)
    assert y.dtype == torch.bfloat16
    assert c.count["param"] == len(weights)  # every conv/linear weight and bias, once
    assert c.count["activation"] == 2
    with torch.autocast("cpu", dtype=torch.bfloat16), _Casts(net.parameters()) as c:
        net(x.clone().requires_grad_(True), t)  # the math backend
    assert c.count["activation"] >= 2 + 4 * n_attention
