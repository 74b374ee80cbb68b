"""Report figures (matplotlib Agg + seaborn), each written as PNG and PDF.

* ``nfe_<dataset>``: metrics vs NFE per method (mean over seeds, ±1 std band), with the teacher
  (Euler at the same NFE, dashed) and its many-step ceiling (dotted) as references;
* ``heatmap_<dataset>[_<other axes>]``: lam x K heatmaps per metric and NFE (only if both
  axes have more than one value);
* ``training_<dataset>``: training curves from the Sacred metrics (students per method, and
  the teacher);
* ``local_<dataset>``: local per-window KL bars, the telescoping TV sums and the teacher's
  score error vs t (only with audit data);
* ``tm_marginal_<dataset>``: held-out TM loss against the marginal metrics at NFE = K (paired
  W2, KL), one point per student and seed: the paper's thesis (equal TM, different marginals);
* ``samples_<dataset>``: data, teacher and student samples on the evaluation's z (2D data),
  folded points of the sampler map (det <= 0) in another colour, from the ``samples.npz``
  each evaluate run attached to its record (the report never loads a model);
* ``images_<dataset>``: image data: the PNG sample grids of every student per NFE side by side
  with the teacher's (Euler at the same NFE; many-step ceiling) and the data, read from the
  grids each evaluate run attached to its record.

Metrics, labels and units come from ``reflowma.evaluation.spec``. A figure function raises
``NoData(reason)`` where its data are absent: ``make_figures`` then writes a placeholder that
names the reason. Any other exception fails the report (unless ``keep_going``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from reflowma.evaluation import spec  # noqa: E402
from reflowma.infra.runs import parse_point  # noqa: E402
from reflowma.infra.storage.atomic import atomic_path  # noqa: E402
from reflowma.report import collect as C  # noqa: E402
from reflowma.report import layout  # noqa: E402
from reflowma.report.render import file_stem  # noqa: E402
from reflowma.report.stats import is_reg_axis  # noqa: E402

log = logging.getLogger(__name__)
logging.getLogger("fontTools").setLevel(logging.WARNING)  # PDF font subsetting chatter

SYMBOL = {"lam": "λ", "ws": "ws", "K": "K", "logdet": "logdet", "eps": "ε", "warm": "warm"}
TEACHER_COLOR, CEILING_COLOR, FOLD_COLOR = "0.15", "0.45", "#d62728"
DATA_COLOR, STUDENT_COLOR = "#2ca02c", "#1f77b4"
# per-run reference lines of the NFE figure: (colour, line style, legend)
REF_LINES = {spec.TEACHER_CEILING: (CEILING_COLOR, ":", "teacher ceiling (many steps)"),
             spec.DATA_FLOOR: (DATA_COLOR, "-.", "data floor (two data draws)")}


class NoData(Exception):
    """A figure's data are absent; ``str(err)`` says which."""


class FigureError(RuntimeError):
    """A figure function failed (not for lack of data); the cause is chained."""
RC = {"axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
      "ytick.labelsize": 8, "legend.title_fontsize": 8, "savefig.dpi": 150,
      "figure.dpi": 100, "pdf.fonttype": 42}


def style():
    sns.set_theme(context="paper", style="whitegrid", rc=RC)


def axis_label(metric: str) -> str:
    label, unit = spec.header(metric)
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
    panels = [m.key for m in spec.selected("figure") if m.key in set(d["metric"])]
    if d.empty or not panels:
        raise NoData(f"no per-NFE metric of {dataset} in the evaluate records")
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
        for ref, (color, ls, lab) in REF_LINES.items():
            val = long[(long["dataset"] == dataset) & (long["method"] == ref)
                       & (long["metric"] == metric)]["value"]
            if len(val):
                ax.axhline(val.mean(), color=color, linestyle=ls, linewidth=1.3, label=lab,
                           zorder=1)
        te = dm[dm["method"] == spec.TEACHER_EULER]
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
        ax.set_title(spec.header(metric)[0] + (f", K={K}" if K is not None else ""))
        vals = dm["value"]
        if spec.METRICS.get(metric).unit.startswith("fraction"):
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
    return save(fig, out_dir, f"nfe_{file_stem(dataset)}")


def _unique_legend(axes):
    seen = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(lab, h)
    return list(seen.values()), list(seen)


# --------------------------------------------------------------------------- heatmaps


