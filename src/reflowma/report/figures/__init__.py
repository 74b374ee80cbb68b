"""Report figures (matplotlib Agg + seaborn), each written as PNG and PDF.

* ``nfe_<dataset>``: metrics vs NFE per method (mean over seeds, ±1 std band), with the teacher
  (Euler at the same NFE, dashed) and its many-step ceiling (dotted) as references;
* ``heatmap_<dataset>[_<other axes>]``: lam x K heatmaps per metric and NFE (only if both
  axes have more than one value);
* ``training_<dataset>``: training curves from the Sacred metrics (students per method, and
  the teacher);
* ``local_<dataset>``: local per-window KL bars, the telescoping TV sums and the teacher's
  score error vs t (only with audit data);
* ``tm_marginal_<dataset>``: held-out TM loss against the marginal metrics at NFE = K (paired
  W2, KL, KL kNN), one point per student and seed: the paper's thesis (equal TM, different
  marginals);
* ``samples_<dataset>``: data, teacher and student samples on the evaluation's z (2D data),
  folded points of the sampler map (det <= 0) in another colour, from the ``samples.npz``
  each evaluate run attached to its record (the report never loads a model);
* ``images_<dataset>``: image data: the PNG sample grids of every student per NFE side by side
  with the teacher's (Euler at the same NFE; many-step ceiling) and the data, read from the
  grids each evaluate run attached to its record.

Modules: ``style`` (shared look), ``curves`` (nfe, training), ``heatmaps``, ``audit`` (local,
tm_marginal), ``samples`` (samples, images). Metrics, labels and units come from
``reflowma.evaluation.spec``. A figure function raises ``NoData(reason)`` where its data are
absent: ``make_figures`` then writes a placeholder that names the reason. Any other exception
fails the report (unless ``keep_going``).
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from reflowma.infra.storage.atomic import write_json
from reflowma.report import collect
from reflowma.report.figures.audit import fig_local, fig_tm_marginal
from reflowma.report.figures.curves import fig_nfe, fig_training
from reflowma.report.figures.heatmaps import fig_heatmaps
from reflowma.report.figures.samples import fig_images, fig_samples
from reflowma.report.figures.style import FigureError, NoData, apply_theme, save
from reflowma.report.layout import file_stem

__all__ = ["FigureError", "NoData", "PLACEHOLDERS", "fig_heatmaps", "fig_images", "fig_local",
           "fig_nfe", "fig_samples", "fig_tm_marginal", "fig_training", "make_figures",
           "placeholder"]

log = logging.getLogger(__name__)

PLACEHOLDERS = "placeholders.json"  # stem -> why, next to the figures
PLACEHOLDER_WRAP = 80  # characters per line of a placeholder's text


def placeholder(out_dir: Path, stem: str, why: str) -> list[Path]:
    """A figure that says why it is empty (so an expected output file always exists)."""
    lines = [f"{stem}: no figure"] + textwrap.wrap(why, PLACEHOLDER_WRAP)
    fig, ax = plt.subplots(figsize=(6.4, 0.5 + 0.22 * len(lines)))
    ax.set_axis_off()
    ax.text(0.5, 0.5, "\n".join(lines), ha="center", va="center", fontsize=9,
            transform=ax.transAxes)
    return save(fig, out_dir, stem)


def _wanted(kind: str, stem: str, expected) -> bool:
    """Whether a figure kind of a dataset (file stem) is drawn: always without an expected
    list; with one, where it names that figure (heatmaps: with their suffixes)."""
    if expected is None:
        return True
    head = f"{kind}_{stem}"
    return any(e == head or (kind == "heatmap" and e.startswith(head + "_")) for e in expected)


def make_figures(runs: pd.DataFrame, tables, out_dir, expected=None,
                 keep_going: bool = False) -> list[Path]:
    """Every figure for every dataset of the tables; returns the written paths.

    ``expected``: the stems to write (``layout.expected_stems``), exactly those: a figure
    whose data are absent (``NoData``) becomes a placeholder naming what is missing. Without
    it, every figure whose data are present. A figure function that raises anything else
    fails the report, unless ``keep_going``: then the traceback is logged and the placeholder
    names the error. ``placeholders.json`` lists every placeholder written and why."""
    out_dir = Path(out_dir)
    long = collect.eval_long(collect.evaluations(runs), runs)
    tl = collect.training_long(runs)
    datasets = collect.unique(t.dataset for t in tables)
    paths, why = [], {}
    with plt.rc_context():
        apply_theme()
        for ds in datasets:
            t = next(t for t in tables if t.dataset == ds)
            methods = list(t.frame.loc[t.frame["kind"] == "method", "method"])
            kinds = {"nfe": (fig_nfe, (long,)), "heatmap": (fig_heatmaps, (long,)),
                     "training": (fig_training, (tl, runs)), "local": (fig_local, (long,)),
                     "samples": (fig_samples, (runs,)), "images": (fig_images, (runs,)),
                     "tm_marginal": (fig_tm_marginal, (long,))}
            for kind, (fn, args) in kinds.items():
                if not _wanted(kind, file_stem(ds), expected):
                    continue
                try:
                    paths += fn(*args, ds, methods, out_dir)
                except NoData as e:
                    plt.close("all")
                    why[f"{kind}_{file_stem(ds)}"] = str(e)
                except Exception as e:
                    plt.close("all")
                    if not keep_going:
                        raise FigureError(f"figure {fn.__name__} for {ds} failed: "
                                          f"{type(e).__name__}: {e}") from e
                    log.exception("figure %s for %s failed (--keep-going-figures)",
                                  fn.__name__, ds)
                    why[f"{kind}_{file_stem(ds)}"] = (f"{fn.__name__} failed: "
                                                      f"{type(e).__name__}: {e}")
        done = {p.stem for p in paths}
        written = {}
        for stem in expected or ():
            if stem not in done:
                base = next((k for k in why if stem == k or stem.startswith(k + "_")), None)
                written[stem] = why.get(base, "no figure function wrote it")
                paths += placeholder(out_dir, stem, written[stem])
    write_json(out_dir / PLACEHOLDERS, written)
    return paths
