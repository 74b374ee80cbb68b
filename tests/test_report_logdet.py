"""The report's log-det gap table (reflowma.report.logdet) on synthetic evaluate records whose
``logdet`` sections come from ``evaluation.logdet_gap.window_gaps`` of known matrices."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from reflowma.core import logdet as LD
from reflowma.evaluation import logdet_gap
from reflowma.infra.runs import load_runs
from reflowma.report import build_report
from reflowma.report import logdet as RL

from .records import write_evaluate_record

POINTS = {"K~1/lam~0.0/ws~1.0": 1, "K~2/lam~0.0/ws~1.0": 2}


def _section(K: int, scale: float, seed: int) -> dict:
    """Windows of diagonal A = scale * diag(a) with known exact and first-order values."""
    wins = []
    for k in range(K):
        a = scale * torch.tensor([[-0.5, 0.2, 0.1], [-0.3, 0.4, -0.2]], dtype=torch.float64)
        probes = LD.rademacher((2, 2, 3), torch.Generator().manual_seed(seed))
        wins.append({"k": k, "t": k / K, "h": 1 / K,
                     **logdet_gap.window_gaps(torch.diag_embed(a), probes, [2])})
    return {"windows": wins}


def write_runs(root: Path, seeds=(0, 1)) -> Path:
    rid = 0
    for seed in seeds:
        for point, K in POINTS.items():
            rid += 1
            res = {"K": K, "nfe": {}, "logdet": _section(K, 1.0 + 0.5 * seed, seed)}
            write_evaluate_record(root, rid, f"evaluate/digits/seed~{seed}/{point}", seed, res)
    return root


def test_logdet_table_is_the_mean_over_seeds(tmp_path):
    runs = write_runs(tmp_path / "runs")
    build_report(runs, tmp_path / "report", figures=False)
    t = pd.read_csv(tmp_path / "report/tables/digits_logdet.csv")
    assert list(zip(t["method"], t["window"], strict=True)) == [
        ("K~1/lam~0.0/ws~1.0", 0), ("K~2/lam~0.0/ws~1.0", 0), ("K~2/lam~0.0/ws~1.0", 1)]
    row = t.iloc[0]
    A = torch.tensor([[-0.5, 0.2, 0.1], [-0.3, 0.4, -0.2]], dtype=torch.float64)
    exact, gaps, abs_gaps = [], [], []
    for s in (1.0, 1.5):  # the two seeds' scales
        ex = torch.log1p(s * A).sum(-1)
        exact.append(float(ex.mean()))
        abs_gaps.append(float(((s * A).sum(-1) - ex).abs().mean()))
        gaps.append(abs_gaps[-1] / float(ex.abs().mean()))
    assert row["exact"] == pytest.approx(sum(exact) / 2, rel=1e-9)
    assert row["seeds"] == 2 and row["run ids"] == "1, 3"
    assert row["first-order gap"] == pytest.approx(sum(abs_gaps) / 2, rel=1e-9)
    assert row["first-order gap %"] == pytest.approx(100 * sum(gaps) / 2, rel=1e-9)
    assert row["Hutchinson gap %"] == pytest.approx(row["first-order gap %"], rel=1e-9)
    assert row["ρ ≥ 1"] == 0 and row["folded"] == 0
    md = (tmp_path / "report/tables/digits_logdet.md").read_text()
    assert "log-det of the window map" in md and "series 2 gap %" in md
    assert md in (tmp_path / "report/tables/all.md").read_text()


def test_no_logdet_sections_no_table(tmp_path):
    runs = write_runs(tmp_path / "runs")
    for p in runs.glob("*/run.json"):
        rec = json.loads(p.read_text())
        del rec["result"]["logdet"]
        p.write_text(json.dumps(rec))
    build_report(runs, tmp_path / "report", figures=False)
    assert not (tmp_path / "report/tables/digits_logdet.md").exists()
    assert RL.tables(load_runs(runs)) == []
