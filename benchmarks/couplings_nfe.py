"""Error against NFE of the couplings solve, per solver and step grid (``couplings.time_grid``),
on a trained teacher: the curves of ``make bench``'s couplings section and its figure.

Every option is a couplings config (the preset's, with the option's fields) solved the way the
stage solves it (``couplings.step_grid``, ``solvers.solve``) on one chunk of starting points;
the reference is torchdiffeq's fixed-grid ``rk4`` on the uniform grid the project's solvers use
(``time_grids.uniform``: it steps onto every stored time, so no state is interpolated).
The error of a solve is the largest, over the stored times (the window ends), of the RMS over
rows of its distance to a tight solve (RK4 at ``TIGHT`` times the most steps on the curve).
NFE are per row; the fitted grid's pilot (``pilot_size`` rows, three solves' NFE) is counted,
spread over the ``n_train + n_test`` rows of the preset's file. ``equal_error``: each option's
fewest NFE from which on its error stays at or below the reference's at its default steps
(``robust_nfe``), and the saving: the reference's NFE at its default steps (the preset's
``steps``) over that. The target is never below twice the reference's floor (the lowest error on
its curve; on a teacher whose flow is nearly straight its default steps already sit there, and
more steps are rounding noise). ``reference_point.robust_nfe`` is the reference's own NFE
counted the option's way, for reading the jaggedness of its curve; savings never divide by it
(on a jagged curve the last excursion above the target is an extreme value: a ratio of two of
them is noise, not a solver's gain).
"""

from __future__ import annotations

import torch
from torchdiffeq import odeint

from reflowma.core import interpolant, solvers, time_grids
from reflowma.infra import config
from reflowma.stages import couplings

TIGHT = 8
# option -> couplings fields; dopri5's step count is its tolerance level (dopri5_tolerances)
OPTIONS = {
    "rk4 uniform": {"solver": "rk4"},
    "rk38 uniform": {"solver": "rk38"},
    "rk4 power rho=2": {"solver": "rk4", "time_grid": "power", "rho": 2.0},
    "rk4 power rho=3": {"solver": "rk4", "time_grid": "power", "rho": 3.0},
    "rk4 fitted": {"solver": "rk4", "time_grid": "fitted"},
    "rk38 fitted": {"solver": "rk38", "time_grid": "fitted"},
    "dopri5": {"solver": "dopri5"},
}
REFERENCE = "torchdiffeq rk4 uniform"


def option_config(preset: str | None, fields: dict) -> dict:
    return config.stage_config("couplings", preset, [f"{k}={v}" for k, v in fields.items()])


class Counted:
    """The network with a count of the rows it evaluated (dopri5's NFE)."""

    def __init__(self, net):
        self.net, self.rows = net, 0

    def __call__(self, x, t):
        self.rows += x.shape[0]
        return self.net(x, t)


def dopri5_tolerances(level: float) -> tuple[float, float]:
    """``rtol = 10^-level``, ``atol = rtol / 100`` (a level is dopri5's 'steps')."""
    rtol = 10.0 ** (-level)
    return rtol, rtol / 100


def solve_option(net, z, cfg: dict, steps, total_rows: int):
    """``(states [T, B, ...], NFE per row)`` of one option at ``steps`` (dopri5: a tolerance
    level), solved as the couplings stage solves (its step grid, its pilot)."""
    times = interpolant.union_grid(cfg["windows"])
    cfg = {**cfg, "steps": max(1, int(steps))}
    if cfg["solver"] == "dopri5":
        rtol, atol = dopri5_tolerances(steps)
        counted = Counted(net)
        states = solvers.solve(counted, z, times, 1, "dopri5", rtol=rtol, atol=atol)
        return states, counted.rows / z.shape[0]
    stages = {"euler": 1, "heun": 2, "rk4": 4, "rk38": 4}[cfg["solver"]]
    grid = couplings.step_grid(cfg, net, tuple(z.shape[1:]), times, z.device)
    nfe = stages * (time_grids.n_steps(grid) if grid is not None else
                    time_grids.n_steps(time_grids.uniform(times, cfg["steps"])))
    if cfg["time_grid"] == "fitted":  # the pilot: three solves of pilot_size rows
        nfe += 3 * stages * time_grids.n_steps(time_grids.uniform(times, cfg["steps"])) * \
            cfg["pilot_size"] / total_rows
    states = solvers.solve(net, z, times, cfg["steps"], cfg["solver"], grid=grid)
    return states, nfe


