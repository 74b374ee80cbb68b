"""Comparing two sets of runs (another preset, commit or machine): ``reflowma report --compare``.

Grid points match when dataset, seed and point name are the same. Per dataset, each matched
point's metrics at its own NFE = K (``spec.CLAIM_METRICS``, held-out TM loss, W2 and MMD² to
data) side by side: mean over seeds here and there, the difference (also relative to the other
side, where ``stats.relative_ok``), and a paired t-test over the seeds both have. Points on one
side only are listed. Writes ``compare.{md,csv,json}``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from reflowma.evaluation import spec
from reflowma.infra.runs import load_runs
from reflowma.infra.storage.atomic import atomic_path, write_json
from reflowma.report import collect, markdown
from reflowma.report.points import window_count
from reflowma.report.stats import RELATIVE_CONDITION, estimator_noise, paired_test, relative_ok

METRICS = (*spec.CLAIM_METRICS, "kl_knn", "heldout_tm_loss", "w2_data")


def runs_folder(path) -> Path:
    """The Sacred runs folder of ``path``: itself, its ``runs/``, or the ``runs/`` next to a
    report folder (``results/<preset>/report`` -> ``results/<preset>/runs``)."""
    p = Path(path)
    for cand in (p / "runs", p.parent / "runs", p):
        if cand.is_dir() and (any(cand.glob("*/run.json")) or cand.name == "runs"):
            return cand
    raise FileNotFoundError(f"--compare {str(path)!r}: no Sacred runs folder there (tried "
                            f"{p / 'runs'}, {p.parent / 'runs'} and {p})")


def _values(runs_dir) -> pd.DataFrame:
    runs = load_runs(Path(runs_dir))
    long = collect.eval_long(collect.evaluations(runs), runs)
    long = long[long["method"].map(lambda m: m not in spec.REFERENCES)]
    K = long["method"].map(window_count)
    return long[long["metric"].isin(METRICS) & ((long["nfe"] == K) | (long["nfe"] == -1))]


def compare_long(a: pd.DataFrame, b: pd.DataFrame) -> tuple[list[dict], dict]:
    """Rows (dataset, point, metric, this, other, diff, diff %, seeds, p) and the unmatched."""
    keys_a = set(zip(a["dataset"], a["method"], strict=True))
    keys_b = set(zip(b["dataset"], b["method"], strict=True))
    rows = []
    for ds, m in sorted(keys_a & keys_b, key=lambda k: (k[0], collect.job_key(k[1]))):
        for metric in METRICS:
            noise = estimator_noise(pd.concat(
                [f.loc[(f["dataset"] == ds) & (f["metric"] == metric), "value"] for f in (a, b)]))
            va = {int(r.seed): r.value for r in a[(a["dataset"] == ds) & (a["method"] == m)
                                                  & (a["metric"] == metric)].itertuples()}
            vb = {int(r.seed): r.value for r in b[(b["dataset"] == ds) & (b["method"] == m)
                                                  & (b["metric"] == metric)].itertuples()}
            if not va and not vb:
                continue
            p, seeds = paired_test(va, vb)
            common = sorted(set(va) & set(vb))
            ma = float(np.mean(list(va.values()))) if va else math.nan
            mb = float(np.mean(list(vb.values()))) if vb else math.nan
            d = float(np.mean([va[s] - vb[s] for s in common])) if common else math.nan
            other = [vb[s] for s in common]
            rows.append({"dataset": ds, "point": m, "metric": metric, "this": ma, "other": mb,
                         "diff": d, "diff_pct": 100 * d / abs(np.mean(other))
                         if relative_ok(other, d, noise=noise) else math.nan,
                         "seeds": common, "p": p})
    unmatched = {"only_this": sorted(f"{d}/{m}" for d, m in keys_a - keys_b),
                 "only_other": sorted(f"{d}/{m}" for d, m in keys_b - keys_a)}
    return rows, unmatched


def _f(x, digits=4) -> str:
    x = collect.num(x)
    return "–" if np.isnan(x) else f"{x:.{digits}g}"


def markdown_text(rows, unmatched, this, other, verdicts=None) -> str:
    """compare.md: the claims' verdicts side by side, then per dataset and matched point a
    table of its metrics (each table at most ``markdown.WIDTH`` columns)."""
    out = [f"# Comparison\n\nthis: `{this}`  \nother: `{other}`\n",
           "Matched grid points (same dataset, seed and point) at NFE = K; diff = this − "
           "other (mean over common seeds); diff %: the diff relative to other where other is "
           f"{RELATIVE_CONDITION}, else –; p: paired t-test over the common seeds (needs 2).\n"]
    if verdicts:
        out.append(markdown.table(["claim", "this", "other"],
                                  [[k, verdicts[0].get(k, "–"), verdicts[1].get(k, "–")]
                                   for k in dict.fromkeys([*verdicts[0], *verdicts[1]])]))
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        out.append(f"## {ds}\n")
        for pt in dict.fromkeys(r["point"] for r in rows if r["dataset"] == ds):
            out.append(f"### {pt}\n")
            out.append(markdown.table(
                ["metric", "this", "other", "diff", "diff %", "seeds", "p"],
                [[spec.header(r["metric"])[0], _f(r["this"]), _f(r["other"]), _f(r["diff"]),
                  _f(r["diff_pct"], 3), len(r["seeds"]), _f(r["p"], 3)]
                 for r in rows if r["dataset"] == ds and r["point"] == pt]))
    if not rows:
        out.append("No grid point matches.\n")
    for k, title in (("only_this", "Only here"), ("only_other", "Only in the other")):
        if unmatched[k]:
            out.append(f"{title}: " + ", ".join(f"`{x}`" for x in unmatched[k]) + "\n")
    return markdown.wrap_prose("\n".join(out))


def _verdicts(report_dir: Path) -> dict:
    p = report_dir / "claims.json"
    if not p.is_file():
        return {}
    c = json.loads(p.read_text())
    return {"theorem1": c["theorem1"]["verdict"], "theorem2": c["theorem2"]["verdict"],
            **{f"regularizer {k}": v["verdict"] for k, v in c["regularizer"].items()}}


def compare_reports(runs_dir, other, out_dir, expected=None) -> dict:
    """Write ``out_dir/compare.{md,csv,json}``; returns the written paths' count and matches."""
    other_runs = runs_folder(other)
    rows, unmatched = compare_long(_values(runs_dir), _values(other_runs))
    out_dir = Path(out_dir)
    verdicts = (_verdicts(out_dir.parent), _verdicts(Path(other))
                or _verdicts(other_runs.parent / "report"))
    text = markdown_text(rows, unmatched, runs_dir, other, verdicts if any(verdicts) else None)
    with atomic_path(out_dir / "compare.md", fsync=False) as tmp:
        tmp.write_text(text)
    frame = pd.DataFrame(rows, columns=["dataset", "point", "metric", "this", "other", "diff",
                                        "diff_pct", "seeds", "p"])
    with atomic_path(out_dir / "compare.csv", fsync=False) as tmp:
        frame.assign(seeds=frame["seeds"].map(lambda s: " ".join(map(str, s)))).to_csv(
            tmp, index=False)
    clean = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
              for k, v in r.items()} for r in rows]
    write_json(out_dir / "compare.json", {"this": str(runs_dir), "other": str(other),
                                          "rows": clean, **unmatched})
    return {"matched": len({(r["dataset"], r["point"]) for r in rows}), **unmatched}
