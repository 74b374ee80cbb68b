"""Which figures a report writes, from the job names and each dataset's evaluate config: the
workflow's report rule declares its outputs from ``expected_figures`` while Snakemake parses
the Snakefile, so this module imports no plotting library, no torch and no scipy
(``reflowma.report.figures`` draws them)."""

from __future__ import annotations

from reflowma.data.catalog import TOYS, image_layout
from reflowma.infra.runs import parse_job, parse_point
from reflowma.report.collect import num
from reflowma.report.points import baseline_of


def file_stem(name: str) -> str:
    """A table or dataset name as a file name (``8gaussians/nfe~1`` -> ``8gaussians_nfe1``)."""
    return name.replace("/", "_").replace("~", "").replace(" ", "")


def dataset_kinds(evaluate_cfg: dict) -> list[str]:
    """The figure kinds particular to a dataset, from its evaluate config (whatever the grid
    calls the dataset): ``local`` where the marginal audit and its local terms are on;
    ``samples`` for 2D toys and point files (a placeholder says so where a file has more than 2
    dimensions); ``images`` where the samples are images (``data.catalog.image_layout``: mnist,
    cifar10, the user's ``images``, digits with ``layout: image``)."""
    data = evaluate_cfg.get("data") or {}
    name = data.get("name")
    kinds = []
    audit = evaluate_cfg.get("audit") or {}
    if audit.get("enabled", True) and audit.get("local", True):
        kinds.append("local")
    if name in TOYS or name == "file":
        kinds.append("samples")
    if name is not None and image_layout(data):
        kinds.append("images")
    return kinds


def heat_groups(methods) -> dict:
    """lam x K heatmap groups: ``{file suffix: {fixed: [(axis, value)], methods}}``, one group
    per value combination of the other axes (the suffix names the ones that vary); each group
    also gets the lam-0 control of its points (``points.baseline_of``), so a grid keeping lam 0
    once still fills that row. Empty unless lam and K both have more than one value."""
    pts = {m: parse_point(m) for m in methods}
    pts = {m: p for m, p in pts.items() if "lam" in p and "K" in p}
    if len({p["lam"] for p in pts.values()}) < 2 or len({p["K"] for p in pts.values()}) < 2:
        return {}
    others = [k for k in next(iter(pts.values())) if k not in ("lam", "K")]
    keyed = {}
    for m, p in pts.items():
        if num(p["lam"]) != 0:
            keyed.setdefault(tuple(p.get(k) for k in others), []).append(m)
    vary = [i for i, _ in enumerate(others) if len({key[i] for key in keyed}) > 1]
    names = tuple(pts)  # one list for every baseline_of call (it memoises per list)
    order = {m: i for i, m in enumerate(names)}
    groups = {}
    for key, ms in keyed.items():
        bases = {baseline_of(m, names) for m in ms} - {None}
        fixed = [(others[i], key[i]) for i in vary]
        suffix = file_stem("_".join(f"{k}{v}" for k, v in fixed))
        groups[suffix] = {"fixed": fixed, "methods": sorted(set(ms) | bases, key=order.__getitem__)}
    return groups


def expected_figures(jobs, evaluate_configs: dict | None = None) -> list[dict]:
    """The figures a report of these evaluate jobs writes (placeholders stand in where data
    are missing): ``[{kind, dataset, stem}]`` with ``stem`` the file name without extension.
    ``evaluate_configs``: dataset -> one of its resolved evaluate configs (``data`` and
    ``audit`` are read); a dataset without one is taken for the registered dataset of that
    name, audit on. The workflow's report rule declares its outputs from this."""
    by_ds = {}
    for j in jobs:
        p = parse_job(j)
        if p["dataset"] is not None and p["point"] is not None:
            by_ds.setdefault(p["dataset"], [])
            if p["point"] not in by_ds[p["dataset"]]:
                by_ds[p["dataset"]].append(p["point"])
    out = []
    for ds, methods in by_ds.items():
        f = file_stem(ds)
        cfg = (evaluate_configs or {}).get(ds) or {"data": {"name": ds}}
        kinds = dataset_kinds(cfg)
        first = ["nfe", "training", *(k for k in kinds if k == "local"), "tm_marginal"]
        out += [{"kind": k, "dataset": ds, "stem": f"{k}_{f}"} for k in first]
        out += [{"kind": "heatmap", "dataset": ds,
                 "stem": f"heatmap_{f}" + (f"_{s}" if s else "")} for s in heat_groups(methods)]
        out += [{"kind": k, "dataset": ds, "stem": f"{k}_{f}"} for k in kinds if k != "local"]
    return out


def expected_stems(jobs, evaluate_configs: dict | None = None) -> list[str]:
    return [f["stem"] for f in expected_figures(jobs, evaluate_configs)]
