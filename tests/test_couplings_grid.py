"""The couplings stage's time grids: the file records the grid that made it (settings in the
expected attrs, a non-uniform grid's step times), a partial file of another grid is started
over (one of the same grid resumed), and every grid's states sit at the window ends (against a
tight solve of the same teacher: a grid that missed a window end would be off by a step's
motion, not by the solver's error)."""

import logging

import h5py
import numpy as np
import pytest
import torch

from reflowma.core import solvers
from reflowma.infra import config
from reflowma.infra.config import ConfigError
from reflowma.infra.storage.checkpoint import save_model
from reflowma.infra.storage.couplings import Couplings, CouplingsError, partial_path
from reflowma.models import mlp
from reflowma.stages import couplings
from reflowma.stages.common import load_model

OVER = ["n_train=40", "n_test=8", "chunk_size=16", "solver=rk4", "steps=8", "windows=[1,2,4]"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A random MLP teacher of the smoke preset's shape, saved as the teacher stage saves; its
    time inputs zeroed (a random net's sinusoidal time features up to 1000 rad per unit time
    make a field no fixed-step solver resolves; a trained teacher's is smooth)."""
    torch.manual_seed(0)
    net = config.stage_config("teacher", "smoke")["net"]
    v = mlp.build((2,), net)
    with torch.no_grad():
        v.net[0].weight[:, 2:] = 0.0
    path = tmp_path_factory.mktemp("t") / "teacher.pt"
    save_model(path, "teacher", v.state_dict(), {"net": net, "data_shape": [2],
                                                  "data": '{"name": "8gaussians"}'})
    return path


def _cfg(*over):
    return config.stage_config("couplings", "smoke", [*OVER, *over])


@pytest.mark.parametrize("grid", [["time_grid=uniform"], ["time_grid=power", "rho=2.5"],
                                  ["time_grid=fitted", "pilot_size=16"],
                                  ["solver=dopri5", "rtol=1e-6", "atol=1e-8"]])
def test_states_at_the_window_ends_and_the_grid_recorded(tmp_path, teacher, grid):
    cfg = _cfg(*grid)
    out = tmp_path / "c.h5"
    couplings.run(cfg, teacher, out)
    C = Couplings(out, couplings.expected_attrs(cfg, C_sha(teacher), '{"name": "8gaussians"}'))
    assert C.times == [0.0, 0.25, 0.5, 0.75, 1.0]
    name = cfg["time_grid"]
    assert C.attrs["time_grid"] == name
    if name in ("power", "fitted"):
        st = C.attrs["step_times"]
        assert st[0] == 0.0 and st[-1] == 1.0 and all(np.diff(st) > 0)
        assert {0.25, 0.5, 0.75} <= set(st)  # the window ends are steps' ends
        assert abs(len(st) - 1 - cfg["steps"]) <= 4
    else:
        assert "step_times" not in C.attrs
    # the states at the stored times: within the solver's error of a tight solve
    v = load_model(teacher, "teacher")[0]
    z = torch.from_numpy(C.states("train")[:, 0])
    tight = solvers.solve(v, z, C.times, 256, "rk4").transpose(0, 1).numpy()
    assert np.abs(C.states("train") - tight).max() < 1e-4


def C_sha(path):
    return load_model(path, "teacher")[2]


def test_a_grid_change_is_another_file(tmp_path, teacher):
    uni, fit = _cfg(), _cfg("time_grid=fitted")
    sha, data = C_sha(teacher), '{"name": "8gaussians"}'
    a, b = couplings.expected_attrs(uni, sha, data), couplings.expected_attrs(fit, sha, data)
    assert a["time_grid"] == "uniform" and b["time_grid"] == "fitted"
    assert a != b and "rho" not in a and b["pilot_size"] == fit["pilot_size"]
    assert couplings.expected_attrs(_cfg("time_grid=power", "rho=2"), sha, data)["rho"] == 2
    out = tmp_path / "c.h5"
    couplings.run(uni, teacher, out)
    with pytest.raises(CouplingsError, match="time_grid: file has 'uniform', expected 'fitted'"):
        Couplings(out, b)
    # a partial file of the uniform grid is not resumed by a fitted run: it starts over
    out.rename(partial_path(out))
    with h5py.File(partial_path(out), "a") as f:
        f.attrs["complete"] = False
    couplings.run(fit, teacher, out)
    assert Couplings(out, b).attrs["time_grid"] == "fitted"


def test_dopri5_takes_no_fixed_grid():
    with pytest.raises(ConfigError, match="couplings.time_grid"):
        _cfg("solver=dopri5", "time_grid=power")


def _as_partial(out, marker: float = 7.0):
    """``out`` turned into the partial file of an interrupted run: one train chunk done, whose
    states are overwritten with ``marker`` (a resumed run keeps them, a new one does not)."""
    part = partial_path(out)
    out.rename(part)
    with h5py.File(part, "a") as f:
        f.attrs["complete"] = False
        f["train"].attrs["chunks_done"], f["test"].attrs["chunks_done"] = 1, 0
        f["train"]["states"][:16] = marker


def test_a_partial_file_resumes_with_its_grid_and_starts_over_with_another(tmp_path, teacher,
                                                                           caplog):
    """The recorded grid (its settings and the fitted grid's step times, floats that make the
    round trip through the file) decides whether a partial file is resumed: the same fitted grid
    resumes it (the chunk already written is kept), another pilot size starts it over."""
    sha, data = C_sha(teacher), '{"name": "8gaussians"}'
    fit, other = _cfg("time_grid=fitted", "pilot_size=16"), _cfg("time_grid=fitted",
                                                                 "pilot_size=8")
    out = tmp_path / "c.h5"
    couplings.run(fit, teacher, out)
    ref = Couplings(out, couplings.expected_attrs(fit, sha, data)).states("train")
    caplog.set_level(logging.INFO)
    _as_partial(out)
    couplings.run(fit, teacher, out)
    assert f"resuming {partial_path(out)} at chunk 1/" in caplog.text
    got = Couplings(out, couplings.expected_attrs(fit, sha, data)).states("train")
    assert np.all(got[:16] == 7.0) and np.array_equal(got[16:], ref[16:])
    caplog.clear()
    _as_partial(out)
    couplings.run(other, teacher, out)
    assert "resuming" not in caplog.text
    C = Couplings(out, couplings.expected_attrs(other, sha, data))
    assert C.attrs["pilot_size"] == 8 and not np.any(C.states("train")[:16] == 7.0)
