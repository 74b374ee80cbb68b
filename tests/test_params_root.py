"""Which params a stage reads: ``$REFLOWMA_ROOT``, else the nearest ancestor of the current
directory holding ``params/presets/``, else the params shipped with the package (one
interpreter, several project clones: each clone's edits are seen from that clone only)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reflowma.infra import config

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


@pytest.fixture
def clones(tmp_path, monkeypatch):
    """Two project folders A and B with their own params/; B's smoke preset edited."""
    monkeypatch.delenv("REFLOWMA_ROOT", raising=False)
    out = {}
    for name in ("A", "B"):
        shutil.copytree(ROOT / "params", tmp_path / name / "params")
        out[name] = (tmp_path / name).resolve()
    preset = out["B"] / "params" / "presets" / "smoke.yaml"
    p = yaml.safe_load(preset.read_text())
    p["teacher"].setdefault("train", {})["steps"] = 4321
    preset.write_text(yaml.safe_dump(p))
    return out


def test_nearest_project_of_the_cwd(clones, monkeypatch):
    A, B = clones["A"], clones["B"]
    monkeypatch.chdir(B)
    assert config.params_dir() == B / "params"
    assert config.stage_config("teacher", "smoke")["train"]["steps"] == 4321
    (B / "sub" / "dir").mkdir(parents=True)
    monkeypatch.chdir(B / "sub" / "dir")  # an ancestor counts
    assert config.params_dir() == B / "params"
    monkeypatch.chdir(A)
    assert config.params_dir() == A / "params"
    assert config.stage_config("teacher", "smoke")["train"]["steps"] != 4321


def test_env_wins_and_package_fallback(clones, monkeypatch, tmp_path):
    monkeypatch.chdir(clones["A"])
    monkeypatch.setenv("REFLOWMA_ROOT", str(clones["B"]))
    assert config.params_dir() == clones["B"] / "params"
    monkeypatch.delenv("REFLOWMA_ROOT")
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")  # no params/ above: the package's own
    assert config.params_dir() == config.PACKAGE_DIR / "params"
    assert config.stage_config("teacher", "smoke")["train"]["steps"] != 4321


def test_two_clones_one_interpreter(clones):
    """The CLI run in B prints B's edit; run in A it does not."""
    env = {k: v for k, v in os.environ.items() if k != "REFLOWMA_ROOT"}
    env["PYTHONPATH"] = str(SRC)
    steps = {}
    for name, cwd in clones.items():
        p = subprocess.run([sys.executable, "-m", "reflowma", "teacher", "--params", "smoke",
                            "--print-config", "--out", "x"], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        steps[name] = yaml.safe_load(p.stdout)["train"]["steps"]
    assert steps["B"] == 4321 and steps["A"] != 4321


def test_workflow_sets_the_project():
    """The Snakefile's folder is the workflow's project (jobs inherit REFLOWMA_ROOT)."""
    text = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    first_read = text.index("rgrid.load_preset")
    assert -1 < text.index("REFLOWMA_ROOT=str(Path(workflow.basedir)") < first_read
