"""Statistics over seeds: mean ± std with a 95% t-interval, paired t-tests against the lam-0
control of a regularized grid point."""

from __future__ import annotations

import math
import warnings
from functools import lru_cache

import numpy as np

from reflowma.infra.runs import parse_point
from reflowma.report.collect import num

REG_AXES = ("lam", "disc", "logdet", "eps", "warm", "share")


def summarize(values) -> dict:
    """n, mean, std (ddof 1) and the 95% t-interval of the mean (NaNs dropped)."""
    v = np.asarray([x for x in values if not np.isnan(x)], dtype=float)
    n = len(v)
    out = {"n": n, "mean": np.nan, "std": np.nan, "ci_lo": np.nan, "ci_hi": np.nan}
    if n == 0:
        return out
    out["mean"] = float(v.mean())
    if n >= 2:
        sd = float(v.std(ddof=1))
        from scipy import stats  # here: the workflow imports this module while parsing

        half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        out.update(std=sd, ci_lo=out["mean"] - half, ci_hi=out["mean"] + half)
    return out


def paired_test(a: dict, b: dict) -> tuple[float, list]:
    """Two-sided paired t-test of {seed: value} a vs b over common seeds: (p, seeds)."""
    seeds = sorted(s for s in set(a) & set(b) if not (np.isnan(a[s]) or np.isnan(b[s])))
    if len(seeds) < 2:
        return np.nan, seeds
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant differences: p is still 0
        from scipy import stats

        p = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue
    return float(p), seeds


def is_reg_axis(key: str) -> bool:
    """Axes that only matter when the regularizer is on (lam > 0)."""
    return key in REG_AXES or key.startswith("regularizer.")


def is_baseline(method: str) -> bool:
    pt = parse_point(method)
    return "lam" in pt and num(pt["lam"]) == 0


def baseline_of(method: str, methods) -> str | None:
    """The lam-0 control of a regularized point: the point of ``methods`` with lam 0 and the
    same values of every axis that is not a regularizer setting (K, ws, ...); among several,
    the one sharing the most regularizer settings (a grid may keep lam 0 only once, e.g. with
    ``logdet~exact``). None for a point without a lam axis or with lam 0. Linear in the number
    of lam-0 points of ``methods`` (parsed once per list): a 10k-job grid asks for every point."""
    pt = _point(method)
    if "lam" not in pt or num(pt["lam"]) == 0:
        return None
    best, score = None, -1
    for m, q in _controls(tuple(methods)):
        if set(q) != set(pt) or any(q[k] != pt[k] for k in pt if not is_reg_axis(k)):
            continue
        sc = sum(q[k] == pt[k] for k in pt if is_reg_axis(k) and k != "lam")
        if sc > score:
            best, score = m, sc
    return best


@lru_cache(maxsize=4096)
def _point(method: str) -> dict:
    """``parse_point``, memoised: callers here only read the dict."""
    return parse_point(method)


@lru_cache(maxsize=64)
def _controls(methods: tuple) -> tuple:
    """The lam-0 points of ``methods`` with their parsed axes, in order."""
    return tuple((m, q) for m in methods
                 if "lam" in (q := _point(m)) and num(q["lam"]) == 0)


def none_if_nan(x):
    x = num(x)
    return None if np.isnan(x) else x


def json_stats(s: dict) -> dict:
    return {"n": s["n"], "mean": none_if_nan(s["mean"]), "std": none_if_nan(s["std"]),
            "ci95": [none_if_nan(s["ci_lo"]), none_if_nan(s["ci_hi"])]}
