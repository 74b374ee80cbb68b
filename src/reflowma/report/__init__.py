"""The report stage: tables, figures and a flat metrics summary from the Sacred run records.

``build_report(runs_dir, out_dir, expected_jobs=None)`` reads every record under ``runs_dir``
(``reflowma.infra.runs``), keeps the latest completed run of each job and writes

* ``tables/<dataset>_nfe<n>.{md,tex,csv}`` (methods x metrics per NFE), ``..._local.*`` (local
  per-window audit), ``..._teacher.*`` (the teacher alone), ``..._effects.*`` (regularizer vs
  lam-0 control, next to ``params/references/prototype_2d.yaml``), ``tables/all.{md,csv}``
  (all of them) and ``tables/cells.json`` (each cell -> the run ids, seeds and values);
* ``figures/*.{png,pdf}`` and ``figures/placeholders.json`` (``reflowma.report.figures``);
* ``metrics.json``: ``{"<dataset>/<method>/nfe~<n>/<metric>": mean over seeds}``, flat and
  sorted (every number of the tables); ``summary.json``: a handful of headline numbers (the
  DVC metrics: ``render.headline``); ``plots/nfe.csv`` for ``dvc plots``;
* ``missing.json``: expected jobs with no completed run and why;
* ``claims.md`` and ``claims.json``: each claim of the paper, its evidence and a computed
  verdict (``reflowma.report.claims``);
* evaluations with ``evaluate.logdet.enabled``: ``tables/<dataset>_logdet.{md,csv}`` (also in
  all.md): the log-det of the window map against its approximations (``reflowma.report.logdet``);
* grids with ``equal_time: true``: ``tables/<dataset>_equal_time.{md,csv}`` (also in all.md)
  and ``equal_time.json``: each regularized point against its control at equal steps and at
  equal time, and whether the regularizer is worth its cost (``reflowma.report.equal_time``).

Modules: ``collect`` (records -> long rows), ``stats`` (mean ± std, t-intervals, paired
tests), ``tables`` (rows -> Table frames), ``render`` (Markdown, LaTeX, CSV, flat metrics),
``figures``. Every metric comes from ``reflowma.evaluation.spec``; nothing here loads a model:
the figures read what the evaluate runs recorded (``eval.json``, ``samples.npz`` artifacts).

Every file is written atomically. ``expected_jobs`` (evaluate job names, e.g. from the grid)
makes missing grid points visible as rows; without it the jobs seen in the records are expected.
"""

from __future__ import annotations

import logging
from pathlib import Path

from reflowma.infra.runs import load_runs, missing_jobs
from reflowma.infra.storage.atomic import atomic_path, write_json
from reflowma.report import collect as C
from reflowma.report import layout
from reflowma.report import render as R
from reflowma.report import tables as T
from reflowma.report.render import flat_metrics

log = logging.getLogger(__name__)

__all__ = ["build_report", "expected_from_grid", "flat_metrics"]


def expected_from_grid(grid: str) -> list[str]:
    """Evaluate job names of a grid (``evaluate/<dataset>/seed~<s>/<point>``)."""
    from reflowma.infra.runs import expected_jobs

    return expected_jobs(grid, "evaluate")


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path, fsync=False) as tmp:
        tmp.write_text(text)


def _missing(runs, expected) -> list[dict]:
    pl = C.plan(runs, expected)
    jobs = list(pl["job"])
    if expected is None:  # every job seen, all stages
        jobs = sorted(set(runs["job"].dropna()), key=C.job_key)
    miss = missing_jobs(runs, jobs)
    status = dict(zip(pl["job"], pl["status"], strict=True))
    out = []
    for r in miss.itertuples():
        row = {"job": r.job, "status": r.status,
               "run_id": None if r.run_id is None or r.run_id != r.run_id else int(r.run_id),
               "error": r.error if isinstance(r.error, str) else None}
        if r.status == "none" and status.get(r.job, "none") != "none":
            row["upstream"] = status[r.job]  # e.g. "FAILED (reflow)"
        out.append(row)
    return out


