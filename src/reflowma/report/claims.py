"""claims.md: each claim of the paper, the evidence that tests it and a computed verdict.

* Theorem 1 (equal trajectory-matching loss, different marginals): the closed-form
  counterexample (``reflowma theory counterexample``'s JSON, passed in: the report layer does not
  import ``theory``) plus the grid's own students (held-out TM loss next to their marginals);
* Theorem 2 (``TV_final <= sum_k TV_k <= sum_k sqrt(KL_k / 2)``): checked in every evaluate run
  with an audit (``audit.telescoping``);
* "the regularizer improves few-step marginals", for vanilla (K = 1) and piecewise (K > 1)
  reflow: paired t-tests against the lam-0 control on ``spec.CLAIM_METRICS`` (and
  ``spec.CLAIM_METRICS_WHERE_PRESENT`` where computed) at NFE = K.

Verdicts come from ``RULE`` applied to the records; nothing is typed by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from tabulate import tabulate

from reflowma.evaluation import spec
from reflowma.infra.runs import parse_point
from reflowma.report import collect as C
from reflowma.report.collect import by_seed
from reflowma.report.stats import baseline_of, paired_test

ALPHA = 0.05
SUPPORTED, NOT_SUPPORTED, MIXED, UNTESTED = "supported", "not supported", "mixed", "untested"
RULE = (f"Per regularized grid point against its λ = 0 control (same dataset, K and other "
        f"axes), on each marginal metric ({', '.join(spec.CLAIM_METRICS)}; KL by change of "
        f"variables, else its kNN estimate where the map folds; and "
        f"{', '.join(spec.CLAIM_METRICS_WHERE_PRESENT)} where the evaluations computed them) "
        f"at NFE = K, paired over seeds: "
        f"*better* if the paired t-test gives p < {ALPHA} and the mean moves the good way, "
        f"*worse* if p < {ALPHA} the other way, else n.s.; fewer than 2 paired seeds: untested. "
        f"A point is **supported** if at least one metric is better and none worse, **mixed** "
        f"if some are better and some worse, **not supported** if none is better. The claim is "
        f"supported if every tested point is, not supported if no tested point is, else mixed; "
        f"untested if no point could be tested.")


def _f(x, digits=4) -> str:
    x = C.num(x)
    return "–" if np.isnan(x) else f"{x:.{digits}g}"


def _better_sign(metric: str) -> int:
    m, _ = spec.lookup(metric)
    return -1 if m is None or m.better == "lower" else 1


def compare_point(ld: pd.DataFrame, method: str, base: str, K: int) -> dict:
    """Paired tests of one regularized point against its control on the claim metrics."""
    rows = []
    for metric in (*spec.CLAIM_METRICS, *spec.CLAIM_METRICS_WHERE_PRESENT):
        m = metric
        a, aid = by_seed(ld, method, K, m)
        b, bid = by_seed(ld, base, K, m)
        if metric in spec.CLAIM_METRICS_WHERE_PRESENT and not (a or b):
            continue
        p, seeds = paired_test(a, b)
        fb = spec.CLAIM_FALLBACK.get(metric)
        if len(seeds) < 2 and fb:
            fa, faid = by_seed(ld, method, K, fb)
            fbv, fbid = by_seed(ld, base, K, fb)
            fp, fseeds = paired_test(fa, fbv)
            if len(fseeds) >= 2 or not seeds:
                m, a, aid, b, bid, p, seeds = fb, fa, faid, fbv, fbid, fp, fseeds
        diff = [a[s] - b[s] for s in seeds]
        mean = float(np.mean(diff)) if diff else math.nan
        base_mean = float(np.mean([b[s] for s in seeds])) if seeds else math.nan
        if len(seeds) < 2 or np.isnan(p):
            outcome = "untested"
        elif p < ALPHA:
            outcome = "better" if np.sign(mean) == _better_sign(m) else "worse"
        else:
            outcome = "n.s."
        rows.append({"metric": m, "seeds": seeds, "mean_diff": mean, "control_mean": base_mean,
                     "rel_pct": 100 * mean / abs(base_mean) if base_mean else math.nan,
                     "p": p, "outcome": outcome,
                     "run_ids": [aid[s] for s in seeds],
                     "control_run_ids": [bid[s] for s in seeds]})
    tested = [r for r in rows if r["outcome"] != "untested"]
    better = sum(r["outcome"] == "better" for r in tested)
    worse = sum(r["outcome"] == "worse" for r in tested)
    verdict = (UNTESTED if not tested else MIXED if better and worse
               else SUPPORTED if better else NOT_SUPPORTED)
    return {"method": method, "control": base, "K": K, "metrics": rows, "verdict": verdict}


def combine(verdicts) -> str:
    """One verdict from the points' verdicts (RULE)."""
    tested = [v for v in verdicts if v != UNTESTED]
    if not tested:
        return UNTESTED
    if all(v == SUPPORTED for v in tested):
        return SUPPORTED
    if not any(v in (SUPPORTED, MIXED) for v in tested):
        return NOT_SUPPORTED
    return MIXED


