"""Collecting: run records -> long-form rows (pure reading; no statistics, no models).

* ``eval_long``: every value of every metric of ``reflowma.evaluation.spec`` in the latest
  completed evaluate runs, one row per (dataset, method, seed, nfe, metric);
* ``plan``: every expected (dataset, method, seed) and its status;
* ``training_long``: the training curves of the reflow and teacher runs;
* ``samples``: the sample sets an evaluate run saved as its ``samples.npz`` artifact;
* ``image_grids``: the PNG sample grids an evaluate run of image data attached.

A *method* is a grid point without the seed (``K~2/lam~0.1/ws~1.0``); reference rows carry
the names of ``spec.REFERENCES`` instead.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from reflowma.evaluation import spec
from reflowma.infra.runs import latest, latest_completed, parse_job

LONG = ["dataset", "method", "seed", "run_id", "nfe", "metric", "value"]
SAMPLES_ARTIFACT = "evaluate.samples.npz"  # tracking names attachments <stage>.<file name>


def num(x) -> float:
    """``float(x)``, NaN for None, non-numbers and non-finite values."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return np.nan
    return x if math.isfinite(x) else np.nan


def unique(values) -> list:
    """The distinct values in first-seen order."""
    return list(dict.fromkeys(values))


def evaluations(runs: pd.DataFrame) -> pd.DataFrame:
    """The latest completed evaluate run of each grid job."""
    ev = latest_completed(runs, "evaluate")
    return ev[ev["point"].notna() & ev["dataset"].notna()]


def evaluate_configs(runs: pd.DataFrame) -> dict:
    """dataset -> the validated config of one of its completed evaluate runs (the lowest run
    id): what ``layout.expected_figures`` reads (data section, audit)."""
    out = {}
    for r in evaluations(runs).sort_values("run_id").itertuples():
        if isinstance(r.config, dict):
            out.setdefault(r.dataset, r.config)
    return out