def fig_heatmaps(long: pd.DataFrame, dataset: str, methods, out_dir: Path) -> list[Path]:
    """Text: the mean over seeds (and % above the panel's lowest); colour: the cell's place
    between the lowest and the highest cell of its panel."""
    groups = layout.heat_groups(methods)
    if not groups:
        return []  # not expected: the grid has no lam x K plane
    pts = {m: parse_point(m) for m in methods}
    d = long[(long["dataset"] == dataset) & (long["nfe"] >= 0)]
    metrics = [m.key for m in spec.selected("heatmap") if m.key in set(d["metric"])]
    nfes = sorted(d["nfe"].unique())
    if not metrics or not nfes:
        raise NoData(f"no per-NFE metric of {dataset} in the evaluate records")
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
                label, unit = spec.header(metric)
                ax.set_title(label + (f" [{unit}]" if unit else "")
                             + f"\nNFE {nfe}", fontsize=8)
                ax.set_xlabel("K (windows)" if i == nr - 1 else "")
                ax.set_ylabel("λ (regularizer weight)" if j == 0 else "")
        fig.tight_layout(rect=(0, 0, 0.9, 0.97))
        cax = fig.add_axes((0.92, 0.15, 0.015, 0.7))
        if meshes:
            cb = fig.colorbar(meshes[0], cax=cax)
            cb.set_ticks([0, 1], labels=["lowest\nin panel\n(best)", "highest\nin panel"])
        extra = f" ({', '.join(f'{SYMBOL.get(k, k)}={v}' for k, v in vary)})" if vary else ""
        if any(is_reg_axis(k) and pts[m].get(k) != v for m in ms for k, v in vary):
            extra += "; λ=0 row: the shared λ=0 control"
        fig.suptitle(f"{dataset}: λ × K, mean over seeds{extra}", y=0.995)
        paths += save(fig, out_dir, f"heatmap_{file_stem(dataset)}" + (f"_{suffix}" if suffix
                                                                     else ""))
    return paths


# --------------------------------------------------------------------------- training


def _xy(df):
    ms = _mean_std(df, "step")
    return ms.index, ms


TRAIN_LABELS = {"loss": "total loss", "tm": "trajectory-matching loss",
                "window_start": "window-start loss", "reg": "regularizer (surrogate)",
                "reg_logdet": "regularizer: −log|det|", "reg_folded": "folded fraction (batch)"}


def fig_training(tl: pd.DataFrame, runs: pd.DataFrame, dataset: str, methods,
                 out_dir: Path) -> list[Path]:
    d = tl[(tl["dataset"] == dataset)].dropna(subset=["value"])
    if d.empty:
        raise NoData(f"no training curves of {dataset} in the reflow/teacher records")
    student = [m for m in ("loss", "tm", "window_start", "reg") if
               m in set(d.loc[d["stage"] == "reflow", "metric"])]
    panels = [("reflow", m) for m in student]
    if not d[(d["stage"] == "teacher") & (d["metric"] == "loss")].empty:
        panels.append(("teacher", "loss"))
    if not panels:
        raise NoData(f"no loss curve of {dataset} in the reflow/teacher records (logged: "
                     f"{sorted(set(d['metric']))})")
    labels, colors = short_labels(methods), palette(methods)
    warm = C.warm_start_step(runs, dataset)
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
    return save(fig, out_dir, f"training_{file_stem(dataset)}")


# --------------------------------------------------------------------------- local audit


def fig_local(long: pd.DataFrame, dataset: str, methods, out_dir: Path) -> list[Path]:
    d = long[(long["dataset"] == dataset) & (long["nfe"] == -1)]
    loc = d[d["metric"].str.match(r"local_kl_w\d+$")]
    if loc.empty:
        raise NoData(f"no local audit of {dataset} in the evaluate records "
                     "(evaluate.audit.enabled is false?)")
    labels, colors = short_labels(methods), palette(methods)
    present = [m for m in methods if m in set(loc["method"])]
    loc = loc.assign(window=[int(s.rsplit("w", 1)[1]) for s in loc["metric"]],
                     label=[labels[m] for m in loc["method"]])
    tele = d[d["metric"].isin(["tele_tv_final", "tele_sum_tv", "tele_pinsker_sum"])]
    score = d[(d["method"] == spec.TEACHER) & d["metric"].str.startswith("score_error_t")]
    ratios = [1, 1.25] + ([0.8] if not score.empty else [])
    fig, axes = plt.subplots(1, len(ratios), figsize=(5 * sum(ratios), 3.6),
                             width_ratios=ratios)
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
    if not score.empty:
        ax = axes[2]
        score = score.assign(t=[float(m.rsplit("_t", 1)[1]) for m in score["metric"]])
        ms = _mean_std(score, "t")
        _band(ax, ms.index, ms, TEACHER_COLOR, "teacher", marker="o", markersize=3.5)
        ax.set_xlabel("t (0: noise, 1: data)")
        ax.set_ylabel(axis_label("score_error"))
        ax.set_title("teacher: score error vs exact mixture score", pad=26)
        if (ms["mean"] > 0).all() and ms["mean"].max() / ms["mean"].min() > 20:
            ax.set_yscale("log")
    fig.suptitle(f"{dataset}: local audit of the K-step sampler (NFE = K; bars: mean over "
                 "seeds, whiskers: ±1 std)", y=1.0)
    fig.tight_layout()
    return save(fig, out_dir, f"local_{file_stem(dataset)}")


