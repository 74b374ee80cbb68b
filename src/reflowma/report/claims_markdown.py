"""claims.md from ``claims.build``'s dict (claims.json): each claim, its rule, its evidence and
its verdict, in tables of at most ``markdown.WIDTH`` columns."""

from __future__ import annotations

import numpy as np

from reflowma.report import markdown
from reflowma.report.claims import POWER_RULE, RULE
from reflowma.report.collect import num
from reflowma.report.stats import MAX_SEEDS


def fmt(x, digits=4) -> str:
    x = num(x)
    return "–" if np.isnan(x) else f"{x:.{digits}g}"


def change(value, pct, relative: bool, signed: bool = True) -> str:
    """``+5.12 %`` where the change is relative to the control, else ``+0.0012 abs``."""
    v = num(pct if relative else value)
    if np.isnan(v):
        return "–"
    text = f"{v:+.3g}" if signed else f"{v:.3g}"
    return text + (" %" if relative else " abs")


def seeds_text(m: dict) -> str:
    if m["outcome"] == "untested":
        return "–"
    if m["seeds_needed"] is None:
        return "–" if num(m["mean_diff"]) == 0 else f"> {MAX_SEEDS}"
    return str(m["seeds_needed"])


def spread(vals) -> str:
    v = [x for x in vals if not np.isnan(x)]
    if len(v) < 2 or min(v) <= 0:
        return "–"
    return f"{100 * (max(v) / min(v) - 1):.3g} %"


def run_ids(ids) -> str:
    return ", ".join(map(str, ids)) or "–"


def theorem1(t1: dict, figures: dict) -> list[str]:
    out = [f"## Theorem 1: equal trajectory-matching loss, different marginals — "
           f"**{t1['verdict']}**\n"]
    if t1["students"]:
        nfe = str(t1["nfe"])
        out.append(f"Closed-form counterexample ({t1['source']}): Gaussian data, four students "
                   f"with the same TM loss. Rule: supported if the TM losses are equal "
                   f"(relative 1e-9) and the {nfe}-NFE W2 to the data differ by more than "
                   f"1e-3·sqrt(TM).\n")
        out.append(markdown.table(
            ["student", "TM loss", f"W2 @ {nfe} NFE", f"KL @ {nfe} NFE"],
            [[k, fmt(s["tm_loss"]), fmt(s["w2"][nfe]), fmt(s["kl"][nfe])]
             for k, s in t1["students"].items()]))
    g = t1["grid"]
    if g:
        out.append("In this grid (evidence, no verdict: the students differ in more than the "
                   "regularizer): held-out TM loss against the marginals at NFE = K, mean "
                   "over seeds; run ids: the evaluate runs.\n")
        for ds in dict.fromkeys(r["dataset"] for r in g):
            rs = [r for r in g if r["dataset"] == ds]
            out.append(f"{ds}:\n")
            out.append(markdown.table(
                ["student", "held-out TM", "paired W2", "KL", "KL kNN", "MMD²", "run ids"],
                [[r["method"], fmt(r["heldout_tm_loss"]), fmt(r["w2_paired_teacher"]),
                  fmt(r["kl"]), fmt(r["kl_knn"]), fmt(r["mmd_data"]), run_ids(r["run_ids"])]
                 for r in rs]))
            out.append(f"- {ds}: TM loss spread (max/min − 1) "
                       f"{spread([r['heldout_tm_loss'] for r in rs])}, paired W2 spread "
                       f"{spread([r['w2_paired_teacher'] for r in rs])}"
                       + (f"; figure `figures/{figures[ds]}.png`" if ds in figures else "")
                       + "\n")
    return out


def theorem2(t2: dict) -> list[str]:
    out = [f"## Theorem 2: TV_final ≤ Σ_k TV_k ≤ Σ_k sqrt(KL_k/2) — **{t2['verdict']}**\n",
           "Rule: supported if both inequalities hold in every evaluate run with a marginal "
           "audit; untested without one. (The sum of local KLs does not bound the final KL; "
           "that is not claimed.)\n"]
    if not t2["n"]:
        return out + ["No evaluate run has an audit (`evaluate.audit.enabled: true`).\n"]
    out.append(f"TV_final ≤ Σ TV_k in {t2['final_le_sum_tv']}/{t2['n']} runs, "
               f"Σ TV_k ≤ Σ sqrt(KL_k/2) in {t2['sum_tv_le_pinsker']}/{t2['n']} runs "
               "(run id: the evaluate run; folds: the sampler map folds somewhere).\n")
    jobs = [r["job"].removeprefix("evaluate/").split("/", 1) for r in t2["runs"]]
    for ds in dict.fromkeys(j[0] for j in jobs):
        out.append(f"{ds}:\n")
        out.append(markdown.table(
            ["run id", "seed/point", "TV final", "Σ TV_k", "Σ √(KL_k/2)", "holds"],
            [[r["run_id"], j[1], fmt(r["tv_final"]), fmt(r["sum_tv"]), fmt(r["pinsker_sum"]),
              ("yes" if r["final_le_sum_tv"] and r["sum_tv_le_pinsker"] else "NO")
              + ("" if r["valid"] else ", folds")]
             for r, j in zip(t2["runs"], jobs, strict=True) if j[0] == ds], keys=2))
    return out


def regularizer(title: str, r: dict) -> list[str]:
    out = [f"## The regularizer improves few-step marginals: {title} — **{r['verdict']}**\n"]
    if not r["points"]:
        return out + ["No regularized point with a λ = 0 control in this grid.\n"]
    for pt in r["points"]:
        out.append(f"### {pt['dataset']}: {pt['method']} against {pt['control']} — "
                   f"**{pt['verdict']}**\n")
        out.append(markdown.table(
            ["metric", "seeds", "Δ", "p", "outcome", "MDE", "seeds needed"],
            [[m["metric"], len(m["seeds"]),
              change(m["mean_diff"], m["rel_pct"], m["relative"]), fmt(m["p"], 3),
              m["outcome"], change(m["mde"], m["mde_rel_pct"], m["relative"], signed=False),
              seeds_text(m)] for m in pt["metrics"]]))
        tested = [m for m in pt["metrics"] if m["seeds"]]
        if tested:
            m = tested[0]
            out.append(f"Run ids (seeds {', '.join(map(str, m['seeds']))}): regularized "
                       f"{run_ids(m['run_ids'])}; control {run_ids(m['control_run_ids'])}.\n")
    out.append("Tables: `tables/<dataset>_effects.md` (all metrics), "
               "`tables/<dataset>_nfe<K>.md`.\n")
    return out


def markdown_text(c: dict, figures: dict) -> str:
    """claims.md; ``figures``: dataset -> figure stem of TM vs marginals."""
    out = ["# Claims of the paper, tested on these runs\n",
           "Verdicts are computed from the run records by the rule stated with each claim; "
           "`claims.json` holds the same content.\n"]
    out += theorem1(c["theorem1"], figures)
    out += theorem2(c["theorem2"])
    out += ["## How the regularizer claims are judged\n", f"Rule: {c.get('rule', RULE)}\n",
            f"Power: {c.get('power_rule', POWER_RULE)}\n",
            "Columns: Δ = regularized − control (mean over the paired seeds); p: paired t-test "
            "(scipy.stats.ttest_rel); seeds needed: to detect that Δ.\n"]
    for key, title in (("vanilla", "vanilla reflow (K = 1)"),
                       ("piecewise", "piecewise reflow (K > 1)")):
        out += regularizer(title, c["regularizer"][key])
    return markdown.wrap_prose("\n".join(out))
