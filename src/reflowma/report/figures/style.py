"""What every report figure shares: the matplotlib backend (Agg: files only), the seaborn
theme, labels and colours of methods, tick labels without offset text, bands of ±1 std, legends
and saving as PNG and PDF."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import ticker

from reflowma.evaluation import spec
from reflowma.infra.runs import parse_point
from reflowma.infra.storage.atomic import atomic_path

matplotlib.use("Agg")  # no display: every figure goes to a file
logging.getLogger("fontTools").setLevel(logging.WARNING)  # PDF font subsetting chatter

SYMBOL = {"lam": "λ", "ws": "ws", "K": "K", "logdet": "logdet", "eps": "ε", "warm": "warm"}
TEACHER_COLOR, CEILING_COLOR, FOLD_COLOR = "0.15", "0.45", "#d62728"
DATA_COLOR, STUDENT_COLOR = "#2ca02c", "#1f77b4"  # the sample scatters' data and students
FLOOR_COLOR = "0.65"  # reference lines are greys (line styles tell them apart): no method's hue
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
RC = {"axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
      "ytick.labelsize": 8, "legend.title_fontsize": 8, "savefig.dpi": 150,
      "figure.dpi": 100, "pdf.fonttype": 42}


class NoData(Exception):
    """A figure's data are absent; ``str(err)`` says which."""


class FigureError(RuntimeError):
    """A figure function failed (not for lack of data); the cause is chained."""


def apply_theme():
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


def markers(methods) -> dict:
    return {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(methods)}


class CompactFormatter(ticker.Formatter):
    """Tick labels with the fewest significant digits that give each tick's value (ticks are
    round numbers: at most 6); positional, or ``1.5e-4`` on every tick of an axis whose ticks
    reach below 1e-3 or above 1e6; no offset or multiplier text above the axis (it collides
    with titles)."""

    ticks: tuple = ()

    def set_locs(self, locs):
        self.ticks = tuple(v for v in locs if np.isfinite(v))

    def __call__(self, x, pos=None):
        big = max((abs(v) for v in self.ticks), default=abs(x))
        sci = 0 < big < 1e-3 or big >= 1e6
        if x == 0:
            return "0"
        for digits in range(0, 6):
            if sci:
                text = f"{x:.{digits}e}"
            else:
                text = np.format_float_positional(x, precision=digits + 1, unique=False,
                                                  fractional=False, trim="-")
            if abs(float(text) - x) <= 1e-6 * abs(x):
                break
        if sci:
            mantissa, exponent = text.split("e")
            return f"{mantissa}e{int(exponent)}"
        return text


def compact_ticks(fig) -> None:
    """``CompactFormatter`` on every linear axis of ``fig`` that shows plain numbers."""
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if isinstance(axis.get_major_formatter(), ticker.ScalarFormatter):
                axis.set_major_formatter(CompactFormatter())


def scale_y(ax, values) -> None:
    """A log y axis where the positive values span more than a factor of 20. Values below
    1e-9 of the largest are rounding noise around 0 (e.g. the straightness of a single step):
    then a symmetric log axis, linear below the smallest other value."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if len(v) == 0 or (v < 0).any() or v.max() <= 0:
        return
    real = v[v > 1e-9 * v.max()]
    if real.max() / real.min() <= 20:
        return
    if len(real) < len(v):
        ax.set_yscale("symlog", linthresh=float(real.min()))
        ax.set_ylim(bottom=0)
    else:
        ax.set_yscale("log")


def save(fig, out_dir: Path, stem: str) -> list[Path]:
    paths = []
    for ext in ("png", "pdf"):
        p = out_dir / f"{stem}.{ext}"
        with atomic_path(p, fsync=False) as tmp:
            fig.savefig(tmp, format=ext, bbox_inches="tight")
        paths.append(p)
    plt.close(fig)
    return paths


def legend_below(fig, handles, labels, ncol=None):
    ncol = ncol or (len(labels) if len(labels) <= 6 else 4)
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol,
               frameon=False)


def unique_legend(axes):
    seen = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(lab, h)
    return list(seen.values()), list(seen)


def spread_note(df: pd.DataFrame, what: str = "lines", spread: str = "bands") -> str:
    """The title's account of what a figure's lines and bands are: the mean over seeds and
    ±1 std, or, with one seed in ``df``, that there is no spread to draw."""
    n = df["seed"].nunique() if "seed" in df else 0
    if n <= 1:
        return f"{what}: one seed, no {spread}"
    return f"{what}: mean over {n} seeds, {spread}: ±1 std"


def is_regularized(method: str) -> bool:
    """Whether a grid point has the regularizer on (its λ is not 0)."""
    lam = parse_point(method).get("lam")
    try:
        return float(lam) != 0.0
    except (TypeError, ValueError):
        return False


def mean_std(df: pd.DataFrame, x: str) -> pd.DataFrame:
    g = df.groupby(x)["value"]
    return pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1).fillna(0.0)}).sort_index()


def band(ax, xs, ms, color, label, dodge=1.0, **kw):
    """A line of means with a ±1 std band (where the std is not 0)."""
    x = np.asarray(xs, dtype=float) * dodge
    ax.plot(x, ms["mean"], color=color, label=label, **kw)
    if (ms["std"] > 0).any():
        ax.fill_between(x, ms["mean"] - ms["std"], ms["mean"] + ms["std"], color=color,
                        alpha=0.12, linewidth=0)
