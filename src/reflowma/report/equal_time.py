"""Equal-time comparison: is the regularizer worth its cost?

A grid with ``equal_time: true`` has, per regularized point, an *equal-time control*: its lam-0
control trained for the regularized student's measured training seconds (``infra.grid``,
named ``<control>/budget~time_of_lam_<lam>``). Per such point this module compares the
regularized student, paired over seeds on ``spec.CLAIM_METRICS`` at NFE = K
(``claims.compare_point``: the claims' t-tests, outcomes and power), with

* its lam-0 control at **equal steps** (the ordinary control, ``stats.baseline_of``), and
* its equal-time control at **equal time**,

next to the steps and training seconds of each arm (means over seeds, from the reflow
records: ``steps_done`` and ``train_seconds``). The answer to "worth its cost?" comes from
``RULE`` applied to those outcomes; nothing is typed by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from reflowma.evaluation import spec
from reflowma.infra.grid import equal_time_of
from reflowma.infra.runs import latest_completed
from reflowma.report import claims, collect, markdown
from reflowma.report.points import baseline_of, window_count

RULE = (f"Worth its cost? From the paired comparison at equal time (the regularized student "
        f"against its λ = 0 control trained for the regularized student's training seconds, on "
        f"{', '.join(spec.CLAIM_METRICS)} at NFE = K; the outcomes and point verdict of "
        f"claims.md, p < {claims.ALPHA}): **yes** if the regularizer is better there on at "
        f"least one metric and worse on none (supported), **no** if it is worse on at least one "
        f"and better on none (contradicted: the control given the same seconds does better), "
        f"**not shown** if no difference is significant (inconclusive: see the MDE in "
        f"equal_time.json), **mixed** if better on some and worse on others, **untested** with "
        f"fewer than 2 paired seeds. The verdict at equal steps is shown beside it.")
ANSWER = {claims.SUPPORTED: "yes", claims.CONTRADICTED: "no", claims.INCONCLUSIVE: "not shown",
          claims.MIXED: "mixed", claims.UNTESTED: "untested"}


def arm_costs(runs: pd.DataFrame, dataset: str, method: str) -> dict:
    """Mean over seeds of the steps trained, the steps planned and the training seconds of one
    point's reflow runs (``steps_done``/``train_seconds``; ``steps``/``seconds`` in older
    records), and how many runs ended by steps or by their time budget."""
    rf = latest_completed(runs, "reflow")
    rf = rf[(rf["dataset"] == dataset) & (rf["point"] == method)]
    steps, planned, secs, ids, ended = [], [], [], [], {}
    for r in rf.itertuples():
        res = r.result if isinstance(r.result, dict) else {}
        steps.append(collect.num(res.get("steps_done", res.get("steps"))))
        planned.append(collect.num(res.get("steps")))
        secs.append(collect.num(res.get("train_seconds", res.get("seconds"))))
        ids.append(int(r.run_id))
        by = res.get("stopped_by", "steps")
        ended[by] = ended.get(by, 0) + 1

    def mean(v):
        v = [x for x in v if not np.isnan(x)]
        return float(np.mean(v)) if v else math.nan

    return {"steps": mean(steps), "planned_steps": mean(planned), "seconds": mean(secs),
            "n": len(ids), "run_ids": ids, "stopped_by": ended}


def comparisons(runs: pd.DataFrame, methods_by_dataset: dict) -> list[dict]:
    """One entry per regularized point that has an equal-time control among the methods:
    both paired comparisons, each arm's costs and the answer (``RULE``)."""
    long = collect.eval_long(collect.evaluations(runs), runs)
    out = []
    for ds, methods in methods_by_dataset.items():
        ld = long[long["dataset"] == ds]
        for twin in methods:
            reg = equal_time_of(twin)
            if reg is None or reg not in methods:
                continue
            ctrl = baseline_of(reg, methods)
            K = window_count(reg)
            steps = claims.compare_point(ld, reg, ctrl, K) if ctrl else None
            time_ = claims.compare_point(ld, reg, twin, K)
            out.append({
                "dataset": ds, "method": reg, "control": ctrl, "equal_time": twin, "K": K,
                "costs": {"method": arm_costs(runs, ds, reg),
                          "control": arm_costs(runs, ds, ctrl) if ctrl else None,
                          "equal_time": arm_costs(runs, ds, twin)},
                "equal_steps": steps, "equal_time_test": time_,
                "verdict_equal_steps": steps["verdict"] if steps else claims.UNTESTED,
                "verdict_equal_time": time_["verdict"],
                "worth_its_cost": ANSWER[time_["verdict"]]})
    return out


