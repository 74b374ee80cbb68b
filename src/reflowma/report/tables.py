"""Result tables from the long-form rows of ``report.collect`` (pure: DataFrames in and out).

Per dataset and NFE the methods are rows and the metrics (``spec.in_table("main")``) columns;
a cell is the mean ± std over seeds of the latest completed evaluate run of each (dataset,
seed, point), with n, a 95% t-interval, the best mean of each column marked (lowest or
highest, as the spec says) and a paired t-test against the *baseline*: the same point with
``lam`` 0 (no test where the grid has no ``lam`` axis). Missing grid points stay as rows whose
status says why (``missing``, ``failed``, ``failed (reflow)``, ...). References (teacher Euler
at the same NFE, the teacher ceiling, the data floor) are extra rows. Also per dataset: a
local per-window audit table, a teacher table (metrics of the teacher alone) and an effects
table (regularizer vs its lam-0 control, next to ``params/references/prototype_2d.yaml``).
``cells`` maps each cell to the run ids it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd

from reflowma.evaluation import spec
from reflowma.infra.runs import parse_point
from reflowma.report.collect import (
    by_seed,
    eval_long,
    evaluations,
    method_status,
    num,
    plan,
    unique,
)
from reflowma.report.stats import baseline_of, json_stats, none_if_nan, paired_test, summarize

STATS = ("mean", "std", "n", "ci_lo", "ci_hi", "p", "best")
REFERENCE_FILE = "references/prototype_2d.yaml"


@lru_cache(maxsize=1)
def prototype() -> dict:
    """The prototype's findings: ``{"source": str, "effects": {metric: {"K>=2"|"K=1":
    [low %, high %] | "+"}}}`` from ``params/references/prototype_2d.yaml``."""
    from reflowma.infra.config import load_yaml, params_dir

    return load_yaml(params_dir() / REFERENCE_FILE, "references")


@dataclass
class Table:
    """One results table: ``frame`` (numeric; one row per method/reference, columns
    ``method, kind, status, n_seeds, baseline`` and ``<metric>.<stat>``); ``nfe`` -1 for
    tables of per-run values, None for the effects table."""

    name: str
    title: str
    dataset: str
    nfe: int | None
    metrics: list
    frame: pd.DataFrame
    cells: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    @property
    def effects(self) -> bool:
        return self.name.endswith("/effects")


def _better(metric: str) -> str:
    m, _ = spec.lookup(metric)
    return m.better if m is not None else "lower"


def make_table(name, title, dataset, nfe, metrics, methods, statuses, long, refs=(),
               test=True) -> Table:
    rows, cells = [], {}
    all_methods = list(methods)
    for kind, method_list in (("method", methods), ("reference", refs)):
        for m in method_list:
            row = {"method": m, "kind": kind, "status": statuses.get(m, "ok")}
            base = baseline_of(m, all_methods) if (kind == "method" and test) else None
            row["baseline"] = base
            seeds_seen = set()
            for metric in metrics:
                vals, ids = by_seed(long, m, nfe, metric)
                s = summarize(list(vals.values()))
                seeds_seen |= set(vals)
                p, common = np.nan, []
                if base is not None:
                    bvals, bids = by_seed(long, base, nfe, metric)
                    p, common = paired_test(vals, bvals)
                row.update({f"{metric}.{k}": v for k, v in s.items()})
                row[f"{metric}.p"] = p
                if vals:
                    cell = {"run_ids": [ids[k] for k in sorted(vals)], "seeds": sorted(vals),
                            "values": [vals[k] for k in sorted(vals)], **json_stats(s)}
                    if base is not None:
                        cell.update(baseline=base, p_value=none_if_nan(p), paired_seeds=common,
                                    baseline_run_ids=[bids[k] for k in common])
                    cells[f"{name}/{m}/{metric}"] = cell
            row["n_seeds"] = len(seeds_seen)
            rows.append(row)
    frame = pd.DataFrame(rows)
    for metric in metrics:
        is_m = frame["kind"] == "method"
        col = frame.loc[is_m, f"{metric}.mean"].astype(float)
        # no mark where every method has the same value (e.g. no fold anywhere)
        best = np.nan
        if col.dropna().nunique() > 1:
            best = col.min() if _better(metric) == "lower" else col.max()
        frame[f"{metric}.best"] = is_m & (frame[f"{metric}.mean"] == best)
    lead = ["method", "kind", "status", "n_seeds", "baseline"]
    cols = lead + [f"{m}.{k}" for m in metrics for k in STATS]
    return Table(name, title, dataset, nfe, list(metrics), frame.reindex(columns=cols), cells)


def _spec_notes(metrics) -> list[str]:
    return unique(m.note for m in (spec.lookup(c)[0] for c in metrics) if m and m.note)


def _notes(has_lam, metrics):
    notes = ["Cells: mean ± std over seeds [95% t-interval]; n = seeds with a value. "
             "Bold: best mean of the column among the methods (lowest, or highest where "
             "higher is better)."]
    if has_lam:
        notes.append("p: two-sided paired t-test (scipy.stats.ttest_rel over common seeds) "
                     "against the same point with lam 0.")
    notes += _spec_notes(metrics)
    notes.append("Per-run metrics (held-out TM loss, Σ local KL, s/step) do not depend on the "
                 "NFE.")
    return notes


def build_tables(runs: pd.DataFrame, expected_jobs=None) -> list[Table]:
    """Per dataset: one main table per NFE, a local-audit table and a teacher table (where
    their data are present) and the effects table (if the grid has a lam axis)."""
    long = eval_long(evaluations(runs), runs)
    pl = plan(runs, expected_jobs)
    main = [m.key for m in spec.in_table("main")]
    tables = []
    for dataset in unique(pl["dataset"]):
        pld = pl[pl["dataset"] == dataset]
        methods = unique(pld["method"])
        statuses = {m: method_status(pld[pld["method"] == m]) for m in methods}
        ld = long[long["dataset"] == dataset]
        present = set(ld["metric"])
        student_present = set(ld.loc[ld["method"].isin(methods), "metric"])
        metrics = [m for m in main if m in student_present] or main[:4]
        nfes = sorted({int(n) for n in ld["nfe"] if n >= 0})
        refs = [r for r in (spec.TEACHER_EULER, spec.TEACHER_CEILING, spec.DATA_FLOOR)
                if r in set(ld["method"])]
        has_lam = any("lam" in parse_point(m) for m in methods)
        for nfe in nfes:
            t = make_table(f"{dataset}/nfe~{nfe}", f"{dataset}, NFE {nfe}", dataset, nfe,
                           metrics, methods, statuses, ld, refs, test=has_lam)
            t.notes = _notes(has_lam, metrics)
            tables.append(t)
        if not nfes:  # nothing completed: still list every expected point and why it is absent
            t = make_table(f"{dataset}/status", f"{dataset}: no completed evaluation", dataset,
                           -1, [], methods, statuses, ld, test=False)
            t.notes = ["No evaluate run of this dataset completed; see missing.json."]
            tables.append(t)
            continue
        local = _columns(spec.in_table("local"), present)
        if any(c != m for c, m in local):  # per-window columns present
            lm = [c for c, _ in local]
            t = make_table(f"{dataset}/local", f"{dataset}, local per-window audit (NFE = K)",
                           dataset, -1, lm, methods, statuses, ld, test=has_lam)
            t.notes = ["local KL window k: KL of the student's step on window k (teacher "
                       "states at t_k) against the teacher marginal at t_(k+1), nats.",
                       "TV(q_1,p_1) <= sum_k TV_k <= sum_k sqrt(KL_k/2) (Pinsker); the sum of "
                       "local KLs does not bound the final KL."]
            tables.append(t)
        teacher = [c for c, _ in _columns(spec.in_table("teacher"), present)]
        if teacher:
            t = make_table(f"{dataset}/teacher", f"{dataset}, the teacher alone", dataset, -1,
                           teacher, [], {}, ld, [spec.TEACHER], test=False)
            t.notes = ["Cells: mean ± std over seeds [95% t-interval]."] + _spec_notes(teacher)
            tables.append(t)
        if has_lam:
            tables.append(effects_table(dataset, methods, statuses, ld))
    return tables


def _columns(metrics, present) -> list[tuple[str, str]]:
    """(column, metric key) of these metrics among the present columns, in spec order, the
    derived columns (per window / per t) sorted by their index."""
    out = []
    for m in metrics:
        if m.per in ("window", "t"):
            cols = [c for c in present if spec.lookup(c)[0] is m]
            out += [(c, m.key) for c in sorted(cols, key=lambda c: num(c.rsplit("_", 1)[1][1:]))]
        elif m.key in present:
            out.append((m.key, m.key))
    return out


def effects_table(dataset: str, methods, statuses, ld: pd.DataFrame) -> Table:
    """'Expected results': relative change (%) of each metric of a regularized method against
    its lam-0 control, paired over seeds, at the method's own NFE = K, next to what the
    prototype found (``prototype()``)."""
    ref = prototype()
    effects = ref["effects"]
    metrics = [m for m in effects if m in set(ld["metric"])]
    rows, cells = [], {}
    for m in methods:
        base = baseline_of(m, methods)
        if base is None:
            continue
        K = int(num(parse_point(m).get("K", 1)) or 1)
        row = {"method": m, "kind": "method", "status": statuses.get(m, "ok"), "baseline": base}
        for metric in metrics:
            a, aid = by_seed(ld, m, K, metric)
            b, bid = by_seed(ld, base, K, metric)
            common = sorted(s for s in set(a) & set(b) if b[s] != 0)
            rel = [100.0 * (a[s] - b[s]) / abs(b[s]) for s in common]
            s = summarize(rel)
            p, _ = paired_test(a, b)
            row.update({f"{metric}.{k}": v for k, v in s.items()})
            row[f"{metric}.p"] = p
            exp = effects[metric].get("K>=2" if K >= 2 else "K=1")
            row[f"{metric}.expected"] = _expected_text(exp)
            row[f"{metric}.agrees"] = _agrees(exp, s)
            if common:
                cells[f"{dataset}/effects/{m}/{metric}"] = {
                    "run_ids": [aid[x] for x in common], "baseline": base,
                    "baseline_run_ids": [bid[x] for x in common], "seeds": common,
                    "values_pct": rel, "nfe": K, "p_value": none_if_nan(p), **json_stats(s)}
        rows.append(row)
    cols = ["method", "kind", "status", "baseline"] + [
        f"{m}.{k}" for m in metrics
        for k in ("mean", "std", "n", "ci_lo", "ci_hi", "p", "expected", "agrees")]
    frame = pd.DataFrame(rows, columns=cols)
    t = Table(f"{dataset}/effects", f"{dataset}, regularizer vs lam-0 control at NFE = K "
              "(% change; expected results)", dataset, None, metrics, frame, cells)
    t.notes = ["Cells: mean ± std over seeds of 100·(method − control)/|control| [95% "
               "t-interval], at the student's own NFE = K; p: paired t-test on the raw values.",
               f"expected: what {ref['source']} found (params/{REFERENCE_FILE}) — orientation "
               "for healthy output, not a target; then yes (mean in that range), same sign, "
               "no, or inconclusive (the 95% interval contains 0)."]
    return t


def _expected_text(exp) -> str:
    if exp is None:
        return ""
    if exp == "+":
        return "worse (> 0%)"
    return f"{exp[0]:+g}% to {exp[1]:+g}%"


def _agrees(exp, s: dict) -> str:
    """yes (mean in the prototype's range), same sign, no (opposite sign), or inconclusive
    (the 95% interval of the mean change contains 0, or fewer than 2 seeds)."""
    mean = s["mean"]
    if exp is None or np.isnan(mean):
        return ""
    if np.isnan(s["ci_lo"]) or s["ci_lo"] <= 0 <= s["ci_hi"]:
        return "inconclusive"
    if exp == "+":
        return "yes" if mean > 0 else "no"
    lo, hi = exp
    if lo <= mean <= hi:
        return "yes"
    return "same sign" if np.sign(mean) == np.sign(lo) else "no"