# --------------------------------------------------------------------------- samples


def fig_samples(runs: pd.DataFrame, dataset: str, methods, out_dir: Path) -> list[Path]:
    """Data, the teacher ceiling and each student at NFE = K (its own number of windows; else
    the largest saved NFE) on the same z, from the runs' ``samples.npz`` (lowest seed)."""
    from matplotlib.lines import Line2D

    got = C.samples(runs, dataset)
    if not got["runs"]:
        raise NoData("; ".join(got["missing"]) or f"no sample sets of {dataset}")
    first = next(iter(got["runs"].values()))
    dim = int(first["dim"])
    if "teacher_ceiling" not in first:
        raise NoData(f"{dataset} has {dim} dimensions: samples are saved only up to 16")
    if dim != 2:
        raise NoData(f"{dataset} has {dim} dimensions: the scatter figure needs 2")
    seed, n_z = got["seed"], len(first["z"])
    xt = first["teacher_ceiling"]
    panels = [("data", first["data"], None, "data"),
              ("teacher", xt, None, "teacher (ceiling: many steps)")]
    labels = short_labels(methods)
    for m in methods:
        arr = got["runs"].get(m)
        if arr is None:
            continue
        nfes = sorted(int(k[len("student_nfe"):]) for k in arr if k.startswith("student_nfe"))
        K = parse_point(m).get("K")
        nfe = K if K in nfes else nfes[-1]
        folded = arr.get(f"fold_nfe{nfe}")
        folded = np.zeros(n_z, bool) if folded is None else folded.astype(bool)
        panels.append((m, arr[f"student_nfe{nfe}"], folded,
                       f"{labels[m]}\nNFE {nfe}, folded {folded.mean():.1%}"))
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
    fig.suptitle(f"{dataset}: samples from the same {n_z} noise draws z "
                 f"(evaluation of seed~{seed})", y=1.0)
    fig.tight_layout()
    _legend_below(fig, handles, labs, ncol=5 if ncol >= 3 else 2)
    return save(fig, out_dir, f"samples_{file_stem(dataset)}")


# --------------------------------------------------------------------------- image grids


def fig_images(runs: pd.DataFrame, dataset: str, methods, out_dir: Path) -> list[Path]:
    """Image data: one row per student (its PNG grid per NFE) under the teacher's row (Euler
    at the same NFEs), with the teacher's many-step ceiling and the data in the first column;
    all grids from the same first 64 noise draws z (lowest seed), read from the PNG artifacts
    of the evaluate runs."""
    got = C.image_grids(runs, dataset)
    if not got["runs"]:
        raise NoData("; ".join(got["missing"]) or f"no image grids of {dataset} (image data "
                     "only: evaluate writes them for [N, C, H, W] samples)")
    refs, labels = got["refs"], short_labels(methods)
    nfes = sorted({n for grids in got["runs"].values() for n in grids})
    # (row title, {nfe: png}, first-column panel (title, png) or None)
    rows = [("teacher (Euler)", {n: refs.get(f"teacher_euler_nfe{n}") for n in nfes},
             ("teacher (ceiling)", refs.get("teacher")))]
    shown = [m for m in methods if m in got["runs"]] + sorted(set(got["runs"]) - set(methods))
    for i, m in enumerate(shown):
        rows.append((labels.get(m, m), got["runs"][m],
                     ("data", refs.get("data")) if i == 0 else None))
    ncol, nrow = 1 + len(nfes), len(rows)
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.1 * ncol, 2.3 * nrow), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()

    def show(ax, path, title):
        if path is None:
            ax.text(0.5, 0.5, "not saved", ha="center", va="center", fontsize=7)
        else:
            img = plt.imread(str(path))
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1,
                      interpolation="nearest")
        ax.set_title(title, fontsize=7)

    for i, (name, grids, first) in enumerate(rows):
        if first is not None:
            show(axes[i, 0], first[1], first[0])
        for j, n in enumerate(nfes):
            show(axes[i, j + 1], grids.get(n), f"{name}\nNFE {n}")
    fig.suptitle(f"{dataset}: samples from the same noise draws z (evaluation of "
                 f"seed~{got['seed']}); rows: teacher, then each student", y=1.0, fontsize=9)
    fig.tight_layout()
    return save(fig, out_dir, f"images_{file_stem(dataset)}")


# --------------------------------------------------------------------------- all


