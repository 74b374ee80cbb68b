"""Result tables from the run records (pure: DataFrames in, DataFrames and text out).

A *method* is a grid point without the seed (``K~2/lam~0.1/ws~1.0``). Per dataset and NFE the
methods are rows and the metrics columns; a cell is the mean ± std over seeds of the latest
completed evaluate run of each (dataset, seed, point), with n, a 95% t-interval, the best
(lowest) mean of each column marked, and a paired t-test (``scipy.stats.ttest_rel`` over the
seeds both have) against the *baseline*: the same point with ``lam`` 0 (no test where the grid
has no ``lam`` axis). Missing grid points stay in the table as rows whose status says why
(``missing``, ``failed``, ``failed (reflow)``, ...). The teacher (Euler at the same NFE, and the
ceiling) is added as reference rows. ``cells`` maps each cell to the run ids it came from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from reflowma.infra.runs import latest_completed, parse_point

# name -> (label, unit); lower is better for all of them.
METRICS = {
    "w2_paired_teacher": ("W2 to teacher (paired)", "data units"),
    "w2_data": ("W2 to data", "data units"),
    "mmd_data": ("MMD² to data", "RBF sum"),
    "mmd_teacher": ("MMD² to teacher", "RBF sum"),
    "kl": ("KL(student‖teacher)", "nats"),
    "kl_knn": ("KL kNN (student‖teacher)", "nats"),
    "tv": ("TV(student, teacher)", ""),
    "local_kl_sum": ("Σ_k local KL_k", "nats"),
    "fold_fraction": ("fold fraction", "fraction of z"),
    "heldout_tm_loss": ("held-out TM loss", "MSE"),
}
MAIN_METRICS = ["w2_paired_teacher", "w2_data", "mmd_data", "mmd_teacher", "kl", "kl_knn", "tv",
                "local_kl_sum", "fold_fraction", "heldout_tm_loss"]
NFE_KEYS = ("w2_paired_teacher", "w2_data", "mmd_data", "mmd_teacher", "fold_fraction",
            "straightness")
TEACHER_EULER, TEACHER_CEILING = "teacher (Euler)", "teacher (ceiling)"
# DESIGN.md section 4, "What the 2D prototype found": regularizer vs the lam-0 control at the
# student's own NFE (= K). Healthy-output orientation, not targets. (low %, high %) or a sign.
PROTOTYPE = {
    "kl": {"K>=2": (-18.0, -6.0)},
    "w2_paired_teacher": {"K>=2": (-5.0, -1.0), "K=1": "+"},
    "w2_data": {"K>=2": (-5.0, -1.0), "K=1": "+"},
    "mmd_data": {"K>=2": (-5.0, -1.0), "K=1": "+"},
    "heldout_tm_loss": {"K>=2": (2.0, 5.0)},
}


def _num(x):
    try:
        x = float(x)
    except (TypeError, ValueError):
        return np.nan
    return x if math.isfinite(x) else np.nan


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _nfe_sort(keys):
    return sorted(keys, key=lambda k: (int(k) if str(k).isdigit() else 10**9, str(k)))


# --------------------------------------------------------------------------- long form


def eval_long(ev: pd.DataFrame) -> pd.DataFrame:
    """Long form of evaluate results: dataset, method, seed, run_id, nfe, metric, value.

    Per-run metrics (held-out TM loss, sums of local KLs) get ``nfe`` = -1 (they do not depend
    on the sampler's NFE). The teacher references are rows with method ``teacher (Euler)``
    (per NFE) and ``teacher (ceiling)`` (nfe -1), taken from one evaluate run per seed.
    """
    rows = []

    def add(r, method, nfe, metric, value):
        v = _num(value)
        if not np.isnan(v):
            rows.append({"dataset": r["dataset"], "method": method, "seed": int(r["seed"]),
                         "run_id": int(r["run_id"]), "nfe": int(nfe), "metric": metric,
                         "value": v})

    refs_done = set()
    for _, r in ev.sort_values("run_id").iterrows():
        res = r["result"] if isinstance(r["result"], dict) else {}
        method = r["point"]
        for nfe, m in (res.get("nfe") or {}).items():
            for key in NFE_KEYS:
                add(r, method, nfe, key, _get(m, key))
        marg = _get(res, "audit", "marginal", "nfe") or {}
        for nfe, m in marg.items():
            if isinstance(m, dict):
                # exact change-of-variables KL/TV only where no sample folded
                if m.get("valid", True):
                    add(r, method, nfe, "kl", m.get("kl_exact"))
                    add(r, method, nfe, "tv", m.get("tv"))
                add(r, method, nfe, "kl_knn", m.get("kl_knn"))
        add(r, method, -1, "heldout_tm_loss", res.get("heldout_tm_loss"))
        windows = _get(res, "audit", "local", "windows") or []
        for w in windows:
            if isinstance(w, dict) and "k" in w:
                add(r, method, -1, f"local_kl_w{int(w['k'])}", w.get("kl"))
                add(r, method, -1, f"local_tv_w{int(w['k'])}", w.get("tv"))
                add(r, method, -1, f"local_kl_knn_w{int(w['k'])}", w.get("kl_knn"))
        tele = _get(res, "audit", "telescoping") or {}
        if tele.get("available"):
            add(r, method, -1, "local_kl_sum", tele.get("sum_kl"))
            for key in ("tv_final", "sum_tv", "pinsker_sum", "kl_final"):
                add(r, method, -1, f"tele_{key}", tele.get(key))
        key = (r["dataset"], int(r["seed"]))
        if key not in refs_done and (res.get("teacher_euler") or res.get("teacher_ceiling")):
            refs_done.add(key)
            for nfe, m in (res.get("teacher_euler") or {}).items():
                for k in NFE_KEYS:
                    add(r, TEACHER_EULER, nfe, k, _get(m, k))
            for k in NFE_KEYS:
                add(r, TEACHER_CEILING, -1, k, _get(res, "teacher_ceiling", k))
    return pd.DataFrame(rows, columns=["dataset", "method", "seed", "run_id", "nfe", "metric",
                                       "value"])


# --------------------------------------------------------------------------- plan and status


def _job_status(latest: dict, job: str) -> str:
    return latest.get(job, "none")


def plan(runs: pd.DataFrame, expected_jobs=None) -> pd.DataFrame:
    """Every (dataset, method, seed) that should have an evaluation, with its status.

    ``expected_jobs`` (evaluate job names, e.g. from the grid) fixes the rows and their order;
    without it, every evaluate job seen in the records (any status) is expected. The status is
    that of the latest run of the evaluate job (``COMPLETED`` if any run completed); for an
    evaluate job never run, the first upstream job (reflow, couplings, teacher) that did not
    complete is named: ``FAILED (reflow)``.
    """
    from reflowma.infra.runs import parse_job

    if expected_jobs is None:
        jobs = runs.loc[(runs["stage"] == "evaluate") & runs["job"].notna()]
        expected_jobs = sorted(set(jobs["job"]) - {j for j in jobs["job"] if ":" in j},
                               key=_job_key)
    done = set(runs.loc[runs["status"] == "COMPLETED", "job"].dropna())
    last = (runs[runs["job"].notna()].sort_values(["start_time", "run_id"], na_position="first")
            .groupby("job").tail(1).set_index("job")["status"].to_dict())
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


def _job_key(job: str):
    parts = job.split("/")
    return [(0, float(v), "") if _isnum(v) else (1, 0.0, v)
            for seg in parts for v in [seg.split("~", 1)[-1]]]


def _isnum(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


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


# --------------------------------------------------------------------------- statistics


def summarize(values) -> dict:
    """n, mean, std (ddof 1) and the 95% t-interval of the mean."""
    v = np.asarray([x for x in values if not np.isnan(x)], dtype=float)
    n = len(v)
    out = {"n": n, "mean": np.nan, "std": np.nan, "ci_lo": np.nan, "ci_hi": np.nan}
    if n == 0:
        return out
    out["mean"] = float(v.mean())
    if n >= 2:
        sd = float(v.std(ddof=1))
        half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        out.update(std=sd, ci_lo=out["mean"] - half, ci_hi=out["mean"] + half)
    return out


def paired_test(a: dict, b: dict) -> tuple[float, list]:
    """Two-sided paired t-test of {seed: value} a vs b over common seeds: (p, seeds)."""
    seeds = sorted(s for s in set(a) & set(b) if not (np.isnan(a[s]) or np.isnan(b[s])))
    if len(seeds) < 2:
        return np.nan, seeds
    with np.errstate(all="ignore"):
        p = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue
    return float(p), seeds


REG_AXES = ("lam", "logdet", "eps", "warm")


def is_reg_axis(key: str) -> bool:
    """Axes that only matter when the regularizer is on (lam > 0)."""
    return key in REG_AXES or key.startswith("regularizer.")


def baseline_of(method: str, methods) -> str | None:
    """The lam-0 control of a regularized point: the point of ``methods`` with lam 0 and the
    same values of every axis that is not a regularizer setting (K, ws, ...); among several,
    the one sharing the most regularizer settings (a grid may keep lam 0 only once, e.g. with
    ``logdet~exact``). None for a point without a lam axis or with lam 0."""
    pt = parse_point(method)
    if "lam" not in pt or _num(pt["lam"]) == 0:
        return None
    best, score = None, -1
    for m in methods:
        q = parse_point(m)
        if "lam" not in q or _num(q["lam"]) != 0 or set(q) != set(pt):
            continue
        if any(q[k] != pt[k] for k in pt if not is_reg_axis(k)):
            continue
        sc = sum(q[k] == pt[k] for k in pt if is_reg_axis(k) and k != "lam")
        if sc > score:
            best, score = m, sc
    return best


# --------------------------------------------------------------------------- tables


@dataclass
class Table:
    """One results table: ``frame`` (numeric; one row per method/reference, columns
    ``method, kind, status, n_seeds`` and ``<metric>.<mean|std|n|ci_lo|ci_hi|p|best>``)."""

    name: str
    title: str
    dataset: str
    nfe: int | None
    metrics: list
    frame: pd.DataFrame
    cells: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def _methods_in_order(pl: pd.DataFrame) -> list:
    seen = []
    for m in pl["method"]:
        if m not in seen:
            seen.append(m)
    return seen


def _by_seed(long: pd.DataFrame, method: str, nfe: int, metric: str):
    sel = long[(long["method"] == method) & (long["metric"] == metric)
               & (long["nfe"].isin([nfe, -1]))]
    return ({int(r.seed): r.value for r in sel.itertuples()},
            {int(r.seed): int(r.run_id) for r in sel.itertuples()})


def _table(name, title, dataset, nfe, metrics, methods, statuses, long, refs=(),
           test=True) -> Table:
    rows, cells = [], {}
    all_methods = list(methods)
    for kind, method_list in (("method", methods), ("reference", refs)):
        for m in method_list:
            status = statuses.get(m, "ok")
            row = {"method": m, "kind": kind, "status": status}
            base = baseline_of(m, all_methods) if (kind == "method" and test) else None
            row["baseline"] = base
            seeds_seen = set()
            for metric in metrics:
                vals, ids = _by_seed(long, m, nfe, metric)
                s = summarize(list(vals.values()))
                seeds_seen |= set(vals)
                p, common = np.nan, []
                if base is not None:
                    bvals, bids = _by_seed(long, base, nfe, metric)
                    p, common = paired_test(vals, bvals)
                row.update({f"{metric}.{k}": v for k, v in s.items()})
                row[f"{metric}.p"] = p
                if vals:
                    cell = {"run_ids": [ids[k] for k in sorted(vals)], "seeds": sorted(vals),
                            "values": [vals[k] for k in sorted(vals)], **_json_stats(s)}
                    if base is not None:
                        cell.update(baseline=base, p_value=_none(p), paired_seeds=common,
                                    baseline_run_ids=[bids[k] for k in common])
                    cells[f"{name}/{m}/{metric}"] = cell
            row["n_seeds"] = len(seeds_seen)
            rows.append(row)
    frame = pd.DataFrame(rows)
    for metric in metrics:
        is_m = frame["kind"] == "method"
        col = frame.loc[is_m, f"{metric}.mean"].astype(float)
        # no mark where every method has the same value (e.g. no fold anywhere)
        best = col.min() if col.dropna().nunique() > 1 else np.nan
        frame[f"{metric}.best"] = is_m & (frame[f"{metric}.mean"] == best)
    lead = ["method", "kind", "status", "n_seeds", "baseline"]
    cols = lead + [f"{m}.{k}" for m in metrics
                   for k in ("mean", "std", "n", "ci_lo", "ci_hi", "p", "best")]
    return Table(name, title, dataset, nfe, list(metrics), frame[cols], cells)


def _none(x):
    x = _num(x)
    return None if np.isnan(x) else x


def _json_stats(s: dict) -> dict:
    return {"n": s["n"], "mean": _none(s["mean"]), "std": _none(s["std"]),
            "ci95": [_none(s["ci_lo"]), _none(s["ci_hi"])]}


def build_tables(runs: pd.DataFrame, expected_jobs=None) -> list[Table]:
    """Per dataset: one main table per NFE, a local-audit table (if the audit is present) and
    an 'expected results' table (regularizer vs its lam-0 control, at NFE = K)."""
    ev = latest_completed(runs, "evaluate")
    ev = ev[ev["point"].notna() & ev["dataset"].notna()]
    long = eval_long(ev)
    pl = plan(runs, expected_jobs)
    tables = []
    for dataset in _ordered(pl["dataset"]):
        pld = pl[pl["dataset"] == dataset]
        methods = _methods_in_order(pld)
        statuses = {m: method_status(pld[pld["method"] == m]) for m in methods}
        ld = long[long["dataset"] == dataset]
        present = set(ld["metric"])
        metrics = [m for m in MAIN_METRICS if m in present] or MAIN_METRICS[:4]
        nfes = sorted({int(n) for n in ld["nfe"] if n >= 0})
        refs_euler = [TEACHER_EULER] if TEACHER_EULER in set(ld["method"]) else []
        refs_ceiling = [TEACHER_CEILING] if TEACHER_CEILING in set(ld["method"]) else []
        has_lam = any("lam" in parse_point(m) for m in methods)
        for nfe in nfes:
            t = _table(f"{dataset}/nfe~{nfe}", f"{dataset}, NFE {nfe}", dataset, nfe, metrics,
                       methods, statuses, ld, refs_euler + refs_ceiling, test=has_lam)
            t.notes = _notes(has_lam, metrics)
            tables.append(t)
        if not nfes:  # nothing completed: still list every expected point and why it is absent
            t = _table(f"{dataset}/status", f"{dataset}: no completed evaluation", dataset, -1,
                       [], methods, statuses, ld, test=False)
            t.notes = ["No evaluate run of this dataset completed; see missing.json."]
            tables.append(t)
            continue
        local = [m for m in present if m.startswith("local_kl_w")]
        if local:
            ks = sorted(int(m.rsplit("w", 1)[1]) for m in local)
            lm = [f"local_kl_w{k}" for k in ks] + [
                m for m in ("tele_tv_final", "tele_sum_tv", "tele_pinsker_sum", "local_kl_sum",
                            "tele_kl_final") if m in present]
            t = _table(f"{dataset}/local", f"{dataset}, local per-window audit (NFE = K)",
                       dataset, -1, lm, methods, statuses, ld, test=has_lam)
            t.notes = ["local_kl_wk: KL of the student's step on window k (teacher states at "
                       "t_k) against the teacher marginal at t_(k+1), nats.",
                       "tele_*: TV(q_1,p_1) <= sum_k TV_k <= sum_k sqrt(KL_k/2) (Pinsker); the "
                       "sum of local KLs does not bound the final KL."]
            tables.append(t)
        if has_lam:
            tables.append(effects_table(dataset, methods, statuses, ld))
    return tables


def _ordered(values):
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def _notes(has_lam, metrics):
    notes = ["Cells: mean ± std over seeds [95% t-interval]; n = seeds with a value. "
             "Bold: lowest mean of the column among the methods (lower is better)."]
    if has_lam:
        notes.append("p: two-sided paired t-test (scipy.stats.ttest_rel over common seeds) "
                     "against the same point with lam 0.")
    if "kl" in metrics:
        notes.append("KL/TV: exact change of variables against the teacher CNF density, only "
                     "for runs where no sample folded.")
    notes.append("Per-run metrics (held-out TM loss, Σ local KL) do not depend on the NFE.")
    return notes


def effects_table(dataset: str, methods, statuses, ld: pd.DataFrame) -> Table:
    """'Expected results': relative change (%) of each metric of a regularized method against
    its lam-0 control, paired over seeds, at the method's own NFE = K, next to what the 2D
    prototype found (DESIGN.md section 4)."""
    metrics = [m for m in PROTOTYPE if m in set(ld["metric"])]
    rows, cells = [], {}
    for m in methods:
        base = baseline_of(m, methods)
        if base is None:
            continue
        K = int(_num(parse_point(m).get("K", 1)) or 1)
        row = {"method": m, "kind": "method", "status": statuses.get(m, "ok"), "baseline": base}
        for metric in metrics:
            a, aid = _by_seed(ld, m, K, metric)
            b, bid = _by_seed(ld, base, K, metric)
            common = sorted(s for s in set(a) & set(b) if b[s] != 0)
            rel = [100.0 * (a[s] - b[s]) / abs(b[s]) for s in common]
            s = summarize(rel)
            p, _ = paired_test(a, b)
            row.update({f"{metric}.{k}": v for k, v in s.items()})
            row[f"{metric}.p"] = p
            exp = PROTOTYPE[metric].get("K>=2" if K >= 2 else "K=1")
            row[f"{metric}.expected"] = _expected_text(exp)
            row[f"{metric}.agrees"] = _agrees(exp, s)
            if common:
                cells[f"{dataset}/effects/{m}/{metric}"] = {
                    "run_ids": [aid[x] for x in common], "baseline": base,
                    "baseline_run_ids": [bid[x] for x in common], "seeds": common,
                    "values_pct": rel, "nfe": K, "p_value": _none(p), **_json_stats(s)}
        rows.append(row)
    cols = ["method", "kind", "status", "baseline"] + [
        f"{m}.{k}" for m in metrics
        for k in ("mean", "std", "n", "ci_lo", "ci_hi", "p", "expected", "agrees")]
    frame = pd.DataFrame(rows, columns=cols)
    t = Table(f"{dataset}/effects", f"{dataset}, regularizer vs lam-0 control at NFE = K "
              "(% change; expected results)", dataset, None, metrics, frame, cells)
    t.notes = ["Cells: mean ± std over seeds of 100·(method − control)/|control| [95% "
               "t-interval], at the student's own NFE = K; p: paired t-test on the raw values.",
               "expected: what the 2D prototype found (DESIGN.md section 4) — orientation for "
               "healthy output, not a target; then yes (mean in that range), same sign, no, or "
               "inconclusive (the 95% interval contains 0)."]
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


# --------------------------------------------------------------------------- writers


def fmt_num(x, digits: int = 3) -> str:
    x = _num(x)
    if np.isnan(x):
        return "–"
    return f"{x:.{digits}g}"


def fmt_p(p) -> str:
    p = _num(p)
    if np.isnan(p):
        return ""
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _cell_parts(row, metric):
    mean = row[f"{metric}.mean"]
    if np.isnan(_num(mean)):
        return None
    std, lo, hi = row[f"{metric}.std"], row[f"{metric}.ci_lo"], row[f"{metric}.ci_hi"]
    return {"mean": fmt_num(mean), "std": None if np.isnan(_num(std)) else fmt_num(std, 2),
            "ci": None if np.isnan(_num(lo)) else (fmt_num(lo), fmt_num(hi)),
            "p": fmt_p(row.get(f"{metric}.p")), "best": bool(row.get(f"{metric}.best", False)),
            "n": int(row[f"{metric}.n"])}


def _header(t: Table, metric: str) -> tuple[str, str]:
    if metric.startswith("local_kl_w"):
        return f"local KL window {metric.rsplit('w', 1)[1]}", "nats"
    tele = {"tele_tv_final": ("TV final", ""), "tele_sum_tv": ("Σ_k TV_k", ""),
            "tele_pinsker_sum": ("Σ_k √(KL_k/2)", ""), "tele_kl_final": ("KL final", "nats")}
    if metric in tele:
        return tele[metric]
    label, unit = METRICS.get(metric, (metric, ""))
    if t.name.endswith("/effects"):
        return label, "% vs control"
    return label, unit


def _row_label(row) -> str:
    if row["kind"] == "reference":
        return row["method"]
    return row["method"] + (" (baseline)" if _is_baseline(row["method"]) else "")


def _is_baseline(method: str) -> bool:
    pt = parse_point(method)
    return "lam" in pt and _num(pt["lam"]) == 0


def to_markdown(t: Table) -> str:
    from tabulate import tabulate

    heads = ["method", "status", "n"] + [
        f"{lab} ({unit})" if unit else lab for lab, unit in (_header(t, m) for m in t.metrics)]
    if t.name.endswith("/effects"):
        heads = ["method", "status"] + heads[3:]
    body = []
    for _, row in t.frame.iterrows():
        cells = [_row_label(row), row["status"]]
        if "n_seeds" in row:
            cells.append(int(row["n_seeds"]))
        for m in t.metrics:
            c = _cell_parts(row, m)
            if c is None:
                cells.append("–" if row["status"] == "ok" else row["status"].split(" (")[0])
                continue
            s = f"{c['mean']} ± {c['std']}" if c["std"] else c["mean"]
            s = f"**{s}**" if c["best"] else s
            if c["ci"]:
                s += f" [{c['ci'][0]}, {c['ci'][1]}]"
            if c["n"] != row.get("n_seeds", c["n"]):
                s += f" (n={c['n']})"
            if c["p"]:
                s += f" {c['p']}"
            if f"{m}.expected" in row and row[f"{m}.expected"]:
                s += f"; expected {row[f'{m}.expected']}: {row[f'{m}.agrees']}"
            cells.append(s)
        body.append(cells)
    text = f"### {t.title}\n\n" + tabulate(body, headers=heads, tablefmt="github")
    return text + "\n\n" + "".join(f"- {n}\n" for n in t.notes)


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
        "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}
_TEX_UNI = {"²": r"$^2$", "‖": r"$\|$", "Σ": r"$\Sigma$", "√": r"$\surd$", "–": "--",
            "±": r"$\pm$"}


def tex_escape(s: str) -> str:
    s = "".join(_TEX.get(ch, ch) for ch in str(s))
    for k, v in _TEX_UNI.items():
        s = s.replace(k, v)
    return s


def _tex_num(s: str) -> str:
    if "e" in s and s not in ("–",):
        mant, ex = s.split("e")
        return rf"{mant}\times 10^{{{int(ex)}}}"
    return s


def tex_method(label: str) -> str:
    """``K~2/lam~0.1/ws~1.0 (baseline)`` -> ``$K=2$, $\\lambda=0.1$, ws=1.0 (baseline)``."""
    head, sep, tail = label.partition(" (")
    segs = [seg.split("~", 1) for seg in head.split("/")]
    if not all(len(sg) == 2 for sg in segs):
        return tex_escape(label)
    names = {"K": "K", "lam": r"\lambda", "eps": r"\varepsilon"}
    parts = [f"${names[k]}={tex_escape(v)}$" if k in names else
             f"{tex_escape(k)}={tex_escape(v)}" for k, v in segs]
    return ", ".join(parts) + (tex_escape(sep + tail) if sep else "")


_TEX_HEADERS = {"local_kl_sum": r"$\sum_k$ local KL$_k$", "tele_sum_tv": r"$\sum_k$ TV$_k$",
                "tele_pinsker_sum": r"$\sum_k \sqrt{\mathrm{KL}_k/2}$"}


def _tex_header(t: Table, metric: str) -> str:
    lab, unit = _header(t, metric)
    text = _TEX_HEADERS.get(metric) or tex_escape(lab).replace("W2 ", "$W_2$ ")
    return text + (f" ({tex_escape(unit)})" if unit else "")


def to_latex(t: Table) -> str:
    effects = t.name.endswith("/effects")
    lead = ["method", "status"] + ([] if effects else ["$n$"])
    heads = lead + [_tex_header(t, m) for m in t.metrics]
    lines = ["% needs \\usepackage{booktabs,graphicx}", r"\begin{table}[t]", r"\centering",
             r"\scriptsize", r"\resizebox{\linewidth}{!}{%",
             r"\begin{tabular}{" + "l" * len(lead) + "c" * len(t.metrics) + "}", r"\toprule",
             " & ".join(heads) + r" \\", r"\midrule"]
    prev_kind = None
    for _, row in t.frame.iterrows():
        if prev_kind == "method" and row["kind"] == "reference":
            lines.append(r"\midrule")
        prev_kind = row["kind"]
        cells = [tex_method(_row_label(row)), tex_escape(row["status"])]
        if not effects:
            cells.append(str(int(row["n_seeds"])))
        for m in t.metrics:
            c = _cell_parts(row, m)
            if c is None:
                cells.append("--" if row["status"] == "ok"
                             else tex_escape(row["status"].split(" (")[0]))
                continue
            core = _tex_num(c["mean"]) + (rf" \pm {_tex_num(c['std'])}" if c["std"] else "")
            s = rf"$\mathbf{{{core}}}$" if c["best"] else f"${core}$"
            extra = []
            if c["ci"]:
                extra.append(f"$[{_tex_num(c['ci'][0])}, {_tex_num(c['ci'][1])}]$")
            if c["p"]:
                extra.append(tex_escape(c["p"]).replace("<", r"$<$"))
            if extra:
                s += r" {\tiny " + " ".join(extra) + "}"
            cells.append(s)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}",
              r"\caption{" + tex_escape(t.title + ". " + " ".join(t.notes)) + "}",
              r"\label{tab:" + t.name.replace("/", "-").replace("~", "") + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_csv(t: Table) -> str:
    f = t.frame.copy()
    f.insert(0, "table", t.name)
    return f.to_csv(index=False, float_format="%.10g")
