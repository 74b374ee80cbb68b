"""Training objectives: trajectory matching, the window-start term, the marginal regularizer.

``build(cfg, ctx)`` turns a reflow config into an ``Objective``: trajectory matching always, the
window-start term when ``window_start_weight > 0``, the marginal-alignment regularizer when
``regularizer.weight > 0``, then every entry of ``objectives`` (``{name, weight, ...}``), looked
up in ``OBJECTIVES``. Every factory is ``factory(entry, cfg, ctx) -> Term`` (``entry`` is ``{}``
for the built-in terms); plug-ins register their own.
"""

from __future__ import annotations

from reflowma.objectives import marginal, trajectory
from reflowma.objectives.base import OBJECTIVES, Context, Objective, Term

OBJECTIVES.register("trajectory_matching", trajectory.trajectory_matching)
OBJECTIVES.register("window_start", trajectory.window_start)
OBJECTIVES.register("marginal_alignment", marginal.marginal_alignment)

__all__ = ["OBJECTIVES", "Context", "Objective", "Term", "build"]


def build(cfg: dict, ctx: Context) -> Objective:
    terms = [OBJECTIVES.get("trajectory_matching")({}, cfg, ctx)]
    if cfg["window_start_weight"] > 0:
        terms.append(OBJECTIVES.get("window_start")({}, cfg, ctx))
    if cfg["regularizer"]["weight"] > 0:
        terms.append(OBJECTIVES.get("marginal_alignment")({}, cfg, ctx))
    for entry in cfg.get("objectives") or []:
        term = OBJECTIVES.get(entry["name"])(entry, cfg, ctx)
        term.weight = float(entry.get("weight", term.weight))
        terms.append(term)
    return Objective(terms)
