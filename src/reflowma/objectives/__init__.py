"""Training objectives: trajectory matching, the window-start term, the marginal regularizer.

``build(cfg, ctx)`` turns a reflow config into an ``Objective``: trajectory matching always, the
window-start term when ``window_start_weight > 0``, the marginal-alignment regularizer when
``regularizer.weight > 0`` (the two from one forward with ``regularizer.share_window_start``:
``shared.SharedWindowStart``), then every entry of ``objectives`` (``{name, weight, ...}``), a
plug-in term looked up in ``OBJECTIVES``: ``factory(entry, cfg, ctx) -> Term``.
"""

from __future__ import annotations

from reflowma.objectives import marginal, shared, trajectory
from reflowma.objectives.base import OBJECTIVES, Context, Objective, Term

__all__ = ["OBJECTIVES", "Context", "Objective", "Term", "build"]


def build(cfg: dict, ctx: Context) -> Objective:
    reg_cfg = cfg["regularizer"]
    window_start = trajectory.window_start(cfg, ctx) if cfg["window_start_weight"] > 0 else None
    reg = marginal.marginal_alignment(cfg, ctx) if reg_cfg["weight"] > 0 else None
    terms = [trajectory.trajectory_matching(cfg, ctx)]
    if reg_cfg["share_window_start"] and window_start is not None and reg is not None:
        terms.append(shared.SharedWindowStart(key=window_start.key, window_start=window_start,
                                              regularizer=reg))
    else:
        terms += [t for t in (window_start, reg) if t is not None]
    for entry in cfg.get("objectives") or []:
        term = OBJECTIVES.get(entry["name"])(entry, cfg, ctx)
        term.weight = float(entry.get("weight", term.weight))
        terms.append(term)
    return Objective(terms)
