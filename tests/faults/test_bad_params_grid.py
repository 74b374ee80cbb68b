"""Malformed grids and presets through ``reflowma.grid`` (what the Snakefile runs at parse time):
each raises ``ConfigError`` whose message is one line that starts with the field.

More params errors: tests/test_params_errors.py (32 CLI cases of one stage's params) and
tests/test_workflow.py (10 cases that stop snakemake at parse time)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from reflowma.infra import grid
from reflowma.infra.config import ConfigError, params_dir

GRID = {"datasets": ["8gaussians"], "seeds": [0], "axes": {"K": [1, 2]}}
PRESET = yaml.safe_load((params_dir() / "presets" / "smoke.yaml").read_text())
MISSING = object()  # the file is not written


def _set(path: str, value):
    """An edit of the grid (``g``) or preset (``p``) at a dotted path (``g`` alone: the file)."""
    which, *keys = path.split(".")

    def edit(files: dict) -> None:
        if not keys:
            files[which] = value
            return
        node = files[which]
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return edit


# (id, edit(grid, preset), the field the message starts with, other substrings)
CASES = [
    # unknown keys at every level
    ("grid-top-unknown-key", _set("g.axis", {"K": [1]}), "grid.axis", ["unknown key", "axes"]),
    ("preset-top-unknown-key", _set("p.students", {}), "preset.students",
     ["unknown key", "reflow"]),
    ("preset-stage-unknown-key", _set("p.reflow.epochs", 3), "reflow.epochs", ["unknown key"]),
    ("preset-net-unknown-key", _set("p.teacher.net.widht", 8), "teacher.net.widht",
     ["unknown key", "width"]),
    ("preset-train-unknown-key", _set("p.reflow.train.epochs", 1), "reflow.train.epochs",
     ["unknown key", "steps"]),
    ("preset-regularizer-unknown-key", _set("p.reflow.regularizer.lamda", 1),
     "reflow.regularizer.lamda", ["unknown key", "weight"]),
    ("grid-axis-not-a-reflow-field", _set("g.axes", {"teacher_steps": [10]}),
     "reflow.teacher_steps", ["unknown key", "grid point"]),
    ("grid-axis-nested-unknown", _set("g.axes", {"net.widht": [8]}), "reflow.net.widht",
     ["unknown key"]),
    ("resources-unknown-key", _set("p.resources", {"reflow": {"gpus": 1}}),
     "preset.resources.reflow.gpus", ["unknown key", "gpu"]),
    ("resources-unknown-rule", _set("p.resources", {"train": {"threads": 1}}),
     "preset.resources.train", ["unknown key", "teacher"]),
    # wrong types
    ("grid-seed-wrong-type", _set("g.seeds", ["zero"]), "grid.seeds.0", ["'zero'", "integer"]),
    ("grid-axis-not-a-list", _set("g.axes", {"K": 2}), "grid.axes.K", ["array"]),
    ("grid-axis-value-list", _set("g.axes", {"regularizer.windows": [[0]]}),
     "grid.axes.regularizer.windows.0", ["[0]"]),
    ("grid-axis-value-wrong-type", _set("g.axes", {"K": ["two"]}), "reflow.K",
     ["'two'", "integer"]),
    ("preset-wrong-type", _set("p.evaluate.nfe", "1,2,4"), "evaluate.nfe", ["'1,2,4'", "array"]),
    ("preset-shared-wrong-value", _set("p.device", "gpu"), "reflow.device",
     ["'gpu'", "cpu, cuda, auto"]),
    ("preset-stage-not-a-mapping", _set("p.couplings", 5), "preset.couplings",
     ["must be a mapping"]),
    ("resources-wrong-type", _set("p.resources", {"default": {"threads": "two"}}),
     "preset.resources.default.threads", ["'two'", "integer"]),
    # out-of-range values
    ("grid-seed-negative", _set("g.seeds", [-1]), "grid.seeds.0", ["-1", ">= 0"]),
    ("grid-axis-out-of-range", _set("g.axes", {"window_start_weight": [-1.0]}),
     "reflow.window_start_weight", ["-1.0", ">= 0"]),
    ("preset-out-of-range", _set("p.couplings.steps", 0), "couplings.steps", ["0", ">= 1"]),
    ("resources-out-of-range", _set("p.resources", {"teacher": {"mem_mb": 0}}),
     "preset.resources.teacher.mem_mb", ["0", ">= 1"]),
    # empty grids
    ("grid-no-datasets", _set("g.datasets", []), "grid.datasets", ["too few items"]),
    ("grid-no-axes", _set("g.axes", {}), "grid.axes", ["{}"]),
    ("grid-exclude-everything", _set("g.exclude", [{"K": 1}, {"K": 2}]), "grid.exclude",
     ["excludes every point"]),
    ("grid-exclude-empty-entry", _set("g.exclude", [{}]), "grid.exclude.0", ["{}"]),
    ("grid-exclude-not-an-axis", _set("g.exclude", [{"lam": 0.1}]), "grid.exclude.0.lam",
     ["not an axis", "K"]),
    ("grid-exclude-not-a-value", _set("g.exclude", [{"K": 4}]), "grid.exclude.0.K",
     ["4 is not a value", "[1, 2]"]),
    # conflicting dataset settings: a preset's data file that the grid's dataset would replace,
    # a data.path that a bundled dataset would ignore
    ("grid-dataset-replaces-preset-file",
     _set("p.data", {"name": "file", "path": "points.npy"}), "grid.datasets.0",
     ["'8gaussians' conflicts with preset.data", "'points.npy'", "list 'file' in the grid"]),
    ("grid-dataset-replaces-stage-file",
     _set("p.teacher.data", {"name": "file", "path": "points.npy"}), "grid.datasets.0",
     ["preset.teacher.data"]),
    ("path-with-bundled-dataset", _set("p.data", {"name": "8gaussians", "path": "points.npy"}),
     "reflow.data.path", ["'points.npy' is set but data.name is '8gaussians'", "grid point"]),
    # evaluate would sample more than the couplings hold (it used to clamp silently)
    ("evaluate-more-samples-than-test-couplings", _set("p.evaluate.n_samples", 1000),
     "evaluate.n_samples", ["1000 is more than couplings.n_test = 128"]),
    ("logdet-more-points-than-test-couplings",
     _set("p.evaluate.logdet", {"enabled": True, "n_points": 500}),
     "evaluate.logdet.n_points", ["500 is more than couplings.n_test = 128"]),
    ("logdet-series-order-zero", _set("p.reflow.regularizer.series_order", 0),
     "reflow.regularizer.series_order", ["0"]),
    # missing or unreadable files
    ("missing-preset-file", _set("p", MISSING), "params", ["preset.yaml", "does not exist"]),
    ("missing-grid-file", _set("g", MISSING), "grid", ["grid.yaml", "does not exist"]),
    ("grid-not-a-mapping", _set("g", ["K", 1]), "grid", ["grid.yaml", "must hold a mapping"]),
    # YAML syntax: the file and line (tests/test_params_errors.py: every params file)
    ("grid-not-yaml", _set("g", "axes: [1,\n"), "{tmp}/grid.yaml:2", ["not valid YAML",
                                                                     "<stream end>"]),
    ("preset-not-yaml", _set("p", "seed: 0\nteacher:\n  train: {steps: 3\n  net: x\n"),
     "{tmp}/preset.yaml:4", ["not valid YAML", "flow mapping at line 3"]),
]


def _write(path: Path, obj) -> None:
    if obj is MISSING:
        return
    path.write_text(obj if isinstance(obj, str) else yaml.safe_dump(obj, sort_keys=False))


def _plan(preset_path: Path, grid_path: Path) -> dict:
    """What the Snakefile does before scheduling anything."""
    preset = grid.load_preset(str(preset_path))
    g = grid.load_grid(str(grid_path))
    return grid.stage_configs(preset, g, grid.expand(g))


@pytest.mark.parametrize(("edit", "field", "needles"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_malformed_grid_or_preset(tmp_path, edit, field, needles):
    files = {"g": copy.deepcopy(GRID), "p": copy.deepcopy(PRESET)}
    edit(files)
    pp, gp = tmp_path / "preset.yaml", tmp_path / "grid.yaml"
    _write(pp, files["p"])
    _write(gp, files["g"])
    with pytest.raises(ConfigError) as e:
        _plan(pp, gp)
    field = field.format(tmp=tmp_path)
    msg = str(e.value)
    assert "\n" not in msg, msg  # one line
    assert e.value.field == field, msg
    assert msg.startswith(f"{field}: "), msg  # the field first
    for s in needles:
        assert s in msg, (s, msg)


def test_the_unedited_grid_and_preset_are_fine(tmp_path):
    _write(tmp_path / "preset.yaml", PRESET)
    _write(tmp_path / "grid.yaml", GRID)
    cfgs = _plan(tmp_path / "preset.yaml", tmp_path / "grid.yaml")
    assert sorted(k[0] for k in cfgs) == ["couplings", "evaluate", "reflow", "reflow", "teacher"]


def test_unknown_grid_and_preset_names():
    with pytest.raises(ConfigError, match=r"^grid: 'nosuch' is not a grid; allowed: .*smoke"):
        grid.load_grid("nosuch")
    with pytest.raises(ConfigError, match=r"^preset: 'nosuch' is not a preset; allowed: .*smoke"):
        grid.load_preset("nosuch")
