"""Extending the harness from outside the package: a plug-in module (tests/plugins) registers
a dataset, a network, an objective term and a metric; a smoke workflow run over that dataset
with that network and term produces a table column and a figure panel for that metric, with
no edit of package code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from reflowma import registry

REPO = Path(__file__).resolve().parents[1]
PLUGINS = Path(__file__).resolve().parent / "plugins"
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def test_plugin_flows_through_a_smoke_run(tmp_path, monkeypatch):
    preset = yaml.safe_load((REPO / "params/presets/smoke.yaml").read_text())
    preset["data"] = {"name": "demo_ring"}
    for stage in ("teacher", "reflow"):
        preset[stage]["net"] = {"name": "demo_tiny", "hidden": 16}
    preset["teacher"]["train"].update(steps=40)
    preset["reflow"]["train"].update(steps=20, log_every=5)
    preset["reflow"]["objectives"] = [{"name": "demo_velocity_norm", "weight": 0.01}]
    preset["evaluate"].update(nfe=[1, 2])
    grid = {"datasets": ["demo_ring"], "seeds": [0], "axes": {"K": [1, 2]}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(preset))
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(grid))
    env = {**os.environ, "REFLOWMA_PLUGINS": "reflowma_demo_plugin",
           "PYTHONPATH": os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run(["timeout", "-k", "10", "400", SNAKEMAKE, "--snakefile",
                          str(REPO / "Snakefile"), "--directory", str(tmp_path), "--cores", "2",
                          "--config", f"preset={tmp_path}/p.yaml", f"grid={tmp_path}/g.yaml",
                          f"results={tmp_path}/results"],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    results = tmp_path / "results" / "p"

    # the network and the objective were used: the student's training log has the term
    hist = json.loads((results / "students/demo_ring/seed~0/K~2/metrics.json").read_text())
    assert all("demo_vnorm" in row and "demo_vnorm_calls" in row for row in hist["history"])
    ev = json.loads((results / "eval/demo_ring/seed~0/K~2/eval.json").read_text())
    import numpy as np

    y = np.load(results / "eval/demo_ring/seed~0/K~2/samples.npz")["student_nfe2"]
    radius = np.linalg.norm(y.astype(np.float64), axis=1).mean()
    assert abs(ev["nfe"]["2"]["demo_radius"] - radius) < 1e-5 * radius  # float32 samples

    # the report, in this process with the plug-in loaded, has its column and its panel
    monkeypatch.setenv("REFLOWMA_PLUGINS", "reflowma_demo_plugin")
    monkeypatch.syspath_prepend(str(PLUGINS))
    registry.load_plugins()
    import reflowma_demo_plugin as plugin

    try:
        from reflowma.report import build_report
        from reflowma.report.figures import curves

        titles = []
        save = curves.save

        def spy(fig, out_dir, stem):
            titles.extend((stem, ax.get_title()) for ax in fig.axes)
            return save(fig, out_dir, stem)

        monkeypatch.setattr(curves, "save", spy)
        out = build_report(results / "runs", tmp_path / "report")
        table = pd.read_csv(tmp_path / "report" / "tables" / "demo_ring_nfe2.csv")
        assert "demo_radius.mean" in table.columns, list(table.columns)
        assert "mean radius" in (tmp_path / "report/tables/demo_ring_nfe2.md").read_text()
        assert any(stem.startswith("nfe") and "mean radius" in title for stem, title in titles), \
            titles
        assert any("demo_radius" in k for k in out["metrics"])
    finally:
        plugin.unregister()
        registry._loaded.discard("reflowma_demo_plugin")


def test_entry_points_are_scanned_once_per_process(monkeypatch):
    """Every registry lookup loads plug-ins; the distributions' entry points (a scan of every
    installed package's metadata) are read on the first lookup only, while a module named in
    REFLOWMA_PLUGINS later is still imported on the next lookup."""
    import importlib.metadata

    from reflowma.data import DATASETS

    calls = []
    real = importlib.metadata.entry_points

    def counting(**kw):
        calls.append(kw)
        return real(**kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", counting)
    monkeypatch.setattr(registry, "_scanned", [False])
    for _ in range(50):
        DATASETS.get("8gaussians")
    assert calls == [{"group": registry.ENTRY_POINT_GROUP}]

    monkeypatch.setenv("REFLOWMA_PLUGINS", "reflowma_demo_plugin")
    monkeypatch.syspath_prepend(str(PLUGINS))
    sys.modules.pop("reflowma_demo_plugin", None)
    registry._loaded.discard("reflowma_demo_plugin")
    try:
        assert "demo_ring" in DATASETS
        assert len(calls) == 1
    finally:
        sys.modules["reflowma_demo_plugin"].unregister()
        registry._loaded.discard("reflowma_demo_plugin")
