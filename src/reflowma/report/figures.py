"""Report figures (matplotlib Agg + seaborn), each written as PNG and PDF.

* ``nfe_<dataset>``: metrics vs NFE per method (mean over seeds, ±1 std band), with the teacher
  (Euler at the same NFE, dashed) and its many-step ceiling (dotted) as references;
* ``heatmap_<dataset>[_<other axes>]``: lam x K heatmaps per metric and NFE (only if both
  axes have more than one value);
* ``training_<dataset>``: training curves from the Sacred metrics (students per method, and
  the teacher);
* ``local_<dataset>``: local per-window KL bars and the telescoping TV sums (only with audit
  data);
* ``samples_<dataset>``: teacher and student samples on the same fixed z (2D data), folded
  points of the sampler map (det <= 0) in another colour.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from reflowma.infra.runs import latest_completed, parse_point  # noqa: E402
from reflowma.infra.storage.atomic import atomic_path  # noqa: E402
from reflowma.report import tables as T  # noqa: E402

log = logging.getLogger(__name__)
logging.getLogger("fontTools").setLevel(logging.WARNING)  # PDF font subsetting chatter

NFE_PANELS = ["w2_paired_teacher", "w2_data", "mmd_data", "kl", "fold_fraction"]
HEAT_METRICS = ["w2_paired_teacher", "w2_data", "mmd_data", "kl"]
SYMBOL = {"lam": "λ", "ws": "ws", "K": "K", "logdet": "logdet", "eps": "ε", "warm": "warm"}
TEACHER_COLOR, CEILING_COLOR, FOLD_COLOR = "0.15", "0.45", "#d62728"
DATA_COLOR, STUDENT_COLOR = "#2ca02c", "#1f77b4"
N_SAMPLES, SAMPLE_SEED = 1000, 0
RC = {"axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
      "ytick.labelsize": 8, "legend.title_fontsize": 8, "savefig.dpi": 150,
      "figure.dpi": 100, "pdf.fonttype": 42}


def style():
    sns.set_theme(context="paper", style="whitegrid", rc=RC)


def axis_label(metric: str) -> str:
    label, unit = T.METRICS.get(metric, (metric, ""))
    return f"{label} [{unit}]" if unit else label


def short_labels(methods) -> dict:
    """Method -> legend label, naming only the axes that vary (``K=2, λ=0.1``)."""
    pts = {m: parse_point(m) for m in methods}
    keys = []
    for p in pts.values():
        keys += [k for k in p if k not in keys]
    vary = [k for k in keys if len({repr(p.get(k)) for p in pts.values()}) > 1] or keys[:1]
    return {m: ", ".join(f"{SYMBOL.get(k, k)}={p[k]}" for k in vary if k in p) or m
            for m, p in pts.items()}


def palette(methods) -> dict:
    n = len(methods)
    cols = sns.color_palette("tab10" if n <= 10 else "husl", n)
    return dict(zip(methods, cols, strict=True))


def save(fig, out_dir: Path, stem: str) -> list[Path]:
    paths = []
    for ext in ("png", "pdf"):
        p = out_dir / f"{stem}.{ext}"
        with atomic_path(p, fsync=False) as tmp:
            fig.savefig(tmp, format=ext, bbox_inches="tight")
        paths.append(p)
    plt.close(fig)
    return paths


def _legend_below(fig, handles, labels, ncol=None):
    ncol = ncol or (len(labels) if len(labels) <= 6 else 4)
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol,
               frameon=False)


def _fname(s: str) -> str:
    return s.replace("/", "_").replace("~", "").replace(" ", "")


# --------------------------------------------------------------------------- NFE sweep


def _mean_std(df: pd.DataFrame, x: str) -> pd.DataFrame:
    g = df.groupby(x)["value"]
    return pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1).fillna(0.0)}).sort_index()


def _band(ax, xs, ms, color, label, dodge=1.0, **kw):
    x = np.asarray(xs, dtype=float) * dodge
    ax.plot(x, ms["mean"], color=color, label=label, **kw)
    if (ms["std"] > 0).any():
        ax.fill_between(x, ms["mean"] - ms["std"], ms["mean"] + ms["std"], color=color,
                        alpha=0.12, linewidth=0)


MAX_LINES = 8  # methods per panel before the NFE figure is split into one column per K


def fig_nfe(long: pd.DataFrame, dataset: str, methods, out_dir: Path) -> list[Path]:
    """Metrics (rows of panels when split by K) vs NFE; with more than ``MAX_LINES`` methods
    and several K, one column of panels per K (the colour then names the other axes)."""
    d = long[(long["dataset"] == dataset) & (long["nfe"] >= 0)]
    panels = [m for m in NFE_PANELS if m in set(d["metric"])]
    if d.empty or not panels:
        return []
    pts = {m: parse_point(m) for m in methods}
    Ks = sorted({p["K"] for p in pts.values() if "K" in p})
    split = len(methods) > MAX_LINES and len(Ks) > 1 and all("K" in p for p in pts.values())
    if split:  # panels: metric x K; colour: the method without K
        rest = {m: "/".join(s for s in m.split("/") if not s.startswith("K~")) or m
                for m in methods}
        keys = list(dict.fromkeys(rest.values()))
        labels = {m: short_labels(keys)[rest[m]] for m in methods}
        colors = {m: palette(keys)[rest[m]] for m in methods}
        cells = [(metric, K) for metric in panels for K in Ks]
        ncol = len(Ks)
    else:
        labels, colors = short_labels(methods), palette(methods)
        cells = [(metric, None) for metric in panels]
        ncol = min(len(panels), 3)
    nfes = sorted(d["nfe"].unique())
    nrow = math.ceil(len(cells) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.9 * nrow), squeeze=False)
    # methods are dodged sideways (at most ±0.15 octave) so that equal values stay visible
    n_line = len(set(labels.values()))
    step = min(0.06, 0.3 / max(n_line - 1, 1))
    order = list(dict.fromkeys(labels.values()))
    dodge = {m: 2 ** (step * (order.index(labels[m]) - (n_line - 1) / 2)) for m in methods}
    for ax, (metric, K) in zip(axes.flat, cells, strict=False):
        dm = d[d["metric"] == metric]
        ceil = long[(long["dataset"] == dataset) & (long["method"] == T.TEACHER_CEILING)
                    & (long["metric"] == metric)]["value"]
        if len(ceil):
            ax.axhline(ceil.mean(), color=CEILING_COLOR, linestyle=":", linewidth=1.3,
                       label="teacher ceiling (many steps)", zorder=1)
        te = dm[dm["method"] == T.TEACHER_EULER]
        if not te.empty:
            ms = _mean_std(te, "nfe")
            ax.plot(ms.index, ms["mean"], color=TEACHER_COLOR, linestyle="--", linewidth=1.2,
                    marker="s", markersize=3, label="teacher (Euler, same NFE)", zorder=2)
        for m in methods:
            if K is not None and pts[m]["K"] != K:
                continue
            sel = dm[dm["method"] == m]
            if not sel.empty:
                ms = _mean_std(sel, "nfe")
                _band(ax, ms.index, ms, colors[m], labels[m], dodge[m], marker="o",
                      markersize=3.5, linewidth=1.4, zorder=3)
        ax.set_xscale("log", base=2)
        ax.set_xticks(nfes, [str(n) for n in nfes])
        ax.minorticks_off()
        ax.set_xlabel("NFE (sampler steps)")
        ax.set_ylabel(axis_label(metric))
        ax.set_title(T.METRICS[metric][0] + (f", K={K}" if K is not None else ""))
        vals = dm["value"]
        if metric == "fold_fraction":
            ax.set_ylim(-0.02, max(0.1, float(vals.max()) * 1.15))
        elif (vals > 0).all() and vals.max() / vals.min() > 20:
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(cells):]:
        ax.set_visible(False)
    handles, labs = _unique_legend(axes.flat)
    order = sorted(range(len(labs)), key=lambda i: labs[i].startswith("teacher"))
    handles, labs = [handles[i] for i in order], [labs[i] for i in order]
    fig.suptitle(f"{dataset}: few-step sampling vs NFE (lines: mean over seeds, "
                 "bands: ±1 std)", y=1.0)
    fig.tight_layout()
    _legend_below(fig, handles, labs)
    return save(fig, out_dir, f"nfe_{_fname(dataset)}")


def _unique_legend(axes):
    seen = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(lab, h)
    return list(seen.values()), list(seen)


# --------------------------------------------------------------------------- heatmaps


def heat_groups(methods) -> dict:
    """lam x K heatmap groups: ``{file suffix: {fixed: [(axis, value)], methods}}``, one group
    per value combination of the other axes (the suffix names the ones that vary); each group
    also gets the lam-0 control of its points (``tables.baseline_of``), so a grid keeping lam 0
    once still fills that row. Empty unless lam and K both have more than one value."""
    pts = {m: parse_point(m) for m in methods}
    pts = {m: p for m, p in pts.items() if "lam" in p and "K" in p}
    if len({p["lam"] for p in pts.values()}) < 2 or len({p["K"] for p in pts.values()}) < 2:
        return {}
    others = [k for k in next(iter(pts.values())) if k not in ("lam", "K")]
    keyed = {}
    for m, p in pts.items():
        if T._num(p["lam"]) != 0:
            keyed.setdefault(tuple(p.get(k) for k in others), []).append(m)
    vary = [i for i, _ in enumerate(others) if len({key[i] for key in keyed}) > 1]
    groups = {}
    for key, ms in keyed.items():
        bases = {T.baseline_of(m, list(pts)) for m in ms} - {None}
        fixed = [(others[i], key[i]) for i in vary]
        suffix = _fname("_".join(f"{k}{v}" for k, v in fixed))
        groups[suffix] = {"fixed": fixed,
                          "methods": sorted(set(ms) | bases, key=list(pts).index)}
    return groups


def expected_figures(jobs) -> list[dict]:
    """The figures a report of these evaluate jobs writes (placeholders stand in where data
    are missing): ``[{kind, dataset, stem}]`` with ``stem`` the file name without extension.
    The workflow's report rule declares its outputs from this."""
    from reflowma.data.toys import TOYS
    from reflowma.infra.runs import parse_job

    by_ds = {}
    for j in jobs:
        p = parse_job(j)
        if p["dataset"] is not None and p["point"] is not None:
            by_ds.setdefault(p["dataset"], [])
            if p["point"] not in by_ds[p["dataset"]]:
                by_ds[p["dataset"]].append(p["point"])
    out = []
    for ds, methods in by_ds.items():
        f = _fname(ds)
        kinds = ["nfe", "training", "local"]
        out += [{"kind": k, "dataset": ds, "stem": f"{k}_{f}"} for k in kinds]
        out += [{"kind": "heatmap", "dataset": ds,
                 "stem": f"heatmap_{f}" + (f"_{s}" if s else "")} for s in heat_groups(methods)]
        if ds in TOYS:
            out.append({"kind": "samples", "dataset": ds, "stem": f"samples_{f}"})
    return out


