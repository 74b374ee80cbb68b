"""The log-det gap table: how far the regularizer's approximations of ``log|det(I + h J)|`` are
from it on the trained students (the ``logdet`` section of eval.json, written where
``evaluate.logdet.enabled``; ``evaluation.logdet_gap``).

Per dataset, one row per (method, window k): means over seeds of the exact value, of the
first-order ``h tr J`` and its gaps, of one Hutchinson probe's gap and spread, of the truncated
series' gaps (exact traces and one probe), and of the spectral radius of ``hJ`` (the series
converges iff it is < 1) and the folded fraction. Gaps: ``gap_abs = mean |estimate - exact|``
over the fixed points (and probes), ``gap_rel = gap_abs / mean |exact|``.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd

from reflowma.report import collect, markdown

NOTE = ("Per window k (h = 1/K) at the first n test couplings' window starts x ~ p_(t_k): "
        "exact = mean log|det(I + hJ)|; first order = h tr J (the `trace` log-det; `hutchinson` "
        "estimates it); Hutchinson = one Rademacher probe's ε^T hJ ε; series n = "
        "Σ_(k≤n) (−1)^(k+1) tr((hJ)^k)/k (exact traces; 'probe': one probe, as the `series` "
        "log-det estimates it). gap = mean |estimate − exact| over the points (and probes), "
        "in nats; gap % = gap / mean |exact|; probe sd: one probe's spread (an average of P "
        "probes has 1/√P of it); "
        "ρ: spectral radius of hJ (the series converges iff ρ < 1); folded: det(I + hJ) ≤ 0. "
        "Means over seeds.")


def rows(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, method, seed, window) of the evaluate runs with a ``logdet``
    section: the numbers above (NaN where absent) and the run id."""
    out = []
    for r in collect.evaluations(runs).itertuples():
        res = r.result if isinstance(r.result, dict) else {}
        for w in (res.get("logdet") or {}).get("windows", []):
            est = w.get("estimators", {})
            row = {"dataset": r.dataset, "method": r.point, "seed": int(r.seed),
                   "run_id": int(r.run_id), "k": int(w["k"]), "h": collect.num(w.get("h")),
                   "n_points": w.get("n_points"), "exact": collect.num(w.get("exact")),
                   "first_order": collect.num(est.get("first_order", {}).get("mean")),
                   "rho_median": collect.num(w.get("spectral_radius_median")),
                   "rho_ge_1": collect.num(w.get("frac_radius_ge_1")),
                   "folded": collect.num(w.get("folded")),
                   "probe_sd": collect.num(est.get("hutchinson", {}).get("probe_std_exact"))}
            for name, e in est.items():
                row[f"{name}.gap_abs"] = collect.num(e.get("gap_abs"))
                row[f"{name}.gap_rel"] = collect.num(e.get("gap_rel"))
            out.append(row)
    return pd.DataFrame(out)


def _orders(columns) -> list[int]:
    return sorted({int(c[len("series"):].split(".")[0].split("_")[0]) for c in columns
                   if c.startswith("series") and c.endswith(".gap_rel")})


def _mean(g: pd.DataFrame, col: str) -> float:
    return float(np.nanmean(g[col])) if col in g and g[col].notna().any() else np.nan


def table(long: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """The display table of one dataset: means over seeds; gaps in nats and in % of mean
    |exact|."""
    d = long[long["dataset"] == dataset]
    orders = _orders(d.columns)
    out = []
    for (method, k), g in d.groupby(["method", "k"], sort=False):
        m = partial(_mean, g)
        row = {"method": method, "window": int(k), "h": m("h"), "seeds": len(g),
               "exact": m("exact"), "h tr J": m("first_order"),
               "first-order gap": m("first_order.gap_abs"),
               "first-order gap %": 100 * m("first_order.gap_rel"),
               "Hutchinson gap": m("hutchinson.gap_abs"),
               "Hutchinson gap %": 100 * m("hutchinson.gap_rel"), "probe sd": m("probe_sd")}
        for o in orders:
            row[f"series {o} gap"] = m(f"series{o}.gap_abs")
            row[f"series {o} gap %"] = 100 * m(f"series{o}.gap_rel")
            row[f"series {o} probe gap %"] = 100 * m(f"series{o}_hutchinson.gap_rel")
        row.update({"ρ median": m("rho_median"), "ρ ≥ 1": m("rho_ge_1"),
                    "folded": m("folded"),
                    "run ids": ", ".join(str(i) for i in sorted(g["run_id"]))})
        out.append(row)
    return pd.DataFrame(sorted(out, key=lambda r: (collect.job_key(r["method"]), r["window"])))


def _cell(v) -> str:
    if isinstance(v, float | np.floating):
        return "–" if np.isnan(v) else f"{v:.4g}"
    return str(v)


def short_methods(methods: list[str]) -> list[str]:
    """Grid point names without the ``alias~value`` segments every one of them shares."""
    parts = [m.split("/") for m in methods]
    shared = set.intersection(*(set(p) for p in parts)) if parts else set()
    return ["/".join(x for x in p if x not in shared) or m
            for p, m in zip(parts, methods, strict=True)]


def markdown_text(dataset: str, t: pd.DataFrame) -> str:
    """The relative gaps and the spectrum, split to ``markdown.WIDTH`` columns (method and
    window repeated in each part), and its note; the gaps in nats and the probe-series gaps are
    in the CSV."""
    shown = [c for c in t.columns if c in ("window", "seeds", "exact", "h tr J", "probe sd",
                                           "ρ median", "ρ ≥ 1", "folded", "run ids")
             or (c.endswith("gap %") and "probe" not in c)]
    common = sorted(set.intersection(*(set(m.split("/")) for m in t["method"])))
    rows = [[_cell(v) for v in r] for r in zip(short_methods(list(t["method"])),
                                                *(t[c] for c in shown), strict=True)]
    note = NOTE + (f" Every method here has {'/'.join(common)}." if common else "") + (
        " The gaps in nats and the one-probe series gaps: the CSV.")
    return (markdown.table(["method", *shown], rows, keys=2,
                           title=f"### {dataset}, log-det of the window map: exact vs its "
                                 "approximations")
            + "\n" + markdown.bullets([note]))


def tables(runs: pd.DataFrame) -> list[tuple[str, pd.DataFrame, str]]:
    """``(dataset, table, markdown)`` per dataset whose evaluations have log-det diagnostics."""
    long = rows(runs)
    if long.empty:
        return []
    return [(ds, t, markdown_text(ds, t)) for ds in collect.unique(long["dataset"])
            for t in [table(long, ds)]]
