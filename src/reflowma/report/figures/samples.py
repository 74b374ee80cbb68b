"""Samples: 2D scatter plots of data, teacher and students on the same noise draws
(``samples_<dataset>``) and the PNG sample grids of image data (``images_<dataset>``), from
the artifacts the evaluate runs attached to their records (no model is loaded)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from reflowma.infra.runs import parse_point
from reflowma.report import collect
from reflowma.report.figures.style import (
    DATA_COLOR,
    FOLD_COLOR,
    STUDENT_COLOR,
    TEACHER_COLOR,
    NoData,
    legend_below,
    save,
    short_labels,
)
from reflowma.report.layout import file_stem


def fig_samples(runs: pd.DataFrame, dataset: str, methods, out_dir: Path) -> list[Path]:
    """Data, the teacher ceiling and each student at NFE = K (its own number of windows; else
    the largest saved NFE) on the same z, from the runs' ``samples.npz`` (lowest seed)."""
    got = collect.samples(runs, dataset)
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
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.8 * ncol, 3.1 * nrow), squeeze=False,
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
    fig.subplots_adjust(hspace=0.3)  # room for the two-line titles of the row below
    legend_below(fig, handles, labs, ncol=5 if ncol >= 3 else 2)
    return save(fig, out_dir, f"samples_{file_stem(dataset)}")


def fig_images(runs: pd.DataFrame, dataset: str, methods, out_dir: Path) -> list[Path]:
    """Image data: one row per student (its PNG grid per NFE) under the teacher's row (Euler
    at the same NFEs), with the teacher's many-step ceiling and the data in the first column;
    all grids from the same first 64 noise draws z (lowest seed), read from the PNG artifacts
    of the evaluate runs."""
    got = collect.image_grids(runs, dataset)
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
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.1 * ncol, 2.55 * nrow), squeeze=False)
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
    fig.tight_layout(h_pad=1.2)  # room for the two-line titles of the row below
    return save(fig, out_dir, f"images_{file_stem(dataset)}")
