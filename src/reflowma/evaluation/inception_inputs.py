"""What the Inception metrics (``fid``, ``kid``, ``precision_recall`` of the evaluate stage)
need before any work: the fields that turn them on, a local weights file (never a download) and
image data. Imports no torch: the params checks run it while the workflow is parsed.
``inception.py`` computes the metrics; ``stages/inception.py`` starts the feature worker."""

from __future__ import annotations

import os
from pathlib import Path

from reflowma.data import catalog

INCEPTION_METRICS = ("fid", "kid", "precision_recall")
INCEPTION_WEIGHTS_ENV = "REFLOWMA_INCEPTION_WEIGHTS"


def inception_weights(cfg: dict) -> str | None:
    """The Inception weights file of the torch-fidelity metrics: ``inception_weights``, else
    ``$REFLOWMA_INCEPTION_WEIGHTS``, else None."""
    return cfg.get("inception_weights") or os.environ.get(INCEPTION_WEIGHTS_ENV) or None


def problem(cfg: dict, check_files: bool = True) -> tuple[str, str] | None:
    """(field of the evaluate config, message) of what an enabled Inception metric lacks: a
    weights file (that exists, unless ``check_files=False``), images ``[C, H, W]``; None when
    nothing is missing or no Inception metric is on."""
    wanted = [m for m in INCEPTION_METRICS if cfg.get(m)]
    if not wanted:
        return None
    path = inception_weights(cfg)
    if path is None:
        return "inception_weights", (
            f"is required when evaluate.{wanted[0]} is true: a local torch-fidelity Inception "
            f"weights file (or set ${INCEPTION_WEIGHTS_ENV}); it is never downloaded (the "
            'metrics need the optional extra torch-fidelity, see docs/images.md, "Inception '
            'metrics")')
    if check_files and not Path(path).is_file():
        return "inception_weights", f"file {path!r} does not exist"
    found = catalog.images_problem(cfg["data"], f"evaluate.{wanted[0]}")
    return (f"data.{found[0]}", found[1]) if found else None