def expected_stems(jobs) -> list[str]:
    return [f["stem"] for f in expected_figures(jobs)]


def fig_heatmaps(long: pd.DataFrame, dataset: str, methods, out_dir: Path) -> list[Path]:
    """Text: the mean over seeds (and % above the panel's lowest); colour: the cell's place
    between the lowest and the highest cell of its panel."""
    groups = heat_groups(methods)
    if not groups:
        return []
    pts = {m: parse_point(m) for m in methods}
    d = long[(long["dataset"] == dataset) & (long["nfe"] >= 0)]
    metrics = [m for m in HEAT_METRICS if m in set(d["metric"])]
    nfes = sorted(d["nfe"].unique())
    if not metrics or not nfes:
        return []
    cmap = sns.color_palette("rocket_r", as_cmap=True)
    paths = []
    for suffix, group in groups.items():
        ms, vary = group["methods"], group["fixed"]
        lams = sorted({pts[m]["lam"] for m in ms})
        Ks = sorted({pts[m]["K"] for m in ms})
        nr, nc = len(metrics), len(nfes)
        fig, axes = plt.subplots(nr, nc, squeeze=False, figsize=(2.5 * nc + 1.2, 2.1 * nr + 0.4))
        meshes = []
        for i, metric in enumerate(metrics):
            for j, nfe in enumerate(nfes):
                ax = axes[i, j]
                sel = d[(d["metric"] == metric) & (d["nfe"] == nfe) & d["method"].isin(ms)]
                grid = np.full((len(lams), len(Ks)), np.nan)
                for (lam, K), v in sel.groupby(
                        [[pts[m]["lam"] for m in sel["method"]],
                         [pts[m]["K"] for m in sel["method"]]])["value"].mean().items():
                    grid[lams.index(lam), Ks.index(K)] = v
                if np.isnan(grid).all():
                    ax.set_axis_off()
                    continue
                lo, hi = np.nanmin(grid), np.nanmax(grid)
                rel = (grid - lo) / (hi - lo) if hi > lo else np.zeros_like(grid)
                meshes.append(ax.pcolormesh(np.ma.masked_invalid(rel), cmap=cmap, vmin=0,
                                            vmax=1, edgecolors="white", linewidth=1))
                for a in range(len(lams)):
                    for b in range(len(Ks)):
                        v = grid[a, b]
                        txt = "n/a" if np.isnan(v) else f"{v:.4g}"
                        if lo > 0 and not np.isnan(v) and v > lo:
                            pct = 100 * (v - lo) / lo
                            txt += f"\n(+{pct:.0f}%)" if pct >= 10 else f"\n(+{pct:.2g}%)"
                        r, g, bl, _ = cmap(float(np.nan_to_num(rel[a, b])))
                        dark = 0.299 * r + 0.587 * g + 0.114 * bl < 0.5
                        ax.text(b + 0.5, a + 0.5, txt, ha="center", va="center", fontsize=7,
                                color="white" if dark else "black")
                ax.set_xticks(np.arange(len(Ks)) + 0.5, [str(k) for k in Ks])
                ax.set_yticks(np.arange(len(lams)) + 0.5, [str(v) for v in lams])
                ax.grid(False)
                unit = T.METRICS[metric][1]
                ax.set_title(f"{T.METRICS[metric][0]}" + (f" [{unit}]" if unit else "")
                             + f"\nNFE {nfe}", fontsize=8)
                ax.set_xlabel("K (windows)" if i == nr - 1 else "")
                ax.set_ylabel("λ (regularizer weight)" if j == 0 else "")
        fig.tight_layout(rect=(0, 0, 0.9, 0.97))
        cax = fig.add_axes((0.92, 0.15, 0.015, 0.7))
        if meshes:
            cb = fig.colorbar(meshes[0], cax=cax)
            cb.set_ticks([0, 1], labels=["lowest\nin panel\n(best)", "highest\nin panel"])
        extra = f" ({', '.join(f'{SYMBOL.get(k, k)}={v}' for k, v in vary)})" if vary else ""
        if any(T.is_reg_axis(k) and pts[m].get(k) != v for m in ms for k, v in vary):
            extra += "; λ=0 row: the shared λ=0 control"
        fig.suptitle(f"{dataset}: λ × K, mean over seeds{extra}", y=0.995)
        paths += save(fig, out_dir, f"heatmap_{_fname(dataset)}" + (f"_{suffix}" if suffix
                                                                     else ""))
    return paths


