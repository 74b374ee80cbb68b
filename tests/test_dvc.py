"""DVC wraps the Snakemake DAG: repro from a fresh clone, a no-op second repro, push/pull to the
local remote with byte-identical files and nothing left for Snakemake, `dvc exp run` with a
second preset keeping both presets' results and comparing them, and a param change that reruns
only the affected jobs (and shows in `dvc metrics diff`). Uses the smoke preset/grid; offline
(analytics and update checks are off in .dvc/config)."""

from __future__ import annotations

import hashlib
import json
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


def sh(cwd: Path, *cmd, timeout=600, check=True, env=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "REFLOWMA_ROOT": str(cwd),
           "PYTHONPATH": str(cwd / "src"), "DVC_NO_ANALYTICS": "1", **(env or {})}
    res = subprocess.run(["timeout", "-k", "10", str(timeout), *map(str, cmd)], cwd=cwd, env=env,
                         capture_output=True, text=True)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} -> {res.returncode}\n"
                             f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def git(cwd: Path, *args) -> None:
    sh(cwd, "git", "-c", "user.name=reflowma tests", "-c", "user.email=tests@example.invalid",
       *args)


def clone(dest: Path) -> Path:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    sh(REPO, "git", "clone", "-q", REPO, dest)
    cfg = dest / "params/config.yaml"
    cfg.write_text(cfg.read_text().replace("preset: toy", "preset: smoke")
                   .replace("grid: toy", "grid: smoke"))
    for key in ("core.analytics", "core.check_update"):  # offline
        assert sh(dest, "dvc", "config", key).stdout.strip() == "false"
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
    # what a commit of the first clone would carry: the lock and the metrics (in git)
    shutil.copy(d / "dvc.lock", b / "dvc.lock")
    shutil.copytree(d / "metrics", b / "metrics")
    # The README's pull path (`make pull` = this script with the venv's bin on PATH; make
    # itself would reinstall the package from the clone into the shared venv).
    sh(b, "workflow/scripts/pull.sh")
    after = digests(b / "results/smoke")
    assert after == before  # every file of the results folder, byte-identical
    res = sh(b, "snakemake", "-n", "--config", "preset=smoke", "grid=smoke")
    assert snakemake_jobs(res.stdout) == {}, res.stdout[-3000:]
    assert "Nothing to be done" in res.stdout + res.stderr


def test_exp_run_with_another_preset_keeps_both_and_compares_them(first):
    """`dvc exp run -S params/config.yaml:preset=smoke_b` after the smoke preset's repro: smoke_b
    runs, smoke's results stay in the workspace untouched; `dvc exp show` and `dvc metrics
    diff` put both presets' headline metrics under the same names, printed with enough digits
    to tell them apart; running smoke again retrains nothing and keeps smoke_b's results."""
    d, _ = first
    git(d, "add", "-A")
    git(d, "commit", "-qm", "smoke preset's results")
    preset = yaml.safe_load((d / "params/presets/smoke.yaml").read_text())
    preset["reflow"]["train"]["steps"] = 80  # other students, the same metric names
    (d / "params/presets/smoke_b.yaml").write_text(yaml.safe_dump(preset, sort_keys=False))
    git(d, "add", "params/presets/smoke_b.yaml")
    git(d, "commit", "-qm", "preset smoke_b")
    smoke = digests(d / "results/smoke")
    res = sh(d, "dvc", "exp", "run", "-S", "params/config.yaml:preset=smoke_b")
    out = res.stdout + res.stderr
    assert {k: v for k, v in snakemake_jobs(out).items() if k in ("teacher", "reflow")} == {
        "teacher": 1, "reflow": 2}, out[-3000:]
    assert digests(d / "results/smoke") == smoke  # preset A: still there, byte-identical
    assert len(list((d / "results/smoke_b/eval").rglob("eval.json"))) == 2
    assert (d / "results/smoke_b/report/tables/all.md").is_file()
    env = {"COLUMNS": "100"}
    show = sh(d, "dvc", "exp", "show", "--no-pager", "--precision", "10", "--drop", ".*",
              "--keep", "Experiment|.*nfe.*|missing|preset|grid", env=env).stdout
    print(show)
    rows = {}
    for e in json.loads(sh(d, "dvc", "exp", "show", "--json").stdout):
        for r in [e] + [r for x in e.get("experiments") or [] for r in x["revs"]]:
            data = r["data"]
            rows[r["name"] or r["rev"]] = (
                data["params"]["params/config.yaml"]["data"]["preset"],
                data["metrics"]["metrics/summary.json"]["data"]["8gaussians"])
    by_preset = {p: m for p, m in rows.values()}
    assert set(by_preset) == {"smoke", "smoke_b"}, rows
    assert set(by_preset["smoke"]) == set(by_preset["smoke_b"]) == {"w2_nfe1", "mmd_nfe1"}
    diff = sh(d, "dvc", "metrics", "diff", "--precision", "10", "--all").stdout
    print(diff)
    line = next(ln.split() for ln in diff.splitlines() if "8gaussians.w2_nfe1" in ln)
    a, b, change = (float(v) for v in line[2:5])  # HEAD (smoke), workspace (smoke_b), change
    assert (a, b) == (by_preset["smoke"]["w2_nfe1"], by_preset["smoke_b"]["w2_nfe1"]) and a != b
    assert abs(change - (b - a)) <= 1e-9 * max(abs(a), abs(b))  # the printed change is b - a
    # back to smoke: DVC reruns its stage, Snakemake finds every job done (only the report is
    # rebuilt), and smoke_b's results stay
    smoke_b = digests(d / "results/smoke_b")
    res = sh(d, "dvc", "exp", "run", "-S", "params/config.yaml:preset=smoke")
    out = res.stdout + res.stderr
    assert snakemake_jobs(out) == {"report": 1, "all": 1}, out[-3000:]
    assert digests(d / "results/smoke_b") == smoke_b
    kept = {k: v for k, v in smoke.items() if not k.startswith(("report/", "logs/"))}
    assert {k: v for k, v in digests(d / "results/smoke").items() if k in kept} == kept


def test_param_change_reruns_only_affected_jobs(first):
    d, _ = first
    git(d, "add", "-A")  # HEAD: this workspace's results, for the metrics diff below
    git(d, "commit", "-qm", "before the param change", "--allow-empty")
    preset = d / "params/presets/smoke.yaml"
    p = yaml.safe_load(preset.read_text())
    p["evaluate"]["n_samples"] = 100  # evaluation only: teacher, couplings, students stay
    preset.write_text(yaml.safe_dump(p, sort_keys=False))
    res = sh(d, "dvc", "repro")
    out = res.stdout + res.stderr
    assert snakemake_jobs(out) == {"evaluate": 2, "evaluations_seed": 1, "evaluations": 1,
                                   "report": 1, "all": 1}, out[-4000:]
    diff = sh(d, "dvc", "metrics", "diff", "--precision", "10").stdout  # changed ones only
    rows = [ln.split() for ln in diff.splitlines() if ln.startswith("metrics/summary.json")]
    assert rows and all(r[1].startswith("8gaussians.") and float(r[4]) != 0 for r in rows), diff