def regularizer_claims(long: pd.DataFrame, methods_by_dataset: dict) -> dict:
    """{"vanilla": {...}, "piecewise": {...}}: points compared and the claim's verdict."""
    out = {"vanilla": [], "piecewise": []}
    for ds, methods in methods_by_dataset.items():
        ld = long[long["dataset"] == ds]
        for m in methods:
            base = baseline_of(m, methods)
            if base is None:
                continue
            K = int(C.num(parse_point(m).get("K", 1)) or 1)
            r = compare_point(ld, m, base, K) | {"dataset": ds}
            out["vanilla" if K == 1 else "piecewise"].append(r)
    return {k: {"points": v, "verdict": combine(p["verdict"] for p in v)}
            for k, v in out.items()}


def telescoping_claim(ev: pd.DataFrame) -> dict:
    """Theorem 2 in every evaluate run whose audit has the telescoping sums."""
    rows = []
    for r in ev.sort_values("run_id").itertuples():
        res = r.result if isinstance(r.result, dict) else {}
        t = spec.dig(res, spec.TELE) if res else None
        if not isinstance(t, dict) or not t.get("available"):
            continue
        rows.append({"run_id": int(r.run_id), "job": r.job, "tv_final": t["tv_final"],
                     "sum_tv": t["sum_tv"], "pinsker_sum": t["pinsker_sum"],
                     "final_le_sum_tv": bool(t["final_le_sum_tv"]),
                     "sum_tv_le_pinsker": bool(t["sum_tv_le_pinsker"]),
                     "valid": bool(t.get("valid", True))})
    n = len(rows)
    a = sum(r["final_le_sum_tv"] for r in rows)
    b = sum(r["sum_tv_le_pinsker"] for r in rows)
    verdict = UNTESTED if n == 0 else SUPPORTED if a == b == n else NOT_SUPPORTED
    return {"runs": rows, "n": n, "final_le_sum_tv": a, "sum_tv_le_pinsker": b,
            "verdict": verdict}


def theorem1_claim(ce: dict | None, source: str) -> dict:
    """The closed-form counterexample: supported if every student has the same TM loss (rel.
    1e-9) and their 1-NFE W2 to the data differ by more than 1e-3 sqrt(TM)."""
    if not ce:
        return {"verdict": UNTESTED, "source": source, "students": {}}
    st = ce["students"]
    nfe = str(min(int(n) for n in ce["nfe"]))
    tm = [C.num(s["tm_loss"]) for s in st.values()]
    w2 = [C.num(s["w2"][nfe]) for s in st.values()]
    equal = max(tm) - min(tm) <= 1e-9 * max(abs(max(tm)), 1e-300)
    differ = max(w2) - min(w2) > 1e-3 * math.sqrt(max(tm))
    return {"verdict": SUPPORTED if equal and differ else NOT_SUPPORTED, "source": source,
            "nfe": int(nfe), "tm_equal": bool(equal), "w2_differ": bool(differ),
            "students": st}


def grid_tm_vs_marginals(long: pd.DataFrame, methods_by_dataset: dict) -> list[dict]:
    """Per student (mean over seeds): held-out TM loss and the marginal metrics at NFE = K."""
    rows = []
    for ds, methods in methods_by_dataset.items():
        ld = long[long["dataset"] == ds]
        for m in methods:
            K = int(C.num(parse_point(m).get("K", 1)) or 1)
            row = {"dataset": ds, "method": m, "K": K}
            for metric in ("heldout_tm_loss", *spec.CLAIM_METRICS, "kl_knn"):
                v, ids = by_seed(ld, m, K, metric)
                row[metric] = float(np.mean(list(v.values()))) if v else math.nan
                row.setdefault("run_ids", sorted(set(ids.values())))
            rows.append(row)
    return rows


def build(runs: pd.DataFrame, methods_by_dataset: dict, counterexample: dict | None = None,
          counterexample_source: str = "") -> dict:
    """Every claim's evidence and verdict (the content of claims.json)."""
    ev = C.evaluations(runs)
    long = C.eval_long(ev, runs)
    return {"rule": RULE, "alpha": ALPHA,
            "theorem1": theorem1_claim(counterexample, counterexample_source)
            | {"grid": grid_tm_vs_marginals(long, methods_by_dataset)},
            "theorem2": telescoping_claim(ev),
            "regularizer": regularizer_claims(long, methods_by_dataset)}


def _spread(vals) -> str:
    v = [x for x in vals if not np.isnan(x)]
    if len(v) < 2 or min(v) <= 0:
        return "–"
    return f"{100 * (max(v) / min(v) - 1):.3g} %"


