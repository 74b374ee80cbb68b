"""The report: run records read back (latest completed run per job, corrupt records skipped),
tables whose cells are traceable to their runs, paired tests, missing grid points, figures,
Markdown no wider than 100 columns, and the Snakemake HTML report with every figure, the
tables and the claims.

One small real workflow (2 seeds x 2 points, audit on) runs once for the module."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from reflowma import cli
from reflowma.evaluation import spec
from reflowma.infra.runs import (
    RunRecordWarning,
    expected_jobs,
    latest_completed,
    load_runs,
    missing_jobs,
    parse_job,
)
from reflowma.report import build_report, figures, layout, markdown, points, render, tables
from reflowma.report.figures import heatmaps

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
GRID = {"datasets": ["8gaussians"], "seeds": [0, 1],
        "axes": {"K": [2], "regularizer.weight": [0.0, 0.1], "window_start_weight": [1.0]}}
EXTRA = "K~2/lam~1.0/ws~1.0"  # a grid point that never ran
NFE1 = "8gaussians/nfe~1"
REG, BASE = "K~2/lam~0.1/ws~1.0", "K~2/lam~0.0/ws~1.0"


@pytest.fixture(scope="module")
def wf(tmp_path_factory):
    """The smoke workflow on a 2-seed grid (tiny preset, marginal audit on) and its report."""
    root = tmp_path_factory.mktemp("report")
    preset = yaml.safe_load((REPO / "params/presets/smoke.yaml").read_text())
    preset["teacher"]["train"].update(steps=30)
    preset["reflow"]["train"].update(steps=20, log_every=5)
    preset["evaluate"].update(nfe=[1, 2])
    preset["evaluate"]["audit"]["enabled"] = True
    (root / "smoke.yaml").write_text(yaml.safe_dump(preset))
    (root / "grid.yaml").write_text(yaml.safe_dump(GRID))
    cmd = ["timeout", "-k", "10", "900", SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(root), "--cores", "2", "--config", f"preset={root}/smoke.yaml",
           f"grid={root}/grid.yaml", f"results={root}/results"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    assert res.returncode == 0, res.stderr[-3000:]
    runs_dir = root / "results/smoke/runs"
    jobs = expected_jobs(root / "grid.yaml") + [f"evaluate/8gaussians/seed~{s}/{EXTRA}"
                                                  for s in (0, 1)]
    out = build_report(runs_dir, root / "report", jobs)
    return {"root": root, "runs": runs_dir, "jobs": jobs, "out": root / "report", "res": out,
            "cmd": cmd}


def _table(wf, name="nfe1") -> pd.DataFrame:
    return pd.read_csv(wf["out"] / "tables" / f"8gaussians_{name}.csv")


def _run_result(runs_dir: Path, run_id: int) -> dict:
    return json.loads((runs_dir / str(run_id) / "run.json").read_text())["result"]


# --------------------------------------------------------------------------- records


def test_load_runs_real_records(wf):
    df = load_runs(wf["runs"])
    assert len(df) == 12 and (df["status"] == "COMPLETED").all()
    assert df["stage"].value_counts().to_dict() == {"teacher": 2, "couplings": 2, "reflow": 4,
                                                   "evaluate": 4}
    ev = df[df["stage"] == "evaluate"]
    assert set(ev["point"]) == {REG, BASE} and set(ev["seed"]) == {0, 1}
    assert set(ev["lam"]) == {0.0, 0.1} and set(ev["K"]) == {2} and set(ev["ws"]) == {1.0}
    assert (ev["dataset"] == "8gaussians").all()
    for r in ev.itertuples():
        assert r.job == f"evaluate/8gaussians/seed~{r.seed}/{r.point}"
        assert r.result["K"] == 2 and set(r.result["nfe"]) == {"1", "2"}
        assert Path(r.out).is_file() and Path(r.inputs["student"]).is_file()
        assert len(r.commit) == 40 and isinstance(r.dirty, bool) and r.host
        assert r.start_time <= r.stop_time
    tr = df[df["stage"] == "reflow"].iloc[0]
    assert tr["metrics"]["train.loss"]["steps"][-1] == 20
    assert parse_job("teacher/8gaussians/seed~1") == {"stage": "teacher",
                                                      "dataset": "8gaussians", "seed": 1,
                                                      "point": ""}


def _copy(src: Path, dst: Path, status=None, start=None, job=None):
    shutil.copytree(src, dst)
    run = json.loads((dst / "run.json").read_text())
    if status:
        run["status"] = status
        if status == "RUNNING":
            run.pop("stop_time", None)
            run.pop("result", None)
        elif status != "COMPLETED":
            run["result"] = None
            run["fail_trace"] = ["Traceback ...\n", "ValueError: boom\n"]
    if start:
        run["start_time"] = start
    (dst / "run.json").write_text(json.dumps(run))
    if job:
        info = json.loads((dst / "info.json").read_text())
        info["job"] = job
        (dst / "info.json").write_text(json.dumps(info))


def test_latest_completed_and_broken_records(wf, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(wf["runs"], runs)
    df = load_runs(runs)
    ev = latest_completed(df, "evaluate")
    row = ev[ev["job"].str.endswith(f"seed~0/{REG}")].iloc[0]
    src, job = runs / str(row.run_id), row.job
    # a later FAILED rerun of the same job: the completed one is still chosen
    _copy(src, runs / "100", status="FAILED", start="2100-01-01T00:00:00.000000")
    # a corrupt run.json, a folder without run.json: skipped with a warning naming the folder
    (runs / "101").mkdir()
    (runs / "101" / "run.json").write_text('{"status": "COMPL')
    (runs / "102").mkdir()
    # jobs whose only run failed / was interrupted / is still running
    for rid, status in ((103, "FAILED"), (104, "INTERRUPTED"), (105, "RUNNING")):
        _copy(src, runs / str(rid), status=status, job=f"evaluate/8gaussians/seed~{rid}/{REG}")
    with pytest.warns(RunRecordWarning) as rec:
        df2 = load_runs(runs)
    msgs = " ".join(str(w.message) for w in rec)
    assert str(runs / "101") in msgs and str(runs / "102") in msgs
    assert len(df2) == len(df) + 4
    chosen = latest_completed(df2)
    assert chosen.set_index("job").loc[job, "run_id"] == row.run_id
    assert chosen["job"].is_unique
    # a later COMPLETED rerun wins
    _copy(src, runs / "106", start="2100-01-02T00:00:00.000000")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RunRecordWarning)
        df3 = load_runs(runs)
    assert latest_completed(df3).set_index("job").loc[job, "run_id"] == 106
    expected = [job] + [f"evaluate/8gaussians/seed~{r}/{REG}" for r in (103, 104, 105, 999)]
    miss = missing_jobs(df3, expected).set_index("job")
    assert job not in miss.index
    assert list(miss["status"]) == ["FAILED", "INTERRUPTED", "RUNNING", "none"]
    assert miss.iloc[0]["run_id"] == 103 and miss.iloc[0]["error"] == "ValueError: boom"


# --------------------------------------------------------------------------- tables


def test_cell_is_mean_of_the_runs_it_cites(wf):
    cells = json.loads((wf["out"] / "tables/cells.json").read_text())
    table = _table(wf).set_index("method")
    ev = latest_completed(load_runs(wf["runs"]), "evaluate")
    for method in (BASE, REG):
        for metric, get in (("w2_paired_teacher", lambda r: r["nfe"]["1"]["w2_paired_teacher"]),
                            ("kl", lambda r: r["audit"]["marginal"]["nfe"]["1"]["kl_exact"]),
                            ("heldout_tm_loss", lambda r: r["heldout_tm_loss"])):
            cell = cells[f"{NFE1}/{method}/{metric}"]
            # exactly the latest completed evaluate run of each seed of this point
            want = ev[ev["point"] == method].sort_values("seed")
            assert cell["run_ids"] == list(want["run_id"]) and cell["seeds"] == [0, 1]
            vals = [get(_run_result(wf["runs"], rid)) for rid in cell["run_ids"]]
            assert cell["values"] == pytest.approx(vals, rel=1e-12)
            assert cell["mean"] == pytest.approx(np.mean(vals), rel=1e-12)
            assert table.loc[method, f"{metric}.mean"] == pytest.approx(np.mean(vals), rel=1e-9)
            assert table.loc[method, f"{metric}.std"] == pytest.approx(np.std(vals, ddof=1),
                                                                       rel=1e-9)
            half = stats.t.ppf(0.975, 1) * np.std(vals, ddof=1) / np.sqrt(2)
            assert cell["ci95"] == pytest.approx([np.mean(vals) - half, np.mean(vals) + half])
            assert table.loc[method, f"{metric}.n"] == 2


def test_best_per_column_is_the_lowest(wf):
    table = _table(wf)
    methods = table[table["kind"] == "method"]
    md = (wf["out"] / "tables/8gaussians_nfe1.md").read_text()
    marked = 0
    for metric in ("w2_paired_teacher", "w2_data", "mmd_data", "kl", "heldout_tm_loss"):
        means = methods[f"{metric}.mean"]
        best = methods[f"{metric}.best"].astype(bool)
        shown = means.map(lambda v: f"{v:.3g}")  # the digits the tables show
        if (shown == f"{means.min():.3g}").sum() == 1:  # one method alone has the best
            assert list(best) == list(means == means.min())
            marked += 1
        else:  # a tie at the digits shown: no mark
            assert not best.any()
        assert not table.loc[table["kind"] == "reference", f"{metric}.best"].astype(bool).any()
    assert md.count("**") >= 2 * marked
    tex = (wf["out"] / "tables/8gaussians_nfe1.tex").read_text()
    assert all(s in tex for s in (r"\toprule", r"\midrule", r"\bottomrule"))
    # ties at the digits shown are not marked; a unique best is
    frame = pd.DataFrame({"method": ["a", "b", "c", "teacher (Euler)"],
                          "kind": ["method"] * 3 + ["reference"],
                          "w2_data.mean": [0.12341, 0.12344, 0.2, 0.01]})
    assert not tables._unique_best(frame, "w2_data").any()
    frame.loc[1, "w2_data.mean"] = 0.1251
    assert list(tables._unique_best(frame, "w2_data")) == [True, False, False, False]


def test_paired_test_matches_scipy(wf):
    cells = json.loads((wf["out"] / "tables/cells.json").read_text())
    table = _table(wf).set_index("method")
    for metric in ("w2_paired_teacher", "mmd_data", "kl"):
        a, b = cells[f"{NFE1}/{REG}/{metric}"], cells[f"{NFE1}/{BASE}/{metric}"]
        assert a["baseline"] == BASE and a["paired_seeds"] == b["seeds"] == [0, 1]
        assert a["baseline_run_ids"] == b["run_ids"]
        p = stats.ttest_rel(a["values"], b["values"]).pvalue
        assert a["p_value"] == pytest.approx(p, rel=1e-9)
        assert table.loc[REG, f"{metric}.p"] == pytest.approx(p, rel=1e-9)
        assert np.isnan(table.loc[BASE, f"{metric}.p"])  # the baseline is not tested
    # no lam axis: no test
    assert points.baseline_of("K~2/ws~1.0", ["K~2/ws~1.0", "K~1/ws~1.0"]) is None
    # a grid keeping lam 0 once (logdet irrelevant there): that point is the control
    pts = ["K~2/lam~0.0/logdet~exact/ws~1.0", "K~2/lam~0.1/logdet~exact/ws~1.0",
           "K~2/lam~0.1/logdet~hutchinson/ws~1.0", "K~1/lam~0.0/logdet~exact/ws~1.0"]
    assert points.baseline_of(pts[2], pts) == pts[0] and points.baseline_of(pts[1], pts) == pts[0]


def test_missing_grid_points_are_rows(wf):
    table = _table(wf).set_index("method")
    assert table.loc[EXTRA, "status"] == "missing" and table.loc[EXTRA, "n_seeds"] == 0
    assert np.isnan(table.loc[EXTRA, "w2_paired_teacher.mean"])
    md = (wf["out"] / "tables/8gaussians_nfe1.md").read_text()
    assert EXTRA in md
    missing = json.loads((wf["out"] / "missing.json").read_text())
    assert [m["job"] for m in missing] == [f"evaluate/8gaussians/seed~{s}/{EXTRA}"
                                           for s in (0, 1)]
    assert all(m["status"] == "none" for m in missing)
    # failures: one seed failed -> partial; every seed failed -> failed; reflow failed upstream
    df = load_runs(wf["runs"])
    is_reg = (df["stage"] == "evaluate") & (df["point"] == REG)
    df.loc[is_reg & (df["seed"] == 1), "status"] = "FAILED"
    tabs = {t.name: t for t in tables.build_tables(df, wf["jobs"])}
    st = tabs[NFE1].frame.set_index("method")["status"]
    assert st[REG] == "partial 1/2 (seed~1: failed)" and st[BASE] == "ok"
    assert tabs[NFE1].frame.set_index("method").loc[REG, "w2_paired_teacher.n"] == 1
    df.loc[is_reg, "status"] = "FAILED"
    st = tables.build_tables(df, wf["jobs"])[0].frame.set_index("method")["status"]
    assert st[REG] == "failed"
    df.loc[is_reg, "status"] = "COMPLETED"
    df = df[~((df["stage"] == "evaluate") & (df["point"] == BASE))].copy()
    df.loc[(df["stage"] == "reflow") & (df["point"] == BASE), "status"] = "FAILED"
    st = tables.build_tables(df, wf["jobs"])[0].frame.set_index("method")["status"]
    assert st[BASE] == "failed (reflow)" and list(st.index[:3]) == [BASE, REG, EXTRA]
    # no evaluation completed at all: a status table still lists every point
    df = df[df["stage"] != "evaluate"]
    tabs = tables.build_tables(df, wf["jobs"])
    assert [t.name for t in tabs] == ["8gaussians/status"]
    assert dict(zip(tabs[0].frame["method"], tabs[0].frame["status"], strict=True)) == {
        BASE: "failed (reflow)", REG: "missing", EXTRA: "missing"}
    assert "failed (reflow)" in render.to_markdown(tabs[0]) and render.to_latex(tabs[0])


def test_metrics_json_is_flat_and_stable(wf):
    m = json.loads((wf["out"] / "metrics.json").read_text())
    assert list(m) == sorted(m) and all(isinstance(v, float) for v in m.values())
    table = _table(wf).set_index("method")
    assert m[f"8gaussians/{REG}/nfe~1/w2_paired_teacher"] == pytest.approx(
        table.loc[REG, "w2_paired_teacher.mean"])
    assert f"8gaussians/{REG}/heldout_tm_loss" in m
    assert "8gaussians/teacher_Euler/nfe~2/w2_paired_teacher" in m
    assert not any(EXTRA in k for k in m)


def test_cli_report(wf, tmp_path, capsys):
    rc = cli.main(["report", "--runs", str(wf["runs"]), "--out", str(tmp_path / "r"),
                   "--grid", str(wf["root"] / "grid.yaml"), "--no-figures"])
    assert rc == 0 and "0 missing jobs" in capsys.readouterr().out
    a = json.loads((tmp_path / "r/metrics.json").read_text())
    assert a == json.loads((wf["out"] / "metrics.json").read_text())


# --------------------------------------------------------------------------- figures


def _png_size(path: Path) -> tuple[int, int]:
    import matplotlib.image as mpimg

    h, w = mpimg.imread(path).shape[:2]
    return w, h


def _table_widths(folder: Path) -> dict:
    """Widest table row (characters) of every Markdown file under ``folder``."""
    return {str(f.relative_to(folder)): max(
        (len(line) for line in f.read_text().splitlines() if line.startswith("|")), default=0)
        for f in sorted(folder.rglob("*.md"))}


def test_markdown_tables_fit_100_columns(wf, tmp_path):
    """Every table of every Markdown file the report writes (tables, all.md, claims.md, and
    compare.md) is at most 100 columns wide; split tables keep every column and row."""
    widths = _table_widths(wf["out"])
    assert {"tables/all.md", "claims.md", "tables/8gaussians_nfe1.md",
            "tables/8gaussians_effects.md", "tables/8gaussians_local.md"} <= set(widths)
    assert all(0 < w <= markdown.WIDTH for w in widths.values()), widths
    for f in wf["out"].rglob("*.md"):  # prose too, but a word longer than a line (a path)
        long = [ln for ln in f.read_text().splitlines()
                if len(ln) > markdown.WIDTH and " " in ln.strip()]
        assert not long, (f, long)
    md = (wf["out"] / "tables/8gaussians_nfe1.md").read_text()
    t = {t.name: t for t in tables.build_tables(load_runs(wf["runs"]), wf["jobs"])}[NFE1]
    for metric in t.metrics:  # every column is in one of the parts
        assert f"| {spec.header(metric)[0]} " in md, metric
    assert md.count(f"| {REG} ") == md.count("### 8gaussians, NFE 1")  # a row in each part
    assert cli.main(["report", "--runs", str(wf["runs"]), "--out", str(tmp_path / "r"),
                     "--no-figures", "--compare", str(wf["runs"])]) == 0
    assert all(w <= markdown.WIDTH for w in _table_widths(tmp_path / "r").values())
    # a wide table is split by columns, each part repeating the key column
    parts = markdown.split(["k", *(f"column {i}" for i in range(30))],
                           [["row", *(f"value {i}" for i in range(30))]])
    assert len(parts) > 1 and all(markdown.width(p) <= markdown.WIDTH for p in parts)
    assert all(p.startswith("| k ") for p in parts)
    assert sum(p.count("| value") + p.count(" value") for p in parts) >= 30


def test_local_figure_expected_only_with_the_local_audit():
    """``local_<dataset>`` plots the per-window audit: with ``audit.local: false`` evaluate
    records none, so no such figure (and no placeholder) is expected."""
    toy = {"data": {"name": "8gaussians"}}
    assert "local" in layout.dataset_kinds({**toy, "audit": {"enabled": True, "local": True}})
    assert "local" not in layout.dataset_kinds({**toy, "audit": {"enabled": True,
                                                                 "local": False}})
    assert "local" not in layout.dataset_kinds({**toy, "audit": {"enabled": False}})


def test_every_figure_is_written(wf):
    stems = layout.expected_stems(wf["jobs"])
    kinds = {f["kind"] for f in layout.expected_figures(wf["jobs"])}
    assert kinds == {"nfe", "training", "local", "samples", "tm_marginal"}
    written = {Path(p).name for p in wf["res"]["figures"]}
    for stem in stems:
        for ext in ("png", "pdf"):
            p = wf["out"] / "figures" / f"{stem}.{ext}"
            assert p.name in written and p.stat().st_size > 5000, p
        # a real figure, not the one-line placeholder (5 x 1.6 in at 150 dpi)
        assert _png_size(wf["out"] / "figures" / f"{stem}.png")[1] > 300, stem
    # every datum is there: no placeholder stands in for a figure
    assert json.loads((wf["out"] / "figures" / figures.PLACEHOLDERS).read_text()) == {}
    assert not list((wf["out"] / "figures").glob(".*.tmp"))


def test_samples_come_from_the_records_not_the_models(wf, tmp_path):
    """The samples figure is drawn from the evaluate runs' samples.npz artifacts: with every
    model file gone it is still a real figure, and each saved array matches eval.json."""
    ev = latest_completed(load_runs(wf["runs"]), "evaluate")
    for r in ev.itertuples():
        npz = Path(r.run_dir) / "evaluate.samples.npz"
        assert npz.is_file()
        with np.load(npz) as f:
            res = _run_result(wf["runs"], r.run_id)
            for nfe in res["nfe"]:
                fold = f[f"fold_nfe{nfe}"]
                assert fold.mean() == pytest.approx(res["nfe"][nfe]["fold_fraction"])
                assert f[f"student_nfe{nfe}"].shape == (res["n_samples"], 2)
    results = wf["root"] / "results" / "smoke"
    moved = tmp_path / "models"
    moved.mkdir()
    for sub in ("teacher", "students"):
        shutil.move(str(results / sub), str(moved / sub))
    try:
        out = build_report(wf["runs"], tmp_path / "r", wf["jobs"])
    finally:
        for sub in ("teacher", "students"):
            shutil.move(str(moved / sub), str(results / sub))
    assert json.loads((tmp_path / "r/figures" / figures.PLACEHOLDERS).read_text()) == {}
    assert any(p.endswith("samples_8gaussians.png") for p in out["figures"])
    assert _png_size(tmp_path / "r/figures/samples_8gaussians.png")[1] > 300


def test_placeholder_names_the_missing_data(wf, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(wf["runs"], runs)
    for npz in runs.glob("*/evaluate.samples.npz"):
        npz.unlink()
    build_report(runs, tmp_path / "r", wf["jobs"])
    why = json.loads((tmp_path / "r/figures" / figures.PLACEHOLDERS).read_text())
    assert list(why) == ["samples_8gaussians"]
    assert "evaluate.samples.npz" in why["samples_8gaussians"]
    assert "no completed runs" not in why["samples_8gaussians"]
    assert _png_size(tmp_path / "r/figures/samples_8gaussians.png")[1] < 300


def test_failing_figure_fails_the_report(wf, tmp_path, monkeypatch, capsys, caplog):
    def boom(*args, **kwargs):
        raise ZeroDivisionError("figure bug")

    monkeypatch.setattr(figures, "fig_nfe", boom)
    with pytest.raises(figures.FigureError, match="fig_nfe|boom") as err:
        build_report(wf["runs"], tmp_path / "a", wf["jobs"])
    assert isinstance(err.value.__cause__, ZeroDivisionError)
    args = ["report", "--runs", str(wf["runs"]), "--grid", str(wf["root"] / "grid.yaml")]
    assert cli.main([*args, "--out", str(tmp_path / "b")]) != 0
    assert "figure bug" in capsys.readouterr().err
    assert "Traceback" in caplog.text and "ZeroDivisionError: figure bug" in caplog.text
    # explicitly asked to continue: the report completes; the placeholder names the error
    assert cli.main([*args, "--out", str(tmp_path / "c"), "--keep-going-figures"]) == 0
    why = json.loads((tmp_path / "c/figures" / figures.PLACEHOLDERS).read_text())
    assert list(why) == ["nfe_8gaussians"] and "ZeroDivisionError: figure bug" in why[
        "nfe_8gaussians"]
    # recorded as a job of its own: the failing report's record is FAILED, with the traceback
    assert cli.main([*args, "--out", str(tmp_path / "d"), "--record", str(tmp_path / "rec")]) == 1
    assert cli.main([*args, "--out", str(tmp_path / "e"), "--record", str(tmp_path / "rec"),
                     "--keep-going-figures"]) == 0
    recs = [json.loads(r.read_text()) for r in sorted((tmp_path / "rec").glob("*/run.json"))]
    assert [r["status"] for r in recs] == ["FAILED", "COMPLETED"]
    assert "ZeroDivisionError: figure bug" in "".join(recs[0]["fail_trace"])


def test_spec_drives_tables_metrics_and_plots(wf):
    """The spec puts every computed metric in the tables (straightness, the data floor, the
    teacher's kNN KL and the score error among them); a registered metric appears in the
    tables without any other edit."""

    table = _table(wf).set_index("method")
    ev = latest_completed(load_runs(wf["runs"]), "evaluate")
    first = ev.sort_values("run_id").groupby("seed").head(1)
    res = {int(r.seed): _run_result(wf["runs"], r.run_id) for r in first.itertuples()}
    assert table.loc[REG, "straightness.n"] == 2
    floor = np.mean([r["data_floor"]["w2_data"] for r in res.values()])
    assert table.loc[spec.DATA_FLOOR, "w2_data.mean"] == pytest.approx(floor)
    tkl = np.mean([r["audit"]["marginal"]["teacher_kl_knn"] for r in res.values()])
    assert table.loc[spec.TEACHER_CEILING, "kl_knn.mean"] == pytest.approx(tkl)
    teacher = _table(wf, "teacher").set_index("method")
    for t in res[0]["audit"]["score_error"]:
        mean = np.mean([r["audit"]["score_error"][t] for r in res.values()])
        assert teacher.loc[spec.TEACHER, f"score_error_t{t}.mean"] == pytest.approx(mean)
    plots = (wf["out"] / "plots/nfe.csv").read_text().splitlines()[0].split(",")
    assert plots[3:] == [m.key for m in spec.selected("plot")]
    m = json.loads((wf["out"] / "metrics.json").read_text())
    assert f"8gaussians/{REG}/nfe~1/straightness" in m
    assert "8gaussians/teacher/score_error_t0.9" in m
    # one declaration adds a metric to the tables
    spec.register(spec.Metric("w2_paired_x2", "twice paired W2",
                              paths={spec.STUDENT: "nfe.{nfe}.w2_paired_teacher"}))
    try:
        tabs = {t.name: t for t in tables.build_tables(load_runs(wf["runs"]), wf["jobs"])}
        f = tabs[NFE1].frame.set_index("method")
        assert f.loc[REG, "w2_paired_x2.mean"] == pytest.approx(
            table.loc[REG, "w2_paired_teacher.mean"])
    finally:
        spec.METRICS._items.pop("w2_paired_x2")


def test_heatmap_figure(tmp_path):
    """lam x K heatmaps from long-form results (synthetic: the fixture grid has one K)."""
    rng = np.random.default_rng(0)
    methods = [f"K~{k}/lam~{lam}/ws~1.0" for k in (1, 2) for lam in (0.0, 0.1)]
    rows = [{"dataset": "moons", "method": m, "seed": s, "run_id": 0, "nfe": n, "metric": met,
             "value": float(rng.uniform(0.1, 1))}
            for m in methods for s in (0, 1) for n in (1, 2)
            for met in ("w2_paired_teacher", "mmd_data")]
    paths = figures.fig_heatmaps(pd.DataFrame(rows), "moons", methods, tmp_path)
    assert [p.name for p in paths] == ["heatmap_moons.png", "heatmap_moons.pdf"]
    assert all(p.stat().st_size > 5000 for p in paths)
    # the colour is the % gap to the panel's best cell, unless that best lies inside the
    # estimator noise the metric's negative estimates show (then no %: one grey)
    grid = np.array([[0.0002, 0.0004], [0.3, 0.0003]])
    gap, best = heatmaps.gaps(grid, "lower")
    assert best == 0.0002 and gap[0, 1] == pytest.approx(100.0) and gap[1, 0] > 1000
    assert heatmaps.gaps(grid, "lower", noise=0.004)[0] is None
    assert heatmaps.gaps(grid, "lower", noise=1e-4)[0] is not None
    assert heatmaps.gaps(-grid, "lower")[0] is None  # best <= 0
    assert layout.expected_stems([f"evaluate/moons/seed~0/{m}" for m in methods]) == [
        "nfe_moons", "training_moons", "local_moons", "tm_marginal_moons", "heatmap_moons",
        "samples_moons"]


def test_snakemake_html_report(wf):
    """``snakemake --report`` of the workflow: every figure the report wrote, the tables and
    the claims as pages (HTML, which the report shows on its page)."""
    html = wf["root"] / "report.html"
    res = subprocess.run([*wf["cmd"], "--report", str(html)], capture_output=True, text=True,
                         cwd=wf["root"])
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads(re.search(r"var results = (\{.*?\});\n", html.read_text(),
                                   re.S).group(1))
    names = {r["name"]: r for r in results.values()}
    report = wf["root"] / "results/smoke/report"
    written = {p.name for p in (report / "figures").glob("*.png")}
    assert written and written <= set(names), written - set(names)
    assert {f["stem"] + ".png" for f in layout.expected_figures(wf["jobs"][:4])} == written

    def page(name):
        assert names[name]["mime_type"] == "text/html"
        return base64.b64decode(names[name]["data_uri"].split("base64,", 1)[1]).decode()

    tables_page = page("all.html")
    assert tables_page.count("<table>") >= 5 and "8gaussians, NFE 1" in tables_page
    assert f"<td>{REG}</td>" in tables_page
    claims_page = page("claims.html")
    assert "Theorem 1" in claims_page and "MDE" in claims_page and "<table>" in claims_page
    assert claims_page == (report / "claims.html").read_text()


def test_figures_of_user_named_datasets():
    """The figure list follows the dataset's data section, whatever the grid calls it: a
    user's image dataset gets its image grid, a point file its scatter, no audit no local."""
    jobs = [f"evaluate/{ds}/seed~0/K~1/lam~0.0" for ds in ("faces", "pts", "dig", "ring")]
    cfgs = {"faces": {"data": {"name": "images", "path": "x.npz"}, "audit": {"enabled": False}},
            "pts": {"data": {"name": "file", "path": "p.npy"}, "audit": {"enabled": True}},
            "dig": {"data": {"name": "digits", "layout": "image"}, "audit": {"enabled": True}}}
    stems = set(layout.expected_stems(jobs, cfgs))
    assert {"images_faces", "samples_pts", "images_dig"} <= stems
    assert not stems & {"local_faces", "samples_faces", "images_pts", "samples_dig"}
    assert {"nfe_ring", "local_ring", "tm_marginal_ring", "training_ring"} <= stems
    assert not any(s.endswith("_ring") and s.startswith(("samples", "images")) for s in stems)


def test_dvc_plots_follow_the_spec():
    (plot,) = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    assert next(iter(plot.values()))["y"] == [m.key for m in spec.selected("plot")]


def test_claims_pair_each_regularized_point_with_its_control(wf):
    """The audited 8gaussians grid also has a teacher-only table (score error), which has no
    methods: the claims take the dataset's methods from all its tables."""
    c = json.loads((wf["out"] / "claims.json").read_text())
    pts = {p["method"]: p for p in c["regularizer"]["piecewise"]["points"]}
    pt = pts[REG]  # (the grid point that never ran, EXTRA, is listed too, untested)
    assert pt["control"] == BASE
    assert pt["verdict"] != "untested"  # two seeds: a paired test was made
    assert c["regularizer"]["vanilla"]["points"] == []  # no K = 1 point in this grid


def test_training_figure_without_loss_curves_is_nodata(tmp_path):
    """Records whose history holds none of the plotted losses: NoData (a placeholder), not a
    crash on an empty subplot grid."""
    tl = pd.DataFrame([{"stage": "reflow", "dataset": "moons", "method": "K~1", "seed": 0,
                        "metric": "lr", "step": 10, "value": 1e-3}])
    with pytest.raises(figures.NoData, match="no loss curve of moons"):
        figures.fig_training(tl, pd.DataFrame(), "moons", ["K~1"], tmp_path)


def test_report_layout_is_light_to_import():
    """The workflow imports reflowma.report.layout while Snakemake parses the Snakefile (every
    dry run, every Slurm job): it must not pull torch, scipy or the plotting libraries (about
    5 s on 2 cores), and its toy names must be the data registry's."""
    code = ("import sys; import reflowma.report.layout; "
            "print(sorted(m for m in ('torch', 'scipy', 'matplotlib', 'seaborn') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    from reflowma.data.catalog import TOYS as DECLARED_TOYS
    from reflowma.data.toys import TOYS

    assert set(TOYS) == DECLARED_TOYS