# --------------------------------------------------------------------------- training


def training_long(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for stage in ("reflow", "teacher"):
        done = latest_completed(runs, stage)
        for r in done.itertuples():
            for name, series in (r.metrics or {}).items():
                if not name.startswith("train.") or name == "train.lr":
                    continue
                steps, values = series.get("steps", []), series.get("values", [])
                for s, v in zip(steps, values, strict=False):
                    rows.append({"stage": stage, "dataset": r.dataset,
                                 "method": r.point if stage == "reflow" else "teacher",
                                 "seed": r.seed, "metric": name.split(".", 1)[1],
                                 "step": int(s), "value": T._num(v), "run_id": r.run_id})
    return pd.DataFrame(rows, columns=["stage", "dataset", "method", "seed", "metric", "step",
                                       "value", "run_id"])


def _xy(df):
    ms = _mean_std(df, "step")
    return ms.index, ms


TRAIN_LABELS = {"loss": "total loss", "tm": "trajectory-matching loss",
                "window_start": "window-start loss", "reg": "regularizer (surrogate)",
                "reg_logdet": "regularizer: −log|det|", "reg_folded": "folded fraction (batch)"}


def _warm_start_step(runs: pd.DataFrame, dataset: str):
    """The step where the regularizer switches on (if it is the same for all regularized
    students of the dataset), else None."""
    done = latest_completed(runs, "reflow")
    steps = set()
    for r in done[done["dataset"] == dataset].itertuples():
        reg, train = (r.config or {}).get("regularizer") or {}, (r.config or {}).get("train") or {}
        if T._num(reg.get("weight")) > 0 and "steps" in train:
            steps.add(int(float(reg.get("warm_start") or 0.0) * int(train["steps"])))
    return steps.pop() if len(steps) == 1 else None


def fig_training(tl: pd.DataFrame, runs: pd.DataFrame, dataset: str, methods,
                 out_dir: Path) -> list[Path]:
    d = tl[(tl["dataset"] == dataset)].dropna(subset=["value"])
    if d.empty:
        return []
    student = [m for m in ("loss", "tm", "window_start", "reg") if
               m in set(d.loc[d["stage"] == "reflow", "metric"])]
    panels = [("reflow", m) for m in student]
    if not d[(d["stage"] == "teacher") & (d["metric"] == "loss")].empty:
        panels.append(("teacher", "loss"))
    labels, colors = short_labels(methods), palette(methods)
    warm = _warm_start_step(runs, dataset)
    ncol = min(len(panels), 3)
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.8 * nrow), squeeze=False)
    for ax, (stage, metric) in zip(axes.flat, panels, strict=False):
        dm = d[(d["stage"] == stage) & (d["metric"] == metric)]
        if stage == "teacher":
            _band(ax, *_xy(dm), TEACHER_COLOR, "teacher")
            ax.set_title("teacher: flow-matching loss")
            ax.set_ylabel("flow-matching loss [per batch]")
        else:
            for m in methods:
                sel = dm[dm["method"] == m]
                if not sel.empty:
                    _band(ax, *_xy(sel), colors[m], labels[m])
            if warm is not None:
                ax.axvline(warm, color="0.4", linestyle=":", linewidth=1,
                           label="regularizer switched on (warm start)")
            ax.set_title(f"students: {TRAIN_LABELS.get(metric, metric)}")
            ax.set_ylabel(f"{TRAIN_LABELS.get(metric, metric)} [per batch]")
        ax.set_xlabel("training step")
        if (dm["value"] > 0).all() and dm["value"].max() / dm["value"].min() > 20:
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles, labs = _unique_legend(axes.flat)
    xs = d.loc[d["stage"] == "reflow", "step"]
    if len(xs):
        for ax, (stage, _) in zip(axes.flat, panels, strict=False):
            if stage == "reflow":
                ax.set_xlim(0, xs.max() * 1.02)
    fig.suptitle(f"{dataset}: training curves (lines: mean over seeds, bands: ±1 std)", y=1.0)
    fig.tight_layout()
    _legend_below(fig, handles, labs)
    return save(fig, out_dir, f"training_{_fname(dataset)}")