def build_report(runs_dir, out_dir, expected_jobs=None, figures: bool = True,
                 keep_going_figures: bool = False, counterexample: dict | None = None,
                 counterexample_source: str = "") -> dict:
    """Write the report under ``out_dir``; returns {'tables', 'figures', 'metrics', 'missing',
    'n_tables', 'claims'} (file paths, the flat metrics, the missing jobs, the number of
    tables, the verdicts). ``counterexample``: Theorem 1's closed-form result for claims.md. A
    figure function that fails raises (after the tables are written) unless
    ``keep_going_figures``."""
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    runs = load_runs(runs_dir)
    expected = list(expected_jobs) if expected_jobs is not None else None
    tables = T.build_tables(runs, expected)
    tdir = out_dir / "tables"
    written = []
    md_all, cells = [], {}
    for t in tables:
        stem = R.file_stem(t.name)
        md, tex, csv = R.to_markdown(t), R.to_latex(t), R.to_csv(t)
        for ext, text in (("md", md), ("tex", tex), ("csv", csv)):
            _write_text(tdir / f"{stem}.{ext}", text)
            written.append(tdir / f"{stem}.{ext}")
        md_all.append(md)
        cells.update(t.cells)
    missing = _missing(runs, expected)
    head = [f"# reflowma report\n\nRuns: `{runs_dir}` ({len(runs)} records, "
            f"{int((runs['status'] == 'COMPLETED').sum())} completed).\n"]
    if missing:
        head.append(f"**{len(missing)} expected job(s) without a completed run** "
                    "(see missing.json):\n\n" + "".join(
                        f"- `{m['job']}`: "
                        + (m["status"] if m["status"] != "none" else "never run")
                        + (f" ({m['upstream']})" if m.get("upstream") else "")
                        + (f" — {m['error']}" if m.get("error") else "") + "\n"
                        for m in missing[:50]))
    methods = {}  # every method of a dataset, over all its tables (its teacher table has none)
    for t in tables:
        if not t.effects:
            for m in t.frame.loc[t.frame["kind"] == "method", "method"]:
                if m not in methods.setdefault(t.dataset, []):
                    methods[t.dataset].append(m)
    from reflowma.report import equal_time as ET

    eqt = ET.comparisons(runs, methods)  # grids with equal_time: true
    if eqt:
        ef = ET.frame(eqt)
        for ds in C.unique(ef["dataset"]):
            f = ef[ef["dataset"] == ds]
            stem = R.file_stem(f"{ds}/equal_time")
            md = ET.markdown(ds, f)
            _write_text(tdir / f"{stem}.md", md)
            _write_text(tdir / f"{stem}.csv", f.to_csv(index=False))
            written += [tdir / f"{stem}.md", tdir / f"{stem}.csv"]
            md_all.append(md)
        write_json(out_dir / "equal_time.json", _jsonable({"rule": ET.RULE, "points": eqt}))
    from reflowma.report import logdet as LDG

    for ds, t, md in LDG.tables(runs):  # evaluations with evaluate.logdet.enabled
        stem = R.file_stem(f"{ds}/logdet")
        _write_text(tdir / f"{stem}.md", md)
        _write_text(tdir / f"{stem}.csv", t.to_csv(index=False))
        written += [tdir / f"{stem}.md", tdir / f"{stem}.csv"]
        md_all.append(md)
    commits = sorted({c for c in runs["commit"].dropna()})
    if commits:
        dirty = bool(runs["dirty"].fillna(False).astype(bool).any())
        head.append(f"Commits: {', '.join(c[:10] for c in commits)}"
                    f"{' (some runs from a dirty tree)' if dirty else ''}.\n")
    _write_text(tdir / "all.md", "\n".join(head) + "\n" + "\n".join(md_all))
    _write_text(tdir / "all.csv", R.concat_csv(tables))
    write_json(tdir / "cells.json", cells)
    written += [tdir / "all.md", tdir / "all.csv", tdir / "cells.json"]
    flat = flat_metrics(tables)
    write_json(out_dir / "metrics.json", flat)
    write_json(out_dir / "summary.json", R.headline(tables, len(missing)))  # DVC's metrics
    _write_text(out_dir / "plots" / "nfe.csv", R.plot_data(tables))
    write_json(out_dir / "missing.json", missing)
    from reflowma.report import claims as CL

    cl = CL.build(runs, methods, counterexample, counterexample_source)
    write_json(out_dir / "claims.json", _jsonable(cl))
    _write_text(out_dir / "claims.md", CL.markdown(
        cl, {ds: f"tm_marginal_{R.file_stem(ds)}" for ds in methods} if figures else {}))
    verdicts = {"theorem1": cl["theorem1"]["verdict"], "theorem2": cl["theorem2"]["verdict"],
                **{f"regularizer_{k}": v["verdict"] for k, v in cl["regularizer"].items()}}
    figs = []
    if figures:
        from reflowma.report import figures as F

        stems = layout.expected_stems(expected) if expected is not None else ()
        figs = F.make_figures(runs, tables, out_dir / "figures", stems,
                              keep_going=keep_going_figures)
    return {"tables": [str(p) for p in written], "figures": [str(p) for p in figs],
            "metrics": flat, "missing": missing, "n_tables": len(tables), "claims": verdicts}


def _jsonable(obj):
    """NaN -> None, numpy scalars -> Python (strict JSON)."""
    import math

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, str):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
