"""claims.json: each claim of the paper, the evidence that tests it and a computed verdict
(``claims_markdown`` writes claims.md from it).

* Theorem 1 (equal trajectory-matching loss, different marginals): the closed-form
  counterexample (``reflowma theory counterexample``'s JSON, passed in: the report layer does not
  import ``theory``) plus the grid's own students (held-out TM loss next to their marginals);
* Theorem 2 (``TV_final <= sum_k TV_k <= sum_k sqrt(KL_k / 2)``): checked in every evaluate run
  with an audit (``audit.telescoping``);
* "the regularizer improves few-step marginals", for vanilla (K = 1) and piecewise (K > 1)
  reflow: paired t-tests against the lam-0 control on ``spec.CLAIM_METRICS`` (and
  ``spec.CLAIM_METRICS_WHERE_PRESENT`` where computed) at NFE = K, each with its power: the
  minimum detectable effect at the seeds there are and the seeds that would detect the
  observed effect (``stats.mde``, ``stats.seeds_needed``).

Verdicts come from ``RULE`` applied to the records; nothing is typed by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from reflowma.evaluation import spec
from reflowma.report import collect
from reflowma.report.collect import by_seed
from reflowma.report.points import baseline_of, window_count
from reflowma.report.stats import (
    ALPHA,
    POWER,
    RELATIVE_RULE,
    estimator_noise,
    mde,
    paired_sd_from_p,
    paired_test,
    relative_ok,
    seeds_needed,
)

SUPPORTED, CONTRADICTED, MIXED = "supported", "contradicted", "mixed"
INCONCLUSIVE, UNTESTED = "inconclusive", "untested"
NOT_SUPPORTED = "not supported"  # a theorem's deterministic check that fails
POWER_RULE = (f"MDE: the minimum detectable effect of the two-sided paired t-test at α = "
              f"{ALPHA}, {POWER:.0%} power, at the seeds tested, for the observed SD of the "
              f"paired differences (noncentral t; about (t_(1−α/2, n−1) + t_(0.8, n−1))·SD/√n); "
              f"seeds needed: the fewest paired seeds with {POWER:.0%} power for the observed "
              f"mean difference at that SD. Δ and MDE are {RELATIVE_RULE}.")
RULE = (f"Per regularized grid point against its λ = 0 control (same dataset, K and other "
        f"axes), on each marginal metric ({', '.join(spec.CLAIM_METRICS)}; KL by change of "
        f"variables, else its kNN estimate where the map folds; and "
        f"{', '.join(spec.CLAIM_METRICS_WHERE_PRESENT)} where the evaluations computed them) "
        f"at NFE = K, paired over seeds: "
        f"*better* if the paired t-test gives p < {ALPHA} and the mean moves the good way, "
        f"*worse* if p < {ALPHA} the other way, else n.s.; fewer than 2 paired seeds: untested. "
        f"A point is **supported** if at least one metric is better and none worse, "
        f"**contradicted** if at least one is worse and none better, **mixed** if some are "
        f"better and some worse, **inconclusive** if none is significant either way (its MDE "
        f"says what effect the seeds could have shown). The claim takes the verdict its tested "
        f"points share, mixed where they differ; untested if no point could be tested.")


def _better_sign(metric: str) -> int:
    m, _ = spec.lookup(metric)
    return -1 if m is None or m.better == "lower" else 1


def outcome(p: float, mean_diff: float, metric: str, n: int) -> str:
    """better / worse (p < ALPHA, the mean moving the good / bad way), n.s., or untested."""
    if n < 2 or np.isnan(p):
        return "untested"
    if p < ALPHA:
        return "better" if np.sign(mean_diff) == _better_sign(metric) else "worse"
    return "n.s."


def power_fields(diffs, control_values, noise: float = 0.0) -> dict:
    """SD of the paired differences, the MDE (absolute, and % of the control where
    ``relative_ok`` at the metric's estimator ``noise``) and the seeds that would detect the
    observed mean difference."""
    n = len(diffs)
    mean = float(np.mean(diffs)) if n else math.nan
    sd = float(np.std(diffs, ddof=1)) if n >= 2 else math.nan
    control = float(np.mean(control_values)) if n else math.nan
    relative = relative_ok(control_values, mean, noise=noise)
    m = mde(sd, n)
    need = seeds_needed(mean, sd) if n >= 2 else None
    return {"sd_diff": sd, "mde": m, "relative": relative,
            "rel_pct": 100 * mean / abs(control) if relative else math.nan,
            "mde_rel_pct": 100 * m / abs(control) if relative else math.nan,
            "seeds_needed": need}


def point_verdict(outcomes) -> str:
    """One grid point's verdict from its metrics' outcomes (RULE)."""
    tested = [o for o in outcomes if o != "untested"]
    better, worse = tested.count("better"), tested.count("worse")
    if not tested:
        return UNTESTED
    if better and worse:
        return MIXED
    return SUPPORTED if better else CONTRADICTED if worse else INCONCLUSIVE


def compare_point(ld: pd.DataFrame, method: str, base: str, K: int) -> dict:
    """Paired tests of one regularized point against its control on the claim metrics, with
    their power."""
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
        rows.append({"metric": m, "seeds": seeds, "mean_diff": mean,
                     "control_mean": float(np.mean([b[s] for s in seeds])) if seeds else math.nan,
                     "p": p, "outcome": outcome(p, mean, m, len(seeds)),
                     **power_fields(diff, [b[s] for s in seeds],
                                    noise=estimator_noise(ld.loc[ld["metric"] == m, "value"])),
                     "run_ids": [aid[s] for s in seeds],
                     "control_run_ids": [bid[s] for s in seeds]})
    return {"method": method, "control": base, "K": K, "metrics": rows,
            "verdict": point_verdict(r["outcome"] for r in rows)}


def combine(verdicts) -> str:
    """One verdict from the points' verdicts (RULE): the verdict every tested point has, else
    mixed; untested without a tested point."""
    tested = {v for v in verdicts if v != UNTESTED}
    if not tested:
        return UNTESTED
    return tested.pop() if len(tested) == 1 else MIXED


def regularizer_claims(long: pd.DataFrame, methods_by_dataset: dict) -> dict:
    """{"vanilla": {...}, "piecewise": {...}}: points compared and the claim's verdict."""
    out = {"vanilla": [], "piecewise": []}
    for ds, methods in methods_by_dataset.items():
        ld = long[long["dataset"] == ds]
        for m in methods:
            base = baseline_of(m, methods)
            if base is None:
                continue
            K = window_count(m)
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
    tm = [collect.num(s["tm_loss"]) for s in st.values()]
    w2 = [collect.num(s["w2"][nfe]) for s in st.values()]
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
            K = window_count(m)
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
    ev = collect.evaluations(runs)
    long = collect.eval_long(ev, runs)
    return {"rule": RULE, "power_rule": POWER_RULE, "alpha": ALPHA, "power": POWER,
            "theorem1": theorem1_claim(counterexample, counterexample_source)
            | {"grid": grid_tm_vs_marginals(long, methods_by_dataset)},
            "theorem2": telescoping_claim(ev),
            "regularizer": regularizer_claims(long, methods_by_dataset)}


def reverdict(c: dict) -> dict:
    """A claims.json written under an older rule, its regularizer verdicts recomputed under
    ``RULE`` with the power fields, from what it kept of each test (mean difference, control
    mean, p, seeds): the SD of the paired differences follows from them
    (``stats.paired_sd_from_p``). The per-seed values are not in claims.json: the relative
    rule is applied to the control's mean (positive, at least a tenth of the change)."""
    out = {**c, "rule": RULE, "power_rule": POWER_RULE, "power": POWER,
           "regularizer": {}}
    for key, claim in c["regularizer"].items():
        points = []
        for pt in claim["points"]:
            rows = []
            for r in pt["metrics"]:
                n, p, d = len(r["seeds"]), collect.num(r["p"]), collect.num(r["mean_diff"])
                ctrl = collect.num(r["control_mean"])
                row = {**r, "outcome": outcome(p, d, r["metric"], n)}
                sd = paired_sd_from_p(d, p, n) if n >= 2 and not np.isnan(p) else math.nan
                relative = relative_ok([ctrl], d)
                m = mde(sd, n)
                row.update({"sd_diff": sd, "mde": m, "relative": relative,
                            "rel_pct": 100 * d / abs(ctrl) if relative else math.nan,
                            "mde_rel_pct": 100 * m / abs(ctrl) if relative else math.nan,
                            "seeds_needed": seeds_needed(d, sd) if n >= 2 else None})
                rows.append(row)
            points.append({**pt, "metrics": rows,
                           "verdict": point_verdict(r["outcome"] for r in rows)})
        out["regularizer"][key] = {"points": points,
                                   "verdict": combine(p["verdict"] for p in points)}
    return out
