"""The layer contract (pyproject.toml, ``[tool.importlinter]``) holds, and it can fail: an upward
import planted in a copy of the package breaks it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_layer_contract_is_kept():
    res = lint(REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 kept, 0 broken" in res.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    shutil.copytree(REPO / "src", tmp_path / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    victim = tmp_path / "src" / "reflowma" / "core" / "losses.py"
    victim.write_text(victim.read_text() + "\nfrom reflowma.stages import teacher  # noqa\n")
    res = lint(tmp_path)
    assert res.returncode != 0
    assert "BROKEN" in res.stdout and "reflowma.core.losses -> reflowma.stages" in res.stdout


def test_every_package_has_a_layer():
    """A new top-level package or module must be placed in the contract, or it is unchecked."""
    import tomllib

    layers = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"][
        "contracts"][0]["layers"]
    named = {m.strip().split(".")[1] for level in layers for m in level.split("|")}
    pkg = REPO / "src" / "reflowma"
    units = {p.stem for p in pkg.glob("*.py")} | {p.name for p in pkg.iterdir()
                                                   if (p / "__init__.py").is_file()}
    assert units - {"__init__", "__main__"} - named == set()


def test_the_workflow_parse_imports_no_torch(tmp_path):
    """While Snakemake parses the Snakefile it validates every job's config (``infra.config``,
    with the dataset facts of ``data.catalog`` and the Inception needs of
    ``evaluation.inception_inputs``) and plans the report (``report.layout``): none of it may
    import torch, scipy or matplotlib (seconds per dry run and per Slurm job)."""
    weights = tmp_path / "w.pt"
    weights.touch()
    code = (
        "import sys; from reflowma.infra import config, grid; import reflowma.report.layout\n"
        "g = grid.load_grid('toy')\n"
        "grid.stage_configs(grid.load_preset('toy'), g, grid.expand(g))\n"
        "for s in config.STAGES: config.stage_config(s, 'mnist_smoke', check_files=False)\n"
        "config.stage_config('evaluate', 'mnist_smoke', ['fid=true', "
        f"'inception_weights={weights}'])\n"
        "print(sorted(m for m in ('torch', 'scipy', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
