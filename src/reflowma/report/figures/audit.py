"""The audit of the marginals: the local per-window audit (``local_<dataset>``) and the held-out
trajectory-matching loss against the marginals (``tm_marginal_<dataset>``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib import ticker

from reflowma.evaluation import spec
from reflowma.report.figures.style import (
    TEACHER_COLOR,
    NoData,
    axis_label,
    band,
    compact_ticks,
    legend_below,
    markers,
    mean_std,
    palette,
    save,
    scale_y,
    short_labels,
    spread_note,
)
from reflowma.report.layout import file_stem
from reflowma.report.points import window_count

TM_METRICS = ("w2_paired_teacher", "kl", "kl_knn")  # the y axes of tm_marginal


def fig_local(long: pd.DataFrame, dataset: str, methods, out_dir: Path) -> list[Path]:
    d = long[(long["dataset"] == dataset) & (long["nfe"] == -1)]
    loc = d[d["metric"].str.match(r"local_kl_w\d+$")]
    if loc.empty:
        raise NoData(f"no local audit of {dataset} in the evaluate records "
                     "(evaluate.audit.enabled or evaluate.audit.local is false?)")
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
        ms = mean_std(score, "t")
        band(ax, ms.index, ms, TEACHER_COLOR, "teacher", marker="o", markersize=3.5)
        ax.set_xlabel("t (0: noise, 1: data)")
        ax.set_ylabel(axis_label("score_error"))
        ax.set_title("teacher: score error vs exact mixture score", pad=26)
        scale_y(ax, ms["mean"])
    fig.suptitle(f"{dataset}: local audit of the K-step sampler (NFE = K; "
                 f"{spread_note(d, 'bars', 'whiskers')})", y=1.0)
    compact_ticks(fig)
    fig.tight_layout()
    return save(fig, out_dir, f"local_{file_stem(dataset)}")


def fig_tm_marginal(long: pd.DataFrame, dataset: str, methods, out_dir: Path) -> list[Path]:
    """Held-out TM loss (x) vs paired W2, KL and its kNN estimate (y) at NFE = K, every student
    and seed (one panel per metric present: the exact KL leaves out students whose map folds,
    the kNN estimate has them all). Hollow markers of one shape per student, so that points
    on top of each other stay visible."""
    ld = long[(long["dataset"] == dataset) & long["method"].isin(methods)]
    rows = []
    for m in methods:
        K = window_count(m)
        sel = ld[ld["method"] == m]
        tm = sel[sel["metric"] == "heldout_tm_loss"].set_index("seed")["value"]
        for metric in TM_METRICS:
            ys = sel[(sel["metric"] == metric) & (sel["nfe"] == K)].set_index("seed")["value"]
            for seed in tm.index.intersection(ys.index):
                rows.append({"method": m, "seed": seed, "metric": metric,
                             "tm": tm[seed], "y": ys[seed]})
    df = pd.DataFrame(rows)
    if df.empty:
        raise NoData(f"no student of {dataset} has both a held-out TM loss and a marginal "
                     "metric at NFE = K")
    metrics = [m for m in TM_METRICS if m in set(df["metric"])]
    labels, cols, marks = short_labels(methods), palette(methods), markers(methods)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.9 * len(metrics), 3.3), squeeze=False,
                             sharex=True)  # one TM axis: the students in every panel
    for ax, metric in zip(axes[0], metrics, strict=True):
        d = df[df["metric"] == metric]
        for m in methods:
            dm = d[d["method"] == m]
            if not dm.empty:
                ax.scatter(dm["tm"], dm["y"], facecolors="none", edgecolors=[cols[m]],
                           marker=marks[m], linewidths=1.4, s=42, label=labels[m])
        ax.set_xlabel(axis_label("heldout_tm_loss"))
        ax.set_ylabel(axis_label(metric))
        absent = [labels[m] for m in methods if m not in set(d["method"])]
        note = "; ".join(absent) if len(absent) <= 2 else f"{len(absent)} of {len(methods)}"
        title = f"{spec.header(metric)[0]} at NFE = K"
        ax.set_title(title + (f"\n(n/a: {note})" if absent else ""))
        ax.margins(0.08)
        ax.xaxis.set_major_locator(ticker.MaxNLocator(5))  # room for each tick label
    handles, labs = [], []
    for ax in axes[0]:  # every student, also one that a panel leaves out
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labs:
                handles.append(h)
                labs.append(lab)
    sep = " " if len(metrics) > 1 else "\n"  # one panel: too narrow for the title on one line
    fig.suptitle(f"{dataset}: trajectory-matching loss vs marginals{sep}(one point per student "
                 "and seed)", y=1.0)
    compact_ticks(fig)
    fig.tight_layout()
    legend_below(fig, handles, labs)
    return save(fig, out_dir, f"tm_marginal_{file_stem(dataset)}")
