"""Grid points by name: which axes are regularizer settings, which point is a control (lam 0),
and the lam-0 control of a regularized point. Names only (``K~2/lam~0.1/ws~1.0``): the
workflow uses this module while Snakemake parses the Snakefile (``report.layout``)."""

from __future__ import annotations

from functools import lru_cache

from reflowma.infra.runs import parse_point
from reflowma.report.collect import num

REG_AXES = ("lam", "disc", "logdet", "eps", "warm", "share")


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


def window_count(method: str) -> int:
    """K of a point (1 where the point has no K axis)."""
    return int(num(parse_point(method).get("K", 1)) or 1)


@lru_cache(maxsize=4096)
def _point(method: str) -> dict:
    """``parse_point``, memoised: callers here only read the dict."""
    return parse_point(method)


@lru_cache(maxsize=64)
def _controls(methods: tuple) -> tuple:
    """The lam-0 points of ``methods`` with their parsed axes, in order."""
    return tuple((m, q) for m in methods
                 if "lam" in (q := _point(m)) and num(q["lam"]) == 0)
