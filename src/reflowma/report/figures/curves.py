"""Curves: the metrics against the sampler's NFE (``nfe_<dataset>``) and the training curves
from the Sacred metrics (``training_<dataset>``)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from reflowma.evaluation import spec
from reflowma.infra.runs import parse_point
from reflowma.report import collect
from reflowma.report.figures.style import (
    CEILING_COLOR,
    FLOOR_COLOR,
    TEACHER_COLOR,
    NoData,
    axis_label,
    band,
    compact_ticks,
    is_regularized,
    legend_below,
    mean_std,
    palette,
    save,
    scale_y,
    short_labels,
    spread_note,
    unique_legend,
)
from reflowma.report.layout import file_stem

# per-run reference lines of the NFE figure: (colour, line style, legend)
REF_LINES = {spec.TEACHER_CEILING: (CEILING_COLOR, ":", "teacher ceiling (many steps)"),
             spec.DATA_FLOOR: (FLOOR_COLOR, "-.", "data floor (two data draws)")}
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
            ms = mean_std(te, "nfe")
            ax.plot(ms.index, ms["mean"], color=TEACHER_COLOR, linestyle="--", linewidth=1.2,
                    marker="s", markersize=3, label="teacher (Euler, same NFE)", zorder=2)
        for m in methods:
            if K is not None and pts[m]["K"] != K:
                continue
            sel = dm[dm["method"] == m]
            if not sel.empty:
                ms = mean_std(sel, "nfe")
                band(ax, ms.index, ms, colors[m], labels[m], dodge[m], marker="o",
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
        else:
            scale_y(ax, vals)
    for ax in list(axes.flat)[len(cells):]:
        ax.set_visible(False)
    handles, labs = unique_legend(axes.flat)
    order = sorted(range(len(labs)), key=lambda i: labs[i].startswith("teacher"))
    handles, labs = [handles[i] for i in order], [labs[i] for i in order]
    fig.suptitle(f"{dataset}: few-step sampling vs NFE ({spread_note(d)})", y=1.0)
    compact_ticks(fig)
    fig.tight_layout()
    legend_below(fig, handles, labs)
    return save(fig, out_dir, f"nfe_{file_stem(dataset)}")


def _xy(df):
    ms = mean_std(df, "step")
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
    warm = collect.warm_start_step(runs, dataset)
    ncol = min(len(panels), 3)
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.8 * nrow), squeeze=False)
    for ax, (stage, metric) in zip(axes.flat, panels, strict=False):
        dm = d[(d["stage"] == stage) & (d["metric"] == metric)]
        if stage == "teacher":
            band(ax, *_xy(dm), TEACHER_COLOR, "teacher")
            ax.set_title("teacher: flow-matching loss")
            ax.set_ylabel("flow-matching loss [per batch]")
        else:
            for m in methods:  # dashed λ > 0: its control shows through where they coincide
                sel = dm[dm["method"] == m]
                if not sel.empty:
                    band(ax, *_xy(sel), colors[m], labels[m],
                         linestyle="--" if is_regularized(m) else "-")
            if warm:  # a regularizer on from step 0 has no switch to mark
                ax.axvline(warm, color="0.4", linestyle=":", linewidth=1,
                           label="regularizer switched on (warm start)")
            ax.set_title(f"students: {TRAIN_LABELS.get(metric, metric)}")
            ax.set_ylabel(f"{TRAIN_LABELS.get(metric, metric)} [per batch]")
        ax.set_xlabel("training step")
        scale_y(ax, dm["value"])
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles, labs = unique_legend(axes.flat)
    xs = d.loc[d["stage"] == "reflow", "step"]
    if len(xs):
        for ax, (stage, _) in zip(axes.flat, panels, strict=False):
            if stage == "reflow":
                ax.set_xlim(0, xs.max() * 1.02)
    reflow = d[d["stage"] == "reflow"]
    dashed = "; dashed: λ > 0" if any(map(is_regularized, methods)) else ""
    fig.suptitle(f"{dataset}: training curves ({spread_note(reflow)}{dashed})", y=1.0)
    compact_ticks(fig)
    fig.tight_layout()
    legend_below(fig, handles, labs)
    return save(fig, out_dir, f"training_{file_stem(dataset)}")
