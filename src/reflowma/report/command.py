"""``reflowma report``: the report of a preset's runs (``results/<preset>/runs`` ->
``results/<preset>/report`` by default), optionally recorded as a Sacred run, then a
one-line summary of what it wrote and the claims' verdicts."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

from reflowma.infra import grid as rgrid
from reflowma.infra.config import ConfigError
from reflowma.infra.tracking import recorded
from reflowma.report import build_report, expected_from_grid
from reflowma.report.compare import compare_reports
from reflowma.report.figures import FigureError

RESULTS = Path("results")  # the workflow's default `results` (params/config.yaml)


def default_paths(preset: str | None, runs=None, out=None) -> tuple:
    """(runs folder, report folder): the ones given (as given), else the workflow's of
    ``preset`` (``results/<preset>/runs`` and ``.../report``)."""
    base = RESULTS / Path(preset).stem if preset else None
    runs = runs or (base / "runs" if base else None)
    out = out or (base / "report" if base else None)
    if runs is None or out is None:
        raise ConfigError("report", "give --runs and --out, or --preset")
    return runs, out


def main(runs=None, out=None, grid=None, preset=None, no_figures: bool = False,
         keep_going_figures: bool = False, compare=None, record=None,
         counterexample: Callable[[], tuple[dict, str]] | None = None) -> int:
    """Write the report (``build_report``, and ``compare/`` against ``compare``); 1 when a
    figure fails (unless ``keep_going_figures``), else 0. ``counterexample`` gives Theorem 1's
    counterexample and where it comes from (``theory.counterexample.for_report``); it is called
    after the paths and the grid are checked."""
    runs, out = default_paths(preset, runs, out)
    if not Path(runs).is_dir():
        hint = (f"run the workflow first: snakemake --cores 2 --config preset={preset}"
                + (f" grid={grid}" if grid else "")) if preset else \
            "run the workflow first (snakemake --cores 2), or give the runs folder it wrote"
        raise FileNotFoundError(f"runs folder {str(runs)!r} does not exist: no job has run "
                                f"for it yet; {hint}")
    expected = None
    if grid:
        if preset:
            rgrid.load_preset(preset)  # validated: a typo fails here, not silently
        expected = expected_from_grid(grid)
    cex, cex_source = counterexample() if counterexample else (None, "")

    def make(cfg, on_log=None):
        res = build_report(runs, out, expected, figures=cfg["figures"],
                           keep_going_figures=cfg["keep_going_figures"],
                           counterexample=cex, counterexample_source=cex_source)
        if compare:
            res["compare"] = compare_reports(runs, compare, Path(out) / "compare", expected)
        return {k: v if isinstance(v, int) else len(v) for k, v in res.items()
                if k != "claims"} | {"claims": res["claims"]}

    cfg = {"seed": 0, "runs": str(runs), "out": str(out), "grid": grid,
           "figures": not no_figures, "keep_going_figures": keep_going_figures}
    try:
        counts = recorded("report", cfg, make, record, "report") if record else make(cfg)
    except FigureError as e:
        logging.getLogger("reflowma.report").exception("report failed")
        print(f"reflowma: error: {e} (--keep-going-figures writes the others and a "
              "placeholder)", file=sys.stderr)
        return 1
    print(f"report: {counts['n_tables']} tables ({counts['tables']} files under tables/), "
          f"{counts['figures']} figure files, {counts['metrics']} metrics in metrics.json, "
          f"{counts['missing']} missing jobs -> {out}")
    print("claims (claims.md): " + ", ".join(f"{k} {v}" for k, v in counts["claims"].items()))
    return 0