def markdown(c: dict, figures: dict) -> str:
    """claims.md from ``build``'s dict; ``figures``: dataset -> figure stem of TM vs marginals."""
    out = ["# Claims of the paper, tested on these runs\n",
           "Verdicts are computed from the run records by the rule stated with each claim; "
           "`claims.json` holds the same content.\n"]
    t1 = c["theorem1"]
    out.append(f"## Theorem 1: equal trajectory-matching loss, different marginals — "
               f"**{t1['verdict']}**\n")
    if t1["students"]:
        nfe = str(t1["nfe"])
        out.append(f"Closed-form counterexample ({t1['source']}): Gaussian data, four students "
                   f"with the same TM loss. Rule: supported if the TM losses are equal "
                   f"(relative 1e-9) and the {nfe}-NFE W2 to the data differ by more than "
                   f"1e-3·sqrt(TM).\n")
        out.append(tabulate([[k, _f(s["tm_loss"]), _f(s["w2"][nfe]), _f(s["kl"][nfe])]
                             for k, s in t1["students"].items()],
                            headers=["student", "TM loss", f"W2 @ {nfe} NFE",
                                     f"KL @ {nfe} NFE"], tablefmt="github") + "\n")
    g = t1["grid"]
    if g:
        out.append("In this grid (evidence, no verdict: the students differ in more than the "
                   "regularizer): held-out TM loss against the marginals at NFE = K, mean "
                   "over seeds.\n")
        out.append(tabulate([[r["dataset"], r["method"], _f(r["heldout_tm_loss"]),
                              _f(r["w2_paired_teacher"]), _f(r["kl"]), _f(r["kl_knn"]),
                              _f(r["mmd_data"]), ", ".join(map(str, r["run_ids"]))]
                             for r in g],
                            headers=["dataset", "student", "held-out TM", "paired W2", "KL",
                                     "KL kNN", "MMD²", "evaluate runs"],
                            tablefmt="github") + "\n")
        for ds in dict.fromkeys(r["dataset"] for r in g):
            rs = [r for r in g if r["dataset"] == ds]
            out.append(f"- {ds}: TM loss spread (max/min − 1) "
                       f"{_spread([r['heldout_tm_loss'] for r in rs])}, paired W2 spread "
                       f"{_spread([r['w2_paired_teacher'] for r in rs])}"
                       + (f"; figure `figures/{figures[ds]}.png`" if ds in figures else "")
                       + "\n")
        out.append("")
    t2 = c["theorem2"]
    out.append(f"## Theorem 2: TV_final ≤ Σ_k TV_k ≤ Σ_k sqrt(KL_k/2) — **{t2['verdict']}**\n")
    out.append("Rule: supported if both inequalities hold in every evaluate run with a "
               "marginal audit; untested without one. (The sum of local KLs does not bound the "
               "final KL; that is not claimed.)\n")
    if t2["n"]:
        out.append(f"TV_final ≤ Σ TV_k in {t2['final_le_sum_tv']}/{t2['n']} runs, "
                   f"Σ TV_k ≤ Σ sqrt(KL_k/2) in {t2['sum_tv_le_pinsker']}/{t2['n']} runs.\n")
        out.append(tabulate([[r["run_id"], r["job"], _f(r["tv_final"]), _f(r["sum_tv"]),
                              _f(r["pinsker_sum"]),
                              "yes" if r["final_le_sum_tv"] and r["sum_tv_le_pinsker"] else "NO",
                              "" if r["valid"] else "folds"] for r in t2["runs"]],
                            headers=["run", "job", "TV final", "Σ TV_k", "Σ √(KL_k/2)",
                                     "holds", "note"], tablefmt="github") + "\n")
    else:
        out.append("No evaluate run has an audit (`evaluate.audit.enabled: true`).\n")
    for key, title in (("vanilla", "vanilla reflow (K = 1)"),
                       ("piecewise", "piecewise reflow (K > 1)")):
        r = c["regularizer"][key]
        out.append(f"## The regularizer improves few-step marginals: {title} — "
                   f"**{r['verdict']}**\n")
        out.append(f"Rule: {RULE}\n")
        if not r["points"]:
            out.append("No regularized point with a λ = 0 control in this grid.\n")
            continue
        body = []
        for pt in r["points"]:
            for m in pt["metrics"]:
                body.append([pt["dataset"], pt["method"], pt["control"], m["metric"],
                             len(m["seeds"]), _f(m["rel_pct"], 3), _f(m["p"], 3), m["outcome"],
                             pt["verdict"], ", ".join(map(str, m["run_ids"])),
                             ", ".join(map(str, m["control_run_ids"]))])
        out.append(tabulate(body, headers=["dataset", "point", "control", "metric", "seeds",
                                           "Δ %", "p", "outcome", "point verdict", "runs",
                                           "control runs"], tablefmt="github") + "\n")
        out.append("Tables: `tables/<dataset>_effects.md` (all metrics), "
                   "`tables/<dataset>_nfe<K>.md`.\n")
    return "\n".join(out)