def eval_long(ev: pd.DataFrame, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Long form of evaluate results: dataset, method, seed, run_id, nfe, metric, value.

    ``nfe`` is -1 for values that do not depend on the sampler's NFE. Reference rows (teacher
    Euler, ceiling, data floor, the teacher itself) come from one evaluate run per seed (the
    lowest run id): they do not depend on the student. Metrics with ``record == "reflow"``
    are read from the latest completed reflow run of the same grid job in ``runs`` (``run_id``
    stays the evaluate run's).
    """
    trained = {}
    if runs is not None:
        for r in latest_completed(runs, "reflow").itertuples():
            if isinstance(r.result, dict) and r.point is not None:
                trained[(r.dataset, int(r.seed), r.point)] = r.result
    rows = []
    refs_done = set()
    for _, r in ev.sort_values("run_id").iterrows():
        res = r["result"] if isinstance(r["result"], dict) else {}
        records = {"evaluate": res,
                   "reflow": trained.get((r["dataset"], int(r["seed"]), r["point"]), {})}
        kinds = [(spec.STUDENT, r["point"])]
        key = (r["dataset"], int(r["seed"]))
        if key not in refs_done and any(res.get(k) for k in ("teacher_euler", "teacher_ceiling",
                                                             "data_floor", "audit")):
            refs_done.add(key)
            kinds += [(ref, ref) for ref in spec.REFERENCES]
        for _, m in spec.METRICS.items():
            for kind, method in kinds:
                for nfe, col, value in spec.values(records[m.record], m, kind):
                    v = num(value)
                    if not np.isnan(v):
                        rows.append({"dataset": r["dataset"], "method": method,
                                     "seed": int(r["seed"]), "run_id": int(r["run_id"]),
                                     "nfe": nfe, "metric": col, "value": v})
    return pd.DataFrame(rows, columns=LONG)


def by_seed(long: pd.DataFrame, method: str, nfe: int, metric: str) -> tuple[dict, dict]:
    """``({seed: value}, {seed: run_id})`` of one method's metric in ``eval_long`` rows at one
    NFE, per-run values (``nfe`` -1) included."""
    sel = long[(long["method"] == method) & (long["metric"] == metric)
               & (long["nfe"].isin([nfe, -1]))]
    return ({int(r.seed): r.value for r in sel.itertuples()},
            {int(r.seed): int(r.run_id) for r in sel.itertuples()})


def job_key(job: str):
    """Sort key of a job name: numeric segment values as numbers."""
    def part(v):
        try:
            return (0, float(v), "")
        except ValueError:
            return (1, 0.0, v)
    return [part(seg.split("~", 1)[-1]) for seg in job.split("/")]


def plan(runs: pd.DataFrame, expected_jobs=None) -> pd.DataFrame:
    """Every (dataset, method, seed) that should have an evaluation, with its status.

    ``expected_jobs`` (evaluate job names, e.g. from the grid) fixes the rows and their order;
    without it, every evaluate job seen in the records (any status) is expected. The status is
    that of the latest run of the evaluate job (``COMPLETED`` if any run completed); for an
    evaluate job never run, the first upstream job (reflow, couplings, teacher) that did not
    complete is named: ``FAILED (reflow)``.
    """
    if expected_jobs is None:
        jobs = runs.loc[(runs["stage"] == "evaluate") & runs["job"].notna()]
        expected_jobs = sorted(set(jobs["job"]) - {j for j in jobs["job"] if ":" in j},
                               key=job_key)
    done = set(runs.loc[runs["status"] == "COMPLETED", "job"].dropna())
    last = latest(runs).set_index("job")["status"].to_dict()
    rows = []
    for job in expected_jobs:
        p = parse_job(job)
        if job in done:
            status = "COMPLETED"
        elif job in last:
            status = last[job]
        else:
            status = "none"
            ds, s, pt = p["dataset"], p["seed"], p["point"]
            for up in (f"reflow/{ds}/seed~{s}/{pt}", f"couplings/{ds}/seed~{s}",
                       f"teacher/{ds}/seed~{s}"):
                if up not in done and up in last:
                    status = f"{last[up]} ({up.split('/', 1)[0]})"
                    break
        rows.append({"job": job, "dataset": p["dataset"], "method": p["point"],
                     "seed": p["seed"], "status": status})
    return pd.DataFrame(rows, columns=["job", "dataset", "method", "seed", "status"])


def method_status(pl: pd.DataFrame) -> str:
    """One word for a method's seeds: ok, partial 1/2 (seed~1: FAILED), missing, failed, ..."""
    ok = pl["status"] == "COMPLETED"
    if ok.all():
        return "ok"
    if not ok.any():
        bad = sorted(set(pl["status"]))
        if bad == ["none"]:
            return "missing"
        return "; ".join(s.lower() for s in bad)
    why = ", ".join(f"seed~{r.seed}: {r.status.lower()}" for r in pl[~ok].itertuples())
    return f"partial {int(ok.sum())}/{len(pl)} ({why})"


def training_long(runs: pd.DataFrame) -> pd.DataFrame:
    """Training curves (``train.*`` Sacred metrics but the learning rate), one row per step."""
    rows = []
    for stage in ("reflow", "teacher"):
        for r in latest_completed(runs, stage).itertuples():
            for name, series in (r.metrics or {}).items():
                if not name.startswith("train.") or name == "train.lr":
                    continue
                steps, vals = series.get("steps", []), series.get("values", [])
                for s, v in zip(steps, vals, strict=False):
                    rows.append({"stage": stage, "dataset": r.dataset,
                                 "method": r.point if stage == "reflow" else "teacher",
                                 "seed": r.seed, "metric": name.split(".", 1)[1],
                                 "step": int(s), "value": num(v), "run_id": r.run_id})
    return pd.DataFrame(rows, columns=["stage", "dataset", "method", "seed", "metric", "step",
                                       "value", "run_id"])


def warm_start_step(runs: pd.DataFrame, dataset: str):
    """The step where the regularizer switches on, if the same for all regularized students
    of the dataset, else None."""
    done = latest_completed(runs, "reflow")
    steps = set()
    for r in done[done["dataset"] == dataset].itertuples():
        reg, train = (r.config or {}).get("regularizer") or {}, (r.config or {}).get("train") or {}
        if num(reg.get("weight")) > 0 and "steps" in train:
            steps.add(int(float(reg.get("warm_start") or 0.0) * int(train["steps"])))
    return steps.pop() if len(steps) == 1 else None


def samples(runs: pd.DataFrame, dataset: str) -> dict:
    """The saved sample sets of the dataset's lowest seed: ``{"seed", "runs": {method:
    {npz arrays}}, "missing": [why, ...]}``. Read from each evaluate run's record folder
    (``<runs>/<id>/evaluate.samples.npz``); a run without it is named in ``missing``."""
    ev = evaluations(runs)
    ev = ev[ev["dataset"] == dataset]
    out = {"seed": None, "runs": {}, "missing": []}
    if ev.empty:
        out["missing"].append(f"no completed evaluate run of {dataset}")
        return out
    seed = int(ev["seed"].min())
    out["seed"] = seed
    for r in ev[ev["seed"] == seed].itertuples():
        path = Path(r.run_dir) / SAMPLES_ARTIFACT
        if not path.is_file():
            out["missing"].append(f"run {r.run_id} ({r.job}) has no {SAMPLES_ARTIFACT}")
            continue
        with np.load(path) as f:
            out["runs"][r.point] = {k: f[k] for k in f.files}
    return out


GRID_PREFIX = "evaluate.grid_"  # evaluate's PNG grids, as attached: evaluate.grid_<what>.png


def image_grids(runs: pd.DataFrame, dataset: str) -> dict:
    """The PNG sample grids of the dataset's lowest seed, as attached to the evaluate runs:
    ``{"seed", "refs": {"data", "teacher", "teacher_euler_nfe<n>": path}, "runs": {method:
    {nfe: path}}, "missing": [why, ...]}`` (the reference grids from the lowest run id: they
    do not depend on the student). Paths only: the figure reads the images."""
    ev = evaluations(runs)
    ev = ev[ev["dataset"] == dataset]
    out = {"seed": None, "refs": {}, "runs": {}, "missing": []}
    if ev.empty:
        out["missing"].append(f"no completed evaluate run of {dataset}")
        return out
    seed = int(ev["seed"].min())
    out["seed"] = seed
    for r in ev[ev["seed"] == seed].sort_values("run_id").itertuples():
        found = {p.name[len(GRID_PREFIX):-len(".png")]: p
                 for p in Path(r.run_dir).glob(f"{GRID_PREFIX}*.png")}
        if not found:
            out["missing"].append(f"run {r.run_id} ({r.job}) has no {GRID_PREFIX}*.png")
            continue
        for name, path in found.items():
            if name.startswith("student_nfe"):
                out["runs"].setdefault(r.point, {})[int(name[len("student_nfe"):])] = path
            else:
                out["refs"].setdefault(name, path)
    return out