# --------------------------------------------------------------------------- local audit


def fig_local(long: pd.DataFrame, dataset: str, methods, out_dir: Path) -> list[Path]:
    d = long[(long["dataset"] == dataset) & (long["nfe"] == -1)]
    loc = d[d["metric"].str.match(r"local_kl_w\d+$")]
    if loc.empty:
        return []
    labels, colors = short_labels(methods), palette(methods)
    present = [m for m in methods if m in set(loc["method"])]
    loc = loc.assign(window=[int(s.rsplit("w", 1)[1]) for s in loc["metric"]],
                     label=[labels[m] for m in loc["method"]])
    tele = d[d["metric"].isin(["tele_tv_final", "tele_sum_tv", "tele_pinsker_sum"])]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), width_ratios=[1, 1.25])
    ax = axes[0]
    sns.barplot(loc, x="window", y="value", hue="label", errorbar="sd", ax=ax,
                palette={labels[m]: colors[m] for m in present},
                hue_order=[labels[m] for m in present], capsize=0.1, err_kws={"linewidth": 1})
    ax.set_xlabel(r"window $k$ (student step $t_k \to t_{k+1}$)")
    ax.set_ylabel(r"local KL$_k$ [nats]")
    ax.set_title(r"local KL$_k$: student step from $p_{t_k}$ vs teacher $p_{t_{k+1}}$", pad=26)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(4, len(present)),
              frameon=False, fontsize=7)
    ax = axes[1]
    if tele.empty:
        ax.set_axis_off()
    else:
        names = {"tele_tv_final": r"TV$(q_1, p_1)$ (final)",
                 "tele_sum_tv": r"$\Sigma_k$ TV$_k$",
                 "tele_pinsker_sum": r"$\Sigma_k \sqrt{\mathrm{KL}_k/2}$"}
        tele = tele.assign(quantity=[names[m] for m in tele["metric"]],
                           label=[labels[m] for m in tele["method"]])
        sns.barplot(tele, x="label", y="value", hue="quantity", errorbar="sd", ax=ax,
                    order=[labels[m] for m in present], hue_order=list(names.values()),
                    palette=["0.35", "#4c72b0", "#dd8452"], capsize=0.1,
                    err_kws={"linewidth": 1})
        ax.set_xlabel("method")
        ax.set_ylabel("total variation [0–1]")
        ax.set_title(r"telescoping bound: TV$(q_1,p_1) \leq \Sigma_k$ TV$_k \leq "
                     r"\Sigma_k \sqrt{\mathrm{KL}_k/2}$", pad=26)
        if len(present) > 4:
            ax.tick_params(axis="x", rotation=30)
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False,
                  fontsize=7)
    fig.suptitle(f"{dataset}: local audit of the K-step sampler (NFE = K; bars: mean over "
                 "seeds, whiskers: ±1 std)", y=1.0)
    fig.tight_layout()
    return save(fig, out_dir, f"local_{_fname(dataset)}")


