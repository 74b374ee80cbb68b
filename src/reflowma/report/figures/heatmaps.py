"""λ x K heatmaps (``heatmap_<dataset>[_<other axes>]``): per metric and NFE, the mean over
seeds of each (λ, K) cell, coloured by how far it lies from the best cell of its panel on one
scale for every panel: from 1 % (and less: the lightest colour) to 100 % (and more: the
darkest), logarithmic, so that differences below 1 % do not take up the colour range. A panel
whose best cell is not above the metric's estimator noise (``stats.estimator_noise``: e.g.
MMD² of samples that match the data, where the estimates straddle zero) has no % and one
grey: its differences are noise."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import colors as mcolors

from reflowma.evaluation import spec
from reflowma.infra.runs import parse_point
from reflowma.report import layout
from reflowma.report.figures.style import SYMBOL, NoData, save
from reflowma.report.points import is_reg_axis
from reflowma.report.stats import estimator_noise

GAP_RANGE = (1.0, 100.0)  # % from the panel's best cell: the colour scale's ends
NO_GAP_COLOR = "0.93"  # panels whose best cell is not above zero: no % to colour by


def gaps(grid: np.ndarray, better: str, noise: float = 0.0) -> tuple[np.ndarray | None, float]:
    """Per cell, % by which it is worse than the panel's best cell (None where the best is
    not above zero and the metric's estimator ``noise``: a % of it means nothing), and that
    best value."""
    best = np.nanmin(grid) if better == "lower" else np.nanmax(grid)
    if not (best > 0 and best > noise):
        return None, best
    return 100 * np.abs(grid - best) / best, best


def _panel(ax, grid, metric, cmap, norm, noise: float) -> str:
    """Draw one panel; returns a note for its title (no %, or every cell within 1 %)."""
    m, _ = spec.lookup(metric)
    gap, best = gaps(grid, m.better if m is not None else "lower", noise)
    if gap is None:
        ax.pcolormesh(np.ma.masked_invalid(grid * 0),  # one grey; n/a cells left blank
                      cmap=mcolors.ListedColormap([NO_GAP_COLOR]), edgecolors="white",
                      linewidth=1)
    else:
        ax.pcolormesh(np.ma.masked_invalid(np.clip(gap, *GAP_RANGE)), cmap=cmap, norm=norm,
                      edgecolors="white", linewidth=1)
    for a in range(grid.shape[0]):
        for b in range(grid.shape[1]):
            v = grid[a, b]
            txt = "n/a" if np.isnan(v) else f"{v:.4g}"
            color = "black"
            if gap is not None and not np.isnan(v):
                g = gap[a, b]
                if g > 0:
                    txt += f"\n(+{g:.0f} %)" if g >= 10 else f"\n(+{g:.2g} %)"
                r, gr, bl, _ = cmap(norm(np.clip(g, *GAP_RANGE)))
                color = "white" if 0.299 * r + 0.587 * gr + 0.114 * bl < 0.5 else "black"
            ax.text(b + 0.5, a + 0.5, txt, ha="center", va="center", fontsize=7, color=color)
    note = ""
    if gap is None:
        note = " (best ≤ 0: no %)" if not best > 0 else f" (best < noise {noise:.2g}: no %)"
    elif np.nanmax(gap) < GAP_RANGE[0]:
        note = f" (all within {GAP_RANGE[0]:g} %)"
    return note


def fig_heatmaps(long: pd.DataFrame, dataset: str, methods, out_dir: Path) -> list[Path]:
    """Text: the mean over seeds (and % worse than the panel's best cell); colour: that %,
    on one logarithmic scale from 1 % to 100 % for every panel."""
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
    norm = mcolors.LogNorm(*GAP_RANGE)
    paths = []
    for suffix, group in groups.items():
        ms, vary = group["methods"], group["fixed"]
        lams = sorted({pts[m]["lam"] for m in ms})
        Ks = sorted({pts[m]["K"] for m in ms})
        nr, nc = len(metrics), len(nfes)
        fig, axes = plt.subplots(nr, nc, squeeze=False, figsize=(2.5 * nc + 1.2, 2.2 * nr + 0.4))
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
                noise = estimator_noise(long.loc[(long["dataset"] == dataset)
                                                 & (long["metric"] == metric), "value"])
                note = _panel(ax, grid, metric, cmap, norm, noise)
                ax.set_xticks(np.arange(len(Ks)) + 0.5, [str(k) for k in Ks])
                ax.set_yticks(np.arange(len(lams)) + 0.5, [str(v) for v in lams])
                ax.grid(False)
                label, unit = spec.header(metric)
                ax.set_title(label + (f" [{unit}]" if unit else "") + f"\nNFE {nfe}{note}",
                             fontsize=8)
                ax.set_xlabel("K (windows)" if i == nr - 1 else "")
                ax.set_ylabel("λ (regularizer weight)" if j == 0 else "")
        fig.tight_layout(rect=(0, 0, 0.9, 0.97))
        cax = fig.add_axes((0.92, 0.15, 0.015, 0.7))
        cb = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), cax=cax, extend="both")
        ticks = [1, 3, 10, 30, 100]
        cb.set_ticks(ticks, labels=["≤ 1 %", "3 %", "10 %", "30 %", "≥ 100 %"])
        cb.minorticks_off()
        cb.set_label("worse than the panel's best cell")
        extra = f" ({', '.join(f'{SYMBOL.get(k, k)}={v}' for k, v in vary)})" if vary else ""
        if any(is_reg_axis(k) and pts[m].get(k) != v for m in ms for k, v in vary):
            extra += "; λ=0 row: the shared λ=0 control"
        n_seeds = d.loc[d["method"].isin(ms), "seed"].nunique()
        over = "one seed" if n_seeds <= 1 else f"mean over {n_seeds} seeds"
        fig.suptitle(f"{dataset}: λ × K, {over}{extra}", y=0.995)
        paths += save(fig, out_dir, f"heatmap_{layout.file_stem(dataset)}"
                      + (f"_{suffix}" if suffix else ""))
    return paths
