"""``couplings.amp`` and ``couplings.compile`` (``reflowma.models.inference``): absent or
``none`` is the network itself (CPU numbers unchanged); bad values and bf16 off CUDA are
refused with one line before anything is written; the options set are recorded in the
couplings file; a network's bf16 output comes back in the state's dtype."""

from __future__ import annotations

import pytest
import torch

from reflowma import cli
from reflowma.infra import config
from reflowma.infra.storage.couplings import Couplings
from reflowma.models import inference
from reflowma.stages import couplings


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    assert cli.main(["teacher", "--params", "smoke", "--out", str(out)]) == 0
    return out / "teacher.pt"


def test_none_is_the_network_itself():
    m = torch.nn.Linear(2, 2)
    assert inference.wrap(m, {}) is m
    assert inference.wrap(m, {"amp": "none", "compile": "none"}) is m
    assert inference.options({"amp": "none", "compile": "none", "steps": 3}) == {}
    assert inference.options({"amp": "bf16", "compile": "none"}) == {"amp": "bf16"}


def test_schema_names_the_field_and_the_values():
    with pytest.raises(config.ConfigError) as e:
        config.stage_config("couplings", "smoke", ["amp=fp16"])
    assert "couplings.amp" in str(e.value) and "bf16" in str(e.value)
    with pytest.raises(config.ConfigError) as e:
        config.stage_config("couplings", "smoke", ["compile=max-autotune"])
    assert "couplings.compile" in str(e.value) and "reduce-overhead" in str(e.value)
    cfg = config.stage_config("couplings", "smoke", ["amp=bf16", "compile=reduce-overhead"])
    assert (cfg["amp"], cfg["compile"]) == ("bf16", "reduce-overhead")


def test_bf16_on_the_cpu_is_refused_before_anything_is_written(tmp_path, teacher, capsys):
    out = tmp_path / "c.h5"
    rc = cli.main(["couplings", "--params", "smoke", "--teacher", str(teacher), "--out",
                   str(out), "amp=bf16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "couplings.amp" in err[0] and "CUDA" in err[0] and "allowed here: none" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_outputs_come_back_in_the_state_dtype():
    """A network evaluated in bf16 (here: one that returns bf16) gives the solver float32
    velocities: the state and the Runge-Kutta sums stay float32."""

    class Half(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x, t):
            return (self.w * x).bfloat16()

    v = inference.InferenceNet(Half(), "none", "none")
    x = torch.randn(3, 2)
    y = v(x, torch.zeros(3))
    assert y.dtype == torch.float32
    assert torch.equal(y, x.bfloat16().float())


def test_options_are_recorded_in_the_file_and_absent_ones_are_not(tmp_path, teacher):
    cfg = config.stage_config("couplings", "smoke")
    attrs = couplings.expected_attrs(cfg, "sha", "data")
    assert "amp" not in attrs and "compile" not in attrs  # files made before keep their attrs
    couplings.run(cfg, teacher, tmp_path / "c.h5")
    stored = Couplings(tmp_path / "c.h5").attrs
    assert "amp" not in stored and "compile" not in stored and stored["steps"] == cfg["steps"]
    with_amp = couplings.expected_attrs({**cfg, "amp": "bf16"}, "sha", "data")
    assert with_amp["amp"] == "bf16"
    with pytest.raises(Exception, match="amp"):  # never resumed or read as another numerics
        Couplings(tmp_path / "c.h5", {"amp": "bf16"})


@pytest.mark.slow  # inductor compiles C++ on the CPU: tens of seconds
def test_compiled_solve_matches_eager():
    """``compile: default`` on the CPU: the same RK4 solve as the plain network to float32
    rounding (kernels fused differently)."""
    from reflowma import models
    from reflowma.core import solvers

    torch.manual_seed(0)
    net = models.build((1, 8, 8), {"name": "unet", "channels": 8, "channel_mult": [1, 2],
                                   "res_blocks": 1, "attention_resolutions": [4],
                                   "dropout": 0.0, "heads": 2, "norm_groups": 4}).eval()
    for p in net.parameters():
        if not p.abs().sum():
            torch.nn.init.normal_(p, std=0.1)
    z = torch.randn(6, 1, 8, 8)
    eager = solvers.solve(net, z, [0.0, 0.5, 1.0], 4, "rk4")
    compiled = solvers.solve(inference.wrap(net, {"compile": "default"}), z, [0.0, 0.5, 1.0],
                             4, "rk4")
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