def fig_tm_marginal(long: pd.DataFrame, dataset: str, methods, out_dir: Path) -> list[Path]:
    """Held-out TM loss (x) vs paired W2 and KL (y) at NFE = K, every student and seed."""
    ld = long[(long["dataset"] == dataset) & long["method"].isin(methods)]
    rows = []
    for m in methods:
        K = int(C.num(parse_point(m).get("K", 1)) or 1)
        sel = ld[ld["method"] == m]
        tm = sel[sel["metric"] == "heldout_tm_loss"].set_index("seed")["value"]
        for metric in ("w2_paired_teacher", "kl", "kl_knn"):
            ys = sel[(sel["metric"] == metric) & (sel["nfe"] == K)].set_index("seed")["value"]
            for seed in tm.index.intersection(ys.index):
                rows.append({"method": m, "seed": seed, "metric": metric,
                             "tm": tm[seed], "y": ys[seed]})
    df = pd.DataFrame(rows)
    if df.empty:
        raise NoData(f"no student of {dataset} has both a held-out TM loss and a marginal "
                     "metric at NFE = K")
    metrics = [m for m in ("w2_paired_teacher", "kl", "kl_knn") if m in set(df["metric"])]
    if "kl" in metrics and "kl_knn" in metrics:
        metrics.remove("kl_knn")
    labels, cols = short_labels(methods), palette(methods)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        d = df[df["metric"] == metric]
        for m in methods:
            dm = d[d["method"] == m]
            if not dm.empty:
                ax.scatter(dm["tm"], dm["y"], color=cols[m], label=labels[m], s=28)
        ax.set_xlabel(axis_label("heldout_tm_loss"))
        ax.set_ylabel(axis_label(metric) + " at NFE = K")
    fig.suptitle(f"{dataset}: trajectory-matching loss vs marginals")
    h, lab = axes[0][0].get_legend_handles_labels()
    _legend_below(fig, h, lab)
    fig.tight_layout()
    return save(fig, out_dir, f"tm_marginal_{file_stem(dataset)}")


def placeholder(out_dir: Path, stem: str, why: str) -> list[Path]:
    """A figure that says why it is empty (so an expected output file always exists)."""
    fig, ax = plt.subplots(figsize=(5, 1.6))
    ax.set_axis_off()
    ax.text(0.5, 0.5, f"{stem}: no figure\n{why}", ha="center", va="center", fontsize=9,
            wrap=True)
    return save(fig, out_dir, stem)


PLACEHOLDERS = "placeholders.json"  # stem -> why, next to the figures


def make_figures(runs: pd.DataFrame, tables, out_dir, expected=(),
                 keep_going: bool = False) -> list[Path]:
    """Every figure for every dataset of the tables; returns the written paths.

    ``expected``: stems that must exist afterwards (``expected_stems``). A figure whose data
    are absent (``NoData``) becomes a placeholder naming what is missing. A figure function
    that raises anything else fails the report, unless ``keep_going``: then the traceback is
    logged and the placeholder names the error. ``placeholders.json`` lists every placeholder
    written and why."""
    out_dir = Path(out_dir)
    long = C.eval_long(C.evaluations(runs), runs)
    tl = C.training_long(runs)
    datasets = C.unique(t.dataset for t in tables)
    paths, why = [], {}
    with plt.rc_context():
        style()
        for ds in datasets:
            t = next(t for t in tables if t.dataset == ds)
            methods = list(t.frame.loc[t.frame["kind"] == "method", "method"])
            kinds = {"nfe": (fig_nfe, (long,)), "heatmap": (fig_heatmaps, (long,)),
                     "training": (fig_training, (tl, runs)), "local": (fig_local, (long,)),
                     "samples": (fig_samples, (runs,)), "images": (fig_images, (runs,)),
                     "tm_marginal": (fig_tm_marginal, (long,))}
            for kind, (fn, args) in kinds.items():
                try:
                    paths += fn(*args, ds, methods, out_dir)
                except NoData as e:
                    plt.close("all")
                    why[f"{kind}_{file_stem(ds)}"] = str(e)
                except Exception as e:
                    plt.close("all")
                    if not keep_going:
                        raise FigureError(f"figure {fn.__name__} for {ds} failed: "
                                          f"{type(e).__name__}: {e}") from e
                    log.exception("figure %s for %s failed (--keep-going-figures)",
                                  fn.__name__, ds)
                    why[f"{kind}_{file_stem(ds)}"] = (f"{fn.__name__} failed: "
                                                      f"{type(e).__name__}: {e}")
        done = {p.stem for p in paths}
        written = {}
        for stem in expected:
            if stem not in done:
                base = next((k for k in why if stem == k or stem.startswith(k + "_")), None)
                written[stem] = why.get(base, "no figure function wrote it")
                paths += placeholder(out_dir, stem, written[stem])
    from reflowma.infra.storage.atomic import write_json

    write_json(out_dir / PLACEHOLDERS, written)
    return paths
