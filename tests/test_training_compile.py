"""``train.compile``: validated like every field; a compiled network trains to the same weights
as the eager one (the compiled module shares the parameters the optimizer and EMA update),
also for a student whose regularizer differentiates the network twice (that term calls the
plain module: AOTAutograd has no double backward)."""

from __future__ import annotations

import pytest
import torch

from reflowma.infra import config
from reflowma.training.loop import compiled, fit


def test_unknown_compile_mode_names_the_field_and_the_modes():
    with pytest.raises(config.ConfigError) as e:
        config.stage_config("reflow", "smoke", ["train.compile=fast"])
    msg = str(e.value)
    assert "train.compile" in msg and "reduce-overhead" in msg and "'fast'" in msg


def test_none_is_the_module_itself():
    m = torch.nn.Linear(2, 2)
    assert compiled(m, None) is m and compiled(m, "none") is m


def _train(mode, tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.SiLU(), torch.nn.Linear(16, 3))
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(1))

    def loss_fn(model, step, g):
        return (model(x) - x.flip(1)).pow(2).mean(), {}

    cfg = {"steps": 5, "lr": 1e-2, "lr_schedule": "constant", "warmup_steps": 0,
           "ema_decay": 0.5, "grad_clip": None, "checkpoint_every": 100, "log_every": 1,
           "amp": "none", "compile": mode}
    ema, hist = fit(net, loss_fn, cfg, torch.Generator().manual_seed(0),
                    tmp_path / f"{mode}.pt", "fp")
    return net, ema, [h["loss"] for h in hist]


@pytest.mark.slow  # inductor compiles C++ on the CPU: tens of seconds
def test_compiled_training_matches_eager(tmp_path):
    net_e, ema_e, loss_e = _train("none", tmp_path)
    net_c, ema_c, loss_c = _train("default", tmp_path)
    assert not isinstance(net_c, torch._dynamo.eval_frame.OptimizedModule)  # plain module kept
    # float32, 5 Adam steps: kernels fused differently, agreement to float rounding
    assert loss_c == pytest.approx(loss_e, rel=1e-4)
    for a, b in zip(ema_c.parameters(), ema_e.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


class NoTangent(torch.nn.Module):
    """A velocity net without the MLP's tangent pass: the regularizer's log-det goes through
    reverse mode, differentiating the network twice."""

    def __init__(self):
        super().__init__()
        self.f = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.SiLU(),
                                     torch.nn.Linear(32, 2))

    def forward(self, x, t):
        return self.f(torch.cat([x, t[:, None].to(x.dtype)], 1))


def _reflow(mode, tmp_path):
    from reflowma import objectives

    torch.manual_seed(0)
    teacher = NoTangent().requires_grad_(False)
    net = NoTangent()
    ends = torch.randn(256, 3, 2, generator=torch.Generator().manual_seed(1))
    cfg = config.stage_config("reflow", "smoke", [
        "K=2", "window_start_weight=1.0", "regularizer.weight=0.1",
        "regularizer.warm_start=0.0", "regularizer.logdet=hutchinson"])
    obj = objectives.build(cfg, objectives.Context(ends, 2, torch.device("cpu"), teacher, 6))
    train = {**cfg["train"], "steps": 6, "log_every": 1, "compile": mode}
    ema, hist = fit(net, obj, train, torch.Generator().manual_seed(0),
                    tmp_path / f"reflow-{mode}.pt", "fp")
    return ema, hist


@pytest.mark.slow  # inductor compiles C++ on the CPU
def test_compiled_student_with_the_double_backward_regularizer_matches_eager(tmp_path):
    ema_e, hist_e = _reflow("none", tmp_path)
    ema_c, hist_c = _reflow("default", tmp_path)
    for key in ("loss", "tm", "window_start", "reg"):
        assert [r[key] for r in hist_c] == pytest.approx([r[key] for r in hist_e], rel=1e-4)
    for a, b in zip(ema_c.parameters(), ema_e.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
