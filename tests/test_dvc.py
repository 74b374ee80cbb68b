"""DVC wraps the Snakemake DAG: repro from a fresh clone, a no-op second repro, push/pull to the
local remote with byte-identical files and nothing left for Snakemake, and a param change that
reruns only the affected jobs (and shows in `dvc metrics diff`). Uses the smoke preset/grid."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def sh(cwd: Path, *cmd, timeout=600, check=True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "REFLOWMA_ROOT": str(cwd),
           "PYTHONPATH": str(cwd / "src"), "DVC_NO_ANALYTICS": "1"}
    res = subprocess.run(["timeout", "-k", "10", str(timeout), *map(str, cmd)], cwd=cwd, env=env,
                         capture_output=True, text=True)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} -> {res.returncode}\n"
                             f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def clone(dest: Path) -> Path:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    sh(REPO, "git", "clone", "-q", REPO, dest)
    cfg = dest / "params/config.yaml"
    cfg.write_text(cfg.read_text().replace("preset: toy", "preset: smoke")
                   .replace("grid: toy", "grid: smoke"))
    return dest


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def snakemake_jobs(out: str) -> dict[str, int]:
    m = re.search(r"Job stats:\njob\s+count\n-+\s+-+\n(.*?)\n\n", out, re.S)
    rows = [ln.split() for ln in m.group(1).splitlines()] if m else []
    return {r[0]: int(r[1]) for r in rows if r[0] != "total"}


def test_metrics_show_on_a_fresh_clone(tmp_path):
    """Before any run: dvc.yaml validates (a stage-level plot with a list of y columns made every
    `dvc metrics show` fail) and the not-yet-made metrics file is no error."""
    d = clone(tmp_path / "c")
    res = sh(d, "dvc", "metrics", "show", check=False)
    assert res.returncode == 0 and "validation failed" not in res.stderr, res.stderr


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """A fresh clone where `dvc repro` ran once."""
    d = clone(tmp_path_factory.mktemp("dvc") / "a")
    res = sh(d, "dvc", "repro")
    return d, res


def test_repro_from_fresh_clone_then_noop(first):
    d, res = first
    figs = sorted((d / "results/smoke/report/figures").glob("*.png"))
    assert figs and all(f.stat().st_size > 0 for f in figs)
    assert (d / "results/smoke/report/metrics.json").is_file()
    assert len(list((d / "results/smoke/eval").rglob("eval.json"))) == 2
    again = sh(d, "dvc", "repro")
    assert "Building DAG" not in again.stdout + again.stderr  # snakemake was not even called
    assert re.search(r"up to date|didn't change", again.stdout + again.stderr)


def test_push_pull_into_fresh_clone(first, tmp_path):
    d, _ = first
    sh(d, "dvc", "push")
    before = digests(d / "results/smoke")
    b = clone(tmp_path / "b")  # a second, fresh clone: no cache, no outputs, no .snakemake
    sh(b, "dvc", "remote", "modify", "--local", "local", "url", d / ".dvc-storage")
    shutil.copy(d / "dvc.lock", b / "dvc.lock")  # what a commit of the first clone would carry
    # The README's pull path (`make pull` = this script with the venv's bin on PATH; make
    # itself would reinstall the package from the clone into the shared venv).
    sh(b, "workflow/scripts/pull.sh")
    after = digests(b / "results/smoke")
    tracked = {k: v for k, v in before.items() if not k.startswith("report/")
               or k.startswith(("report/tables/", "report/figures/"))}
    assert {k: after.get(k) for k in tracked} == tracked  # byte-identical
    res = sh(b, "snakemake", "-n", "--config", "preset=smoke", "grid=smoke")
    assert snakemake_jobs(res.stdout) == {}, res.stdout[-3000:]
    assert "Nothing to be done" in res.stdout + res.stderr


def test_param_change_reruns_only_affected_jobs(first):
    d, _ = first
    preset = d / "params/presets/smoke.yaml"
    p = yaml.safe_load(preset.read_text())
    p["evaluate"]["n_samples"] = 100  # evaluation only: teacher, couplings, students stay
    preset.write_text(yaml.safe_dump(p, sort_keys=False))
    res = sh(d, "dvc", "repro")
    out = res.stdout + res.stderr
    runs = [snakemake_jobs(block) for block in out.split("Running stage")[1:]]
    assert {"evaluate": 2, "evaluations_seed": 1, "evaluations": 1} in runs, out[-4000:]
    assert all("teacher" not in r and "reflow" not in r for r in runs)
    diff = sh(d, "dvc", "metrics", "diff").stdout
    assert "summary.json" in diff and "8gaussians.w2_nfe1" in diff, diff
