"""``build_report``: every file of a report, from the run records (the package docstring lists
them). Every file is written atomically. ``expected_jobs`` (evaluate job names, e.g. from the
grid) makes missing grid points visible as rows and fixes the figures written (placeholders
where data are missing); without it the jobs seen in the records are expected."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from reflowma.infra.runs import expected_jobs as grid_jobs
from reflowma.infra.runs import load_runs, missing_jobs
from reflowma.infra.storage.atomic import atomic_path, write_json
from reflowma.report import (
    claims,
    claims_markdown,
    collect,
    equal_time,
    layout,
    logdet,
    markdown,
    render,
    webpage,
)
from reflowma.report import tables as result_tables

log = logging.getLogger(__name__)

MISSING_LISTED = 50  # expected jobs named in all.md's head (missing.json has them all)


def expected_from_grid(grid: str) -> list[str]:
    """Evaluate job names of a grid (``evaluate/<dataset>/seed~<s>/<point>``)."""
    return grid_jobs(grid, "evaluate")


def write_text(path: Path, text: str) -> None:
    with atomic_path(path, fsync=False) as tmp:
        tmp.write_text(text)


def jsonable(obj):
    """NaN and infinities -> None, numpy scalars -> Python (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, str):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def missing(runs, expected) -> list[dict]:
    """Expected evaluate jobs without a completed run: status, run id, error and, for a job
    never run, the upstream stage that did not complete."""
    pl = collect.plan(runs, expected)
    jobs = list(pl["job"])
    if expected is None:  # every job seen, all stages
        jobs = sorted(set(runs["job"].dropna()), key=collect.job_key)
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


def head(runs, runs_dir, miss: list[dict]) -> str:
    """all.md's first lines: the records read, the jobs missing, the commits."""
    out = [f"# reflowma report\n\nRuns: `{runs_dir}` ({len(runs)} records, "
           f"{int((runs['status'] == 'COMPLETED').sum())} completed).\n"]
    if miss:
        out.append(f"**{len(miss)} expected job(s) without a completed run** "
                   "(see missing.json):\n\n" + markdown.bullets(
                       f"`{m['job']}`: "
                       + (m["status"] if m["status"] != "none" else "never run")
                       + (f" ({m['upstream']})" if m.get("upstream") else "")
                       + (f" — {m['error']}" if m.get("error") else "")
                       for m in miss[:MISSING_LISTED]))
    commits = sorted({c for c in runs["commit"].dropna()})
    if commits:
        dirty = bool(runs["dirty"].fillna(False).astype(bool).any())
        out.append(f"Commits: {', '.join(c[:10] for c in commits)}"
                   f"{' (some runs from a dirty tree)' if dirty else ''}.\n")
    return markdown.wrap_prose("\n".join(out))


def methods_by_dataset(tables) -> dict:
    """Every method of each dataset, over all its tables (its teacher table has none)."""
    methods = {}
    for t in tables:
        if not t.effects:
            for m in t.frame.loc[t.frame["kind"] == "method", "method"]:
                if m not in methods.setdefault(t.dataset, []):
                    methods[t.dataset].append(m)
    return methods


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
    tables = result_tables.build_tables(runs, expected)
    tdir = out_dir / "tables"
    written, md_all, cells = [], [], {}

    def put(path: Path, text: str) -> None:
        write_text(path, text)
        written.append(path)

    def section(name: str, md: str, csv: str) -> None:
        """A table of its own module: ``tables/<stem>.{md,csv}``, and its Markdown in all.md."""
        stem = layout.file_stem(name)
        put(tdir / f"{stem}.md", md)
        put(tdir / f"{stem}.csv", csv)
        md_all.append(md)

    for t in tables:
        stem = layout.file_stem(t.name)
        md = render.to_markdown(t)
        for ext, text in (("md", md), ("tex", render.to_latex(t)), ("csv", render.to_csv(t))):
            put(tdir / f"{stem}.{ext}", text)
        md_all.append(md)
        cells.update(t.cells)
    miss = missing(runs, expected)
    methods = methods_by_dataset(tables)
    # Tables of their own modules, after the result tables: each dataset's goes through
    # section(); a new table module plugs in here the same way.
    comparisons = equal_time.comparisons(runs, methods)  # grids with equal_time: true
    if comparisons:
        ef = equal_time.frame(comparisons)
        for ds in collect.unique(ef["dataset"]):
            f = ef[ef["dataset"] == ds]
            section(f"{ds}/equal_time", equal_time.markdown_text(ds, f), f.to_csv(index=False))
        write_json(out_dir / "equal_time.json",
                   jsonable({"rule": equal_time.RULE, "points": comparisons}))
    for ds, t, md in logdet.tables(runs):  # evaluations with evaluate.logdet.enabled
        section(f"{ds}/logdet", md, t.to_csv(index=False))
    all_md = head(runs, runs_dir, miss) + "\n" + "\n".join(md_all)
    put(tdir / "all.md", all_md)
    put(tdir / "all.html", webpage.page(all_md, "reflowma report: tables"))
    put(tdir / "all.csv", render.concat_csv(tables))
    write_json(tdir / "cells.json", cells)
    written.append(tdir / "cells.json")
    flat = render.flat_metrics(tables)
    write_json(out_dir / "metrics.json", flat)
    write_json(out_dir / "summary.json", render.headline(tables, len(miss)))  # DVC's metrics
    write_text(out_dir / "plots" / "nfe.csv", render.plot_data(tables))
    write_json(out_dir / "missing.json", miss)
    cl = claims.build(runs, methods, counterexample, counterexample_source)
    write_json(out_dir / "claims.json", jsonable(cl))
    claims_md = claims_markdown.markdown_text(
        cl, {ds: f"tm_marginal_{layout.file_stem(ds)}" for ds in methods} if figures else {})
    write_text(out_dir / "claims.md", claims_md)
    write_text(out_dir / "claims.html", webpage.page(claims_md, "reflowma report: claims"))
    verdicts = {"theorem1": cl["theorem1"]["verdict"], "theorem2": cl["theorem2"]["verdict"],
                **{f"regularizer_{k}": v["verdict"] for k, v in cl["regularizer"].items()}}
    figs = []
    if figures:
        # matplotlib (about 1 s): only when figures are drawn (reverdict imports this module
        # and draws none)
        from reflowma.report import figures as report_figures

        stems = (layout.expected_stems(expected, collect.evaluate_configs(runs))
                 if expected is not None else None)
        figs = report_figures.make_figures(runs, tables, out_dir / "figures", stems,
                                           keep_going=keep_going_figures)
    return {"tables": [str(p) for p in written], "figures": [str(p) for p in figs],
            "metrics": flat, "missing": miss, "n_tables": len(tables), "claims": verdicts}
