"""Synthetic Sacred records of evaluate runs, as the report reads them (run.json, info.json,
config.json in ``<root>/<run id>/``)."""

from __future__ import annotations

import json
from pathlib import Path


def write_evaluate_record(root: Path, rid: int, job: str, seed: int, result: dict) -> Path:
    """A COMPLETED evaluate run ``rid`` (two-digit ids order the start times) of ``job``."""
    d = root / str(rid)
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({
        "status": "COMPLETED", "start_time": f"2026-01-01T00:00:{rid:02d}.000000",
        "stop_time": f"2026-01-01T00:01:{rid:02d}.000000", "result": result}))
    (d / "info.json").write_text(json.dumps({"job": job, "stage": "evaluate"}))
    (d / "config.json").write_text(json.dumps({"seed": seed}))
    return d
