"""The report stage: tables, figures, claims and a flat metrics summary from the Sacred run
records.

``build_report(runs_dir, out_dir, expected_jobs=None)`` (``report.build``) reads every record
under ``runs_dir`` (``reflowma.infra.runs``), keeps the latest completed run of each job and
writes

* ``tables/<dataset>_nfe<n>.{md,tex,csv}`` (methods x metrics per NFE), ``..._local.*`` (local
  per-window audit), ``..._teacher.*`` (the teacher alone), ``..._effects.*`` (regularizer vs
  lam-0 control, next to ``params/references/prototype_2d.yaml``), ``tables/all.{md,csv}``
  (all of them), ``tables/all.html`` (all.md as a web page) and ``tables/cells.json`` (each
  cell -> the run ids, seeds and values);
* ``figures/*.{png,pdf}`` and ``figures/placeholders.json`` (``reflowma.report.figures``);
* ``metrics.json``: ``{"<dataset>/<method>/nfe~<n>/<metric>": mean over seeds}``, flat and
  sorted (every number of the tables); ``summary.json``: a handful of headline numbers (the
  DVC metrics: ``render.headline``); ``plots/nfe.csv`` for ``dvc plots``;
* ``missing.json``: expected jobs with no completed run and why;
* ``claims.md``, ``claims.html`` and ``claims.json``: each claim of the paper, its evidence and
  a computed verdict with the power of its tests (``reflowma.report.claims``);
* evaluations with ``evaluate.logdet.enabled``: ``tables/<dataset>_logdet.{md,csv}`` (also in
  all.md): the log-det of the window map against its approximations (``reflowma.report.logdet``);
* grids with ``equal_time: true``: ``tables/<dataset>_equal_time.{md,csv}`` (also in all.md)
  and ``equal_time.json``: each regularized point against its control at equal steps and at
  equal time, and whether the regularizer is worth its cost (``reflowma.report.equal_time``).

Modules: ``build`` (the orchestration above), ``collect`` (records -> long rows), ``points``
(grid points and their controls, by name), ``stats`` (mean ± std, t-intervals, paired tests and
their power), ``tables`` (rows -> Table frames), ``markdown`` (tables that fit 100 columns),
``render`` (Markdown, LaTeX, CSV, flat metrics), ``webpage`` (Markdown -> a web page),
``claims`` / ``claims_markdown``, ``equal_time``, ``compare`` (``report --compare``),
``layout`` (which figures a report writes, from job names) and ``figures``. Every metric comes
from ``reflowma.evaluation.spec``; nothing here loads a model: the figures read what the
evaluate runs recorded (``eval.json``, ``samples.npz`` and PNG artifacts).
"""

from __future__ import annotations

import importlib

__all__ = ["build_report", "expected_from_grid", "flat_metrics"]

# Where each entry point lives. They are imported on first use: the workflow imports
# reflowma.report.layout (and with it this package) while Snakemake parses the Snakefile, and
# the modules behind these names load scipy, the cost of seconds on 2 cores at every parse.
_HOME = {"build_report": "build", "expected_from_grid": "build", "flat_metrics": "render"}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
