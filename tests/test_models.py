"""The MLP velocity network and the models registry (``net.name``)."""

from __future__ import annotations

import math

import pytest
import torch

from reflowma import models
from reflowma.infra import config
from reflowma.infra.config.errors import ConfigError
from reflowma.models import MODELS
from reflowma.models.mlp import MLPVelocity, SinusoidalTimeEmbedding
from reflowma.registry import UnknownName

NET = {"name": "mlp", "width": 16, "depth": 2, "activation": "silu", "time_embed_dim": 8}


@pytest.mark.parametrize("shape", [(2,), (64,), (1, 8, 8), (3, 4, 5)])
def test_output_has_the_input_shape_and_the_parameter_count_is_the_layer_sum(shape):
    torch.manual_seed(0)
    net = models.build(shape, NET)
    x = torch.randn(5, *shape)
    assert net(x, torch.rand(5)).shape == (5, *shape)
    assert net(x, torch.tensor(0.3)).shape == (5, *shape)  # scalar t is broadcast
    d, w, te = math.prod(shape), NET["width"], NET["time_embed_dim"]
    assert models.n_params(net) == (d + te) * w + w + (w * w + w) + w * d + d


def test_scalar_t_equals_a_batch_of_that_t():
    torch.manual_seed(0)
    net = models.build((3,), NET)
    x = torch.randn(4, 3)
    torch.testing.assert_close(net(x, torch.tensor(0.7)), net(x, torch.full((4,), 0.7)),
                               rtol=0, atol=0)


def test_a_fixed_seed_builds_the_same_network():
    outs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        net = models.build((1, 4, 4), NET)
        x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
        outs.append((net.state_dict(), net(x, torch.full((3,), 0.5))))
    (sd1, y1), (sd2, y2), (_, y3) = outs
    assert sd1.keys() == sd2.keys()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert torch.equal(y1, y2)
    assert not torch.allclose(y1, y3)


def test_time_embedding_is_sin_cos_at_log_spaced_frequencies():
    emb = SinusoidalTimeEmbedding(6, max_freq=100.0)
    t = torch.tensor([0.0, 0.25, 1.0])
    freqs = [1.0, 10.0, 100.0]  # 100 ** (i / 2), i = 0, 1, 2
    want = torch.tensor([[math.sin(f * s) for f in freqs] + [math.cos(f * s) for f in freqs]
                         for s in t.tolist()])
    torch.testing.assert_close(emb(t), want)
    with pytest.raises(ValueError, match="even and >= 4"):
        SinusoidalTimeEmbedding(5)


@pytest.mark.parametrize("preset, shape", [("toy", (2,)), ("mnist", (1, 28, 28))])
def test_net_time_max_freq_sets_the_fastest_time_feature_and_absent_keeps_1000(preset, shape):
    default = config.stage_config("teacher", preset)
    assert "time_max_freq" not in default["net"]  # existing runs keep their fingerprints
    assert float(models.build(shape, default["net"]).embed.freqs.max()) == pytest.approx(1000.0)
    cfg = config.stage_config("teacher", preset, ["net.time_max_freq=16"])
    emb = models.build(shape, cfg["net"]).embed
    t = torch.tensor([0.1, 0.7])
    half = emb.freqs.numel()
    # the last sin/cos pair is exactly sin(16 t), cos(16 t); every other frequency is lower
    assert torch.allclose(emb(t)[:, half - 1], torch.sin(16 * t), atol=1e-6)
    assert torch.allclose(emb(t)[:, -1], torch.cos(16 * t), atol=1e-6)
    assert float(emb.freqs.max()) == pytest.approx(16.0)


def test_a_time_max_freq_of_at_most_one_names_the_field():
    with pytest.raises(ConfigError, match=r"teacher\.net\.time_max_freq: .*must be > 1"):
        config.stage_config("teacher", "toy", ["net.time_max_freq=1"])


def test_the_registry_builds_mlp_by_name_and_by_default():
    assert "mlp" in MODELS.names()
    assert isinstance(models.build((2,), NET), MLPVelocity)
    no_name = {k: v for k, v in NET.items() if k != "name"}  # files written before names
    assert isinstance(models.build((2,), no_name), MLPVelocity)


def test_an_unknown_net_name_names_the_field():
    with pytest.raises(UnknownName, match=r"^net.name: unknown 'unet9'; allowed: .*mlp") as info:
        models.build((2,), {**NET, "name": "unet9"})
    assert info.value.field == "net.name"
    assert isinstance(info.value, ValueError)


def test_a_network_registered_outside_the_package_is_built(monkeypatch):
    seen = {}

    def factory(shape, cfg):
        seen["args"] = (shape, cfg["width"])
        return torch.nn.Identity()

    monkeypatch.setitem(MODELS._items, "test-identity", factory)
    net = models.build([1, 2, 2], {**NET, "name": "test-identity"})
    assert isinstance(net, torch.nn.Identity)
    assert seen["args"] == ((1, 2, 2), 16)  # data shape handed over as a tuple


def test_unknown_activation_is_refused():
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        models.build((2,), {**NET, "activation": "swish"})