def _delta(r: dict | None) -> str:
    """``-7.8 % (p=0.020, better)`` of one metric's comparison row (``+0.0012 abs`` where the
    change is not relative: ``stats.RELATIVE_RULE``)."""
    if r is None or not r["seeds"]:
        return "–"
    v = collect.num(r["rel_pct"] if r["relative"] else r["mean_diff"])
    s = "–" if np.isnan(v) else f"{v:+.3g}" + (" %" if r["relative"] else " abs")
    p = collect.num(r["p"])
    return s + (f" (p={p:.3f}, {r['outcome']})" if not np.isnan(p) else f" ({r['outcome']})")


def _arms(cost: dict, key: str) -> str:
    return " / ".join("–" if cost[a] is None or np.isnan(cost[a][key]) else f"{cost[a][key]:.4g}"
                      for a in ("method", "control", "equal_time"))


def _ended(cost: dict) -> str:
    """``133.5; time_budget 2/2``: the equal-time control's planned steps and how its runs
    ended (by steps: it ran faster than the pace it planned with)."""
    n = sum(cost["stopped_by"].values())
    return f"{cost['planned_steps']:.4g}; " + ", ".join(
        f"{k} {v}/{n}" for k, v in sorted(cost["stopped_by"].items()))


def frame(comps: list[dict]) -> pd.DataFrame:
    """The table: one row per regularized point, the arms' costs, the relative change (%) of
    each claim metric against each control with its paired p and outcome, both verdicts and
    the answer."""
    rows = []
    for c in comps:
        cost = c["costs"]
        row = {"dataset": c["dataset"], "method": c["method"], "control": c["control"] or "–",
               "equal-time control": c["equal_time"], "steps (λ / control / equal time)":
               _arms(cost, "steps"), "train s (λ / control / equal time)": _arms(cost, "seconds"),
               "equal time: planned steps, ended by": _ended(cost["equal_time"])}
        steps = {r["metric"]: r for r in (c["equal_steps"] or {}).get("metrics", [])}
        eqt = {r["metric"]: r for r in c["equal_time_test"]["metrics"]}
        for m in spec.CLAIM_METRICS:
            # the fallback metric (kl_knn for kl) where compare_point used it
            rs = steps.get(m) or steps.get(spec.CLAIM_FALLBACK.get(m, ""))
            rt = eqt.get(m) or eqt.get(spec.CLAIM_FALLBACK.get(m, ""))
            label = spec.header(m)[0]
            row[f"{label}: vs control"] = _delta(rs)
            row[f"{label}: vs equal time"] = _delta(rt)
        row.update({"at equal steps": c["verdict_equal_steps"],
                    "at equal time": c["verdict_equal_time"],
                    "worth its cost?": c["worth_its_cost"]})
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_text(dataset: str, f: pd.DataFrame) -> str:
    body = f.drop(columns="dataset")
    return (markdown.table(list(body.columns), body.values.tolist(), keys=1,
                           title=f"### {dataset}, regularizer vs control at equal steps and at "
                                 "equal time")
            + "\n" + markdown.bullets([
                "Cells: 100·(regularized − control)/|control| of the seed means over the "
                "paired seeds, at NFE = K (abs: regularized − control, where the control is not "
                "meaningfully above zero); p: paired t-test on the raw values "
                "(scipy.stats.ttest_rel); better/worse/n.s./untested as in claims.md.",
                "steps: steps trained (an equal-time control plans 1.1 × the regularized "
                "student's seconds ÷ its own seconds per step, measured in its job before "
                "training, and stops when the seconds are used up); train s: seconds in the "
                "training loop; means over seeds.", RULE]))
