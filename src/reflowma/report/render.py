"""Rendering tables: Markdown, LaTeX, CSV, the flat ``metrics.json`` and the long CSV of DVC's
NFE plot. Labels and units come from ``reflowma.evaluation.spec``."""

from __future__ import annotations

import math

import numpy as np

from reflowma.evaluation import spec
from reflowma.report.collect import num
from reflowma.report.stats import is_baseline
from reflowma.report.tables import Table


def file_stem(name: str) -> str:
    """A table or dataset name as a file name (``8gaussians/nfe~1`` -> ``8gaussians_nfe1``)."""
    return name.replace("/", "_").replace("~", "").replace(" ", "")


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def flat_metrics(tables) -> dict:
    """``{"<dataset>/<method>/nfe~<n>/<metric>": mean}`` from the tables (methods and the
    references); per-run values (spec ``per`` other than ``nfe``, and tables of per-run
    values) under ``<dataset>/<method>/<metric>``."""
    out = {}
    for t in tables:
        if t.nfe is None:  # the effects table: derived from the others
            continue
        for _, row in t.frame.iterrows():
            method = row["method"].replace(" ", "_").replace("(", "").replace(")", "")
            for m in t.metrics:
                v = row[f"{m}.mean"]
                if _nan(v):
                    continue
                ms, _ = spec.lookup(m)
                per_run = t.nfe < 0 or (ms is not None and ms.per != "nfe")
                key = f"{t.dataset}/{method}/{m}" if per_run else \
                    f"{t.dataset}/{method}/nfe~{t.nfe}/{m}"
                out[key] = float(v)
    return dict(sorted(out.items()))


HEADLINE = {"w2_paired_teacher": "w2", "mmd_data": "mmd"}


def headline(tables, n_missing: int) -> dict:
    """A handful of numbers for ``dvc metrics show`` / ``dvc exp show`` (every number is in
    metrics.json): the missing jobs and, per dataset at its fewest NFE n, the lowest seed-mean
    paired W2 to the teacher (``w2_nfe<n>``) and MMD² to the data (``mmd_nfe<n>``) over the
    students, to 4 significant digits (``dvc metrics show --precision 10`` prints them as
    written; its default rounds to 5 decimals: 2.5e-05 and 2.9e-05 both read 3e-05)."""
    best: dict = {}
    for t in tables:
        if t.nfe is None or t.nfe < 1 or best.get(t.dataset, (t.nfe + 1,))[0] <= t.nfe:
            continue
        students = t.frame[t.frame["kind"] == "method"]
        vals = {}
        for m, name in HEADLINE.items():
            col = f"{m}.mean"
            if col in students and students[col].notna().any():
                vals[f"{name}_nfe{t.nfe}"] = float(f"{float(students[col].min()):.4g}")
        best[t.dataset] = (t.nfe, vals)
    return {"missing": n_missing, **{d: v for d, (_, v) in sorted(best.items())}}


def plot_metrics() -> list[str]:
    return [m.key for m in spec.selected("plot")]


def plot_data(tables) -> str:
    """Long CSV (dataset, method, nfe, seed-mean metrics) for ``dvc plots show/diff``."""
    keys = plot_metrics()
    rows = ["dataset,method,nfe," + ",".join(keys)]
    for t in tables:
        if t.nfe is None or t.nfe < 0:
            continue
        for _, row in t.frame.iterrows():
            vals = [row.get(f"{m}.mean") for m in keys]
            if all(_nan(v) for v in vals):
                continue
            cells = ["" if _nan(v) else f"{v:.6g}" for v in vals]
            rows.append(f"{t.dataset},{row['method']},{t.nfe}," + ",".join(cells))
    return "\n".join(rows) + "\n"


def fmt_num(x, digits: int = 3) -> str:
    x = num(x)
    if np.isnan(x):
        return "–"
    return f"{x:.{digits}g}"


def fmt_p(p) -> str:
    p = num(p)
    if np.isnan(p):
        return ""
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _cell_parts(row, metric):
    mean = row[f"{metric}.mean"]
    if np.isnan(num(mean)):
        return None
    std, lo, hi = row[f"{metric}.std"], row[f"{metric}.ci_lo"], row[f"{metric}.ci_hi"]
    return {"mean": fmt_num(mean), "std": None if np.isnan(num(std)) else fmt_num(std, 2),
            "ci": None if np.isnan(num(lo)) else (fmt_num(lo), fmt_num(hi)),
            "p": fmt_p(row.get(f"{metric}.p")), "best": bool(row.get(f"{metric}.best", False)),
            "n": int(row[f"{metric}.n"])}


def header(t: Table, metric: str) -> tuple[str, str]:
    label, unit = spec.header(metric)
    return label, ("% vs control" if t.effects else unit)


def _row_label(row) -> str:
    if row["kind"] == "reference":
        return row["method"]
    return row["method"] + (" (baseline)" if is_baseline(row["method"]) else "")


def to_markdown(t: Table) -> str:
    from tabulate import tabulate

    heads = ["method", "status", "n"] + [
        f"{lab} ({unit})" if unit else lab for lab, unit in (header(t, m) for m in t.metrics)]
    if t.effects:
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
            "±": r"$\pm$", "−": "-"}


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


def _tex_header(t: Table, metric: str) -> str:
    lab, unit = header(t, metric)
    m = spec.METRICS.get(metric) if metric in spec.METRICS else None
    text = (m.tex if m is not None and m.tex else None) or tex_escape(lab).replace("W2 ",
                                                                                   "$W_2$ ")
    return text + (f" ({tex_escape(unit)})" if unit else "")


def to_latex(t: Table) -> str:
    lead = ["method", "status"] + ([] if t.effects else ["$n$"])
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
        if not t.effects:
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


def concat_csv(tables) -> str:
    import pandas as pd

    frames = []
    for t in tables:
        f = t.frame.copy()
        f.insert(0, "table", t.name)
        frames.append(f)
    if not frames:
        return ""
    return pd.concat(frames, ignore_index=True).to_csv(index=False, float_format="%.10g")