# --------------------------------------------------------------------------- samples


def _sample_runs(runs: pd.DataFrame, dataset: str):
    ev = latest_completed(runs, "evaluate")
    ev = ev[(ev["dataset"] == dataset) & ev["point"].notna()]
    if ev.empty:
        return None, ev
    seed = int(ev["seed"].min())
    return seed, ev[ev["seed"] == seed]


def fig_samples(runs: pd.DataFrame, dataset: str, methods, out_dir: Path) -> list[Path]:
    import torch
    from matplotlib.lines import Line2D

    from reflowma import data
    from reflowma.core import solvers
    from reflowma.core.seeding import generator
    from reflowma.evaluation import metrics
    from reflowma.stages.common import load_model

    seed, ev = _sample_runs(runs, dataset)
    if seed is None:
        return []
    first = ev.iloc[0]
    # model files: the evaluate run's inputs, else the reflow/teacher runs' output folders
    outs = {r.job: r.out for r in latest_completed(runs).itertuples() if r.out}

    def model_file(inputs, kind, job):
        path = (inputs or {}).get(kind)
        if (not path or not Path(path).is_file()) and job in outs:
            path = str(Path(outs[job]) / f"{kind}.pt")
        return path

    tpath = model_file(first["inputs"], "teacher", f"teacher/{dataset}/seed~{seed}")
    if not tpath or not Path(tpath).is_file():
        warnings.warn(f"samples figure for {dataset}: teacher file {tpath!r} not found",
                      stacklevel=2)
        return []
    teacher, tmeta, _ = load_model(tpath, "teacher")
    if list(tmeta["data_shape"]) != [2]:
        return []
    cfg = first["config"] or {}
    steps, solver = int(cfg.get("teacher_steps", 100)), cfg.get("teacher_solver", "rk4")
    z = torch.randn(N_SAMPLES, 2, generator=torch.Generator().manual_seed(SAMPLE_SEED))
    with torch.no_grad():
        xt = solvers.solve(teacher, z, [0.0, 1.0], steps, solver)[-1].numpy()
    panels = []
    if cfg.get("data"):
        xd = data.load(cfg["data"], N_SAMPLES, generator(SAMPLE_SEED, "report-samples"))
        panels.append(("data", xd.reshape(N_SAMPLES, -1).numpy(), None, "data"))
    panels.append(("teacher", xt, None, f"teacher ({solver}, {steps} steps)"))
    labels = short_labels(methods)
    by_point = {r.point: r for r in ev.itertuples()}
    for m in methods:
        r = by_point.get(m)
        spath = model_file(r.inputs if r is not None else None, "student",
                           f"reflow/{dataset}/seed~{seed}/{m}")
        if not spath or not Path(spath).is_file():
            continue
        student, smeta, _ = load_model(spath, "student")
        K = int(smeta["K"])
        grid = solvers.sample_grid(K, K)

        def f(x, student=student, grid=grid):
            return solvers.euler_sample(student, x, grid, grad=True)

        with torch.enable_grad():
            J = metrics.jacobian(f, z).double()
        folded = (torch.linalg.det(J) <= 0).numpy()
        y = solvers.euler_sample(student, z, grid).numpy()
        panels.append((m, y, folded, f"{labels[m]}\nNFE {K}, folded {folded.mean():.1%}"))
    n = len(panels)
    ncol = min(n, 3 if n <= 6 else 4)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.8 * ncol, 2.9 * nrow), squeeze=False,
                             sharex=True, sharey=True)
    lim = float(np.quantile(np.abs(np.concatenate([p[1] for p in panels])), 0.995)) * 1.1
    dot = {"s": 2.5, "linewidths": 0, "rasterized": True}
    for ax, (name, y, folded, title) in zip(axes.flat, panels, strict=False):
        if name == "data":
            ax.scatter(y[:, 0], y[:, 1], color=DATA_COLOR, **dot)
        elif name == "teacher":
            ax.scatter(y[:, 0], y[:, 1], color=TEACHER_COLOR, **dot)
        else:
            ax.scatter(xt[:, 0], xt[:, 1], color="0.82", **dot)
            ax.scatter(y[~folded, 0], y[~folded, 1], color=STUDENT_COLOR, **dot)
            ax.scatter(y[folded, 0], y[folded, 1], color=FOLD_COLOR, zorder=3,
                       **{**dot, "s": 5})
        ax.set_title(title, fontsize=8)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_visible(False)
            continue
        last_in_column = i + ncol >= n  # no panel below: this one carries the x axis
        ax.xaxis.set_tick_params(labelbottom=last_in_column)
        ax.set_xlabel("$x_1$" if last_in_column else "")
        ax.set_ylabel("$x_2$" if i % ncol == 0 else "")

    def proxy(color):
        return Line2D([], [], linestyle="", marker="o", markersize=4, color=color)

    handles = [proxy(DATA_COLOR), proxy(TEACHER_COLOR), proxy("0.82"), proxy(STUDENT_COLOR),
               proxy(FOLD_COLOR)]
    labs = ["data", "teacher", "teacher (behind students)", "student",
            "student, folded (det ∂y/∂z ≤ 0)"]
    fig.suptitle(f"{dataset}: samples from the same {N_SAMPLES} noise draws z "
                 f"(models of seed~{seed})", y=1.0)
    fig.tight_layout()
    _legend_below(fig, handles, labs, ncol=5 if ncol >= 3 else 2)
    return save(fig, out_dir, f"samples_{_fname(dataset)}")