def solve_reference(net, z, times, steps: int):
    """torchdiffeq's fixed-grid rk4 (Kutta's 3/8 rule) on ``time_grids.uniform(times, steps)``
    (its step size alone would interpolate the states at stored times off its grid): the
    states at ``times``, and its NFE per row."""
    grid = time_grids.step_times(time_grids.uniform(times, steps), times[-1])

    def constructor(func, y0, t):
        return torch.tensor(grid, dtype=t.dtype, device=t.device)

    with torch.no_grad():
        states = odeint(lambda t, x: net(x, t.expand(x.shape[0])), z,
                        torch.tensor(times, dtype=z.dtype), method="rk4",
                        options={"grid_constructor": constructor})
    return states, 4 * (len(grid) - 1)


def error(states, tight) -> float:
    """Largest over the stored times of the RMS over rows of the distance to ``tight``."""
    d = (states - tight).flatten(2).pow(2).sum(-1).mean(-1).sqrt()
    return float(d.max())


def curves(net, z, preset: str | None, steps_list, ref_steps: int, levels) -> dict:
    """Error and NFE of every option at each of ``steps_list`` (dopri5 at each tolerance level
    of ``levels``) and of the reference, against one tight solve; then each option's NFE at
    the reference's error at ``ref_steps`` (``robust_nfe``) and the saving against the
    reference's NFE at ``ref_steps``."""
    base = config.stage_config("couplings", preset)
    times = interpolant.union_grid(base["windows"])
    total = base["n_train"] + base["n_test"]
    tight_steps = TIGHT * max(max(steps_list), ref_steps)
    tight = solvers.solve(net, z, times, tight_steps, "rk4")
    out = {"times": times, "rows": z.shape[0], "tight_steps": tight_steps,
           "reference": REFERENCE, "reference_steps": ref_steps, "curves": {}}
    ref_curve = []
    for s in sorted(set(steps_list) | {ref_steps}):
        st, nfe = solve_reference(net, z, times, s)
        ref_curve.append({"steps": s, "nfe": nfe, "error": error(st, tight)})
    out["curves"][REFERENCE] = ref_curve
    ref_error, ref_nfe_default = next((p["error"], p["nfe"]) for p in ref_curve
                                      if p["steps"] == ref_steps)
    # the reference's floor: more steps do not take it lower (rounding, its own time grid), and
    # near it a curve is jagged noise where "stays below" means nothing
    floor = min(p["error"] for p in ref_curve)
    target = max(ref_error, 2 * floor)
    ref_nfe = robust_nfe(ref_curve, target)
    out["reference_point"] = {"steps": ref_steps, "nfe": ref_nfe_default, "error": ref_error,
                              "floor": floor, "target": target, "robust_nfe": ref_nfe}
    eq = {}
    for name, fields in OPTIONS.items():
        cfg = option_config(preset, fields)
        points = []
        for s in (levels if cfg["solver"] == "dopri5" else steps_list):
            states, nfe = solve_option(net, z, cfg, s, total)
            points.append({"steps": s, "nfe": nfe, "error": error(states, tight)})
        out["curves"][name] = points
        n = robust_nfe(points, target)
        eq[name] = {"nfe": n, "steps": next((p["steps"] for p in points if p["nfe"] == n), None),
                    "nfe_saving": ref_nfe_default / n if n else None}
    out["equal_error"] = eq
    return out


def robust_nfe(points, target: float):
    """The fewest NFE from which on every point of the curve has error <= ``target`` (so a
    lucky dip of a jagged curve does not count); None if its last point is above."""
    best = None
    for p in sorted(points, key=lambda p: -p["nfe"]):
        if p["error"] > target:
            break
        best = p["nfe"]
    return best


def figure(results: dict, path) -> None:
    """Error against NFE, one panel per teacher: every option, the reference, the equal-error
    target (dotted) and the reference's floor (dashed)."""
    import matplotlib  # here, not at the top: the backend is chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.2), squeeze=False)
    for ax, (title, res) in zip(axes[0], results.items(), strict=True):
        for name, pts in res["curves"].items():
            pts = sorted(pts, key=lambda p: p["nfe"])
            style = {"color": "black", "lw": 2.2} if name == REFERENCE else {}
            ax.loglog([p["nfe"] for p in pts], [max(p["error"], 1e-12) for p in pts],
                      marker="o", ms=3, label=name, **style)
        ref = res["reference_point"]
        ax.axhline(ref["target"], color="gray", ls=":", lw=1)
        ax.axhline(ref["floor"], color="gray", ls="--", lw=0.8)
        ax.set_title(f"{title}: error at the window ends vs NFE")
        ax.set_xlabel("NFE per row")
        ax.set_ylabel(f"max over t_k of RMS error vs RK4 x{TIGHT}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