# --------------------------------------------------------------------------- all


def placeholder(out_dir: Path, stem: str, why: str) -> list[Path]:
    """A figure that says why it is empty (so an expected output file always exists)."""
    fig, ax = plt.subplots(figsize=(5, 1.6))
    ax.set_axis_off()
    ax.text(0.5, 0.5, f"{stem}: no figure\n{why}", ha="center", va="center", fontsize=9,
            wrap=True)
    return save(fig, out_dir, stem)


def make_figures(runs: pd.DataFrame, tables, out_dir, expected=()) -> list[Path]:
    """Every figure for every dataset of the tables; returns the written paths. ``expected``:
    stems that must exist afterwards (``expected_stems``): placeholders fill the gaps."""
    out_dir = Path(out_dir)
    ev = latest_completed(runs, "evaluate")
    ev = ev[ev["point"].notna() & ev["dataset"].notna()]
    long = T.eval_long(ev)
    tl = training_long(runs)
    datasets = []
    for t in tables:
        if t.dataset not in datasets:
            datasets.append(t.dataset)
    paths = []
    with plt.rc_context():
        style()
        for ds in datasets:
            t = next(t for t in tables if t.dataset == ds)
            methods = list(t.frame.loc[t.frame["kind"] == "method", "method"])
            for fn, args in ((fig_nfe, (long,)), (fig_heatmaps, (long,)),
                             (fig_training, (tl, runs)), (fig_local, (long,)),
                             (fig_samples, (runs,))):
                try:
                    paths += fn(*args, ds, methods, out_dir)
                except Exception as e:  # noqa: BLE001 - one figure must not stop the report
                    plt.close("all")
                    log.exception("figure %s for %s failed", fn.__name__, ds)
                    warnings.warn(f"figure {fn.__name__} for {ds} failed: {e}", stacklevel=2)
        done = {p.stem for p in paths}
        for stem in expected:
            if stem not in done:
                why = ("no audit data (evaluate.audit.enabled is false?)"
                       if stem.startswith("local_") else
                       "no completed runs with the data it needs (see missing.json)")
                paths += placeholder(out_dir, stem, why)
    return paths
