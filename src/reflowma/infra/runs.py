"""Reading the Sacred run records of the workflow back as a table (one row per run).

A record is a ``FileStorageObserver`` folder ``<runs>/<id>/`` (see ``reflowma.infra.tracking``):
``run.json`` (status, times, host, git commit, the stage's result), ``config.json`` (the
validated stage config), ``metrics.json`` (logged scalars) and ``info.json`` (the job name
``<stage>/<dataset>/seed~<s>[/<point>]``, output and input paths). Records that cannot be read
(a job killed while Sacred wrote them, a corrupt file) are skipped with a ``RunRecordWarning``
naming the folder. A job may have several records (reruns): ``latest_completed`` picks the
latest COMPLETED one, ``missing_jobs`` names the expected jobs without one.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd

from reflowma.evaluation.spec import dig
from reflowma.infra import grid as rgrid

STATUSES = ("COMPLETED", "FAILED", "INTERRUPTED", "RUNNING", "QUEUED", "TIMEOUT")
# Config fields flattened into columns (dotted path -> column); grid axes use the grid's aliases.
CONFIG_COLUMNS = {"K": "K", **rgrid.ALIASES}
COLUMNS = ["run_id", "run_dir", "stage", "job", "status", "start_time", "stop_time", "heartbeat",
           "commit", "dirty", "host", "seed", "dataset", "point", *CONFIG_COLUMNS.values(),
           "out", "inputs", "error", "config", "info", "metrics", "result"]


class RunRecordWarning(UserWarning):
    """A run record that could not be read (the folder is skipped)."""


def parse_value(text: str):
    """A point value from its path form (``0.1`` -> 0.1, ``2`` -> 2, ``true`` -> True)."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_point(point: str) -> dict:
    """``'K~2/lam~0.1'`` -> ``{'K': 2, 'lam': 0.1}`` (ordered as in the name)."""
    out = {}
    for seg in filter(None, (point or "").split("/")):
        key, sep, val = seg.partition("~")
        if sep:
            out[key] = parse_value(val)
    return out


def parse_job(job: str | None) -> dict:
    """``'evaluate/8gaussians/seed~0/K~2/ws~1.0'`` -> stage, dataset, seed, point.

    Jobs not named by the workflow (``stage:out`` from a bare CLI call) give only the stage.
    """
    out = {"stage": None, "dataset": None, "seed": None, "point": None}
    if not job:
        return out
    parts = job.split("/")
    if len(parts) < 3 or not parts[2].startswith("seed~"):
        out["stage"] = job.split(":", 1)[0].split("/", 1)[0] or None
        return out
    try:
        seed = int(parts[2].split("~", 1)[1])
    except ValueError:
        seed = None
    return {"stage": parts[0], "dataset": parts[1], "seed": seed, "point": "/".join(parts[3:])}


def _read_json(path: Path, required: bool):
    if not path.is_file():
        if required:
            raise ValueError(f"{path.name} is missing")
        return {}
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path.name} is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path.name} holds {type(obj).__name__}, not an object")
    return obj


def _time(text):
    if not text:
        return pd.NaT
    try:
        return pd.Timestamp(text)
    except (ValueError, TypeError):
        return pd.NaT


def read_record(run_dir: Path) -> dict:
    """One row from a record folder; ``ValueError`` if it cannot be used."""
    run = _read_json(run_dir / "run.json", required=True)
    if run.get("status") not in STATUSES:
        raise ValueError(f"run.json has no valid status ({run.get('status')!r})")
    config = _read_json(run_dir / "config.json", required=False)
    info = _read_json(run_dir / "info.json", required=False)
    metrics = _read_json(run_dir / "metrics.json", required=False)
    repos = dig(run, "experiment.repositories") or [{}]
    repo = repos[0] if isinstance(repos, list) and repos and isinstance(repos[0], dict) else {}
    job = info.get("job")
    parsed = parse_job(job)
    stage = info.get("stage") or parsed["stage"]
    if stage is None:  # experiment name is reflowma.<stage>
        name = dig(run, "experiment.name") or ""
        stage = name.split(".", 1)[1] if name.startswith("reflowma.") else None
    point = parsed["point"]
    pt = parse_point(point)
    trace = run.get("fail_trace") or []
    row = {
        "run_id": int(run_dir.name), "run_dir": str(run_dir), "stage": stage, "job": job,
        "status": run["status"], "start_time": _time(run.get("start_time")),
        "stop_time": _time(run.get("stop_time")), "heartbeat": _time(run.get("heartbeat")),
        "commit": repo.get("commit"), "dirty": repo.get("dirty"),
        "host": dig(run, "host.hostname"),
        "seed": parsed["seed"] if parsed["seed"] is not None else config.get("seed"),
        "dataset": parsed["dataset"] or dig(config, "data.name"), "point": point,
        "out": info.get("out"), "inputs": info.get("inputs") or {},
        "error": trace[-1].strip() if trace else None,
        "config": config, "info": info, "metrics": metrics, "result": run.get("result"),
    }
    for dotted, col in CONFIG_COLUMNS.items():
        # The point names the grid's values; the config fills fields that are not grid axes
        # (the evaluate stage's config has no reflow fields: K comes from its result).
        val = pt.get(col, dig(config, dotted))
        if val is None and col == "K" and isinstance(row["result"], dict):
            val = row["result"].get("K")
        row[col] = val
    return row


def load_runs(runs_dir) -> pd.DataFrame:
    """All readable records under ``runs_dir``, one row per run, sorted by run id."""
    runs_dir = Path(runs_dir)
    rows = []
    if runs_dir.is_dir():
        for d in sorted(runs_dir.iterdir(), key=lambda p: (len(p.name), p.name)):
            if not (d.is_dir() and d.name.isdigit()):
                continue  # _sources and the observer's temporary files
            try:
                rows.append(read_record(d))
            except (ValueError, OSError) as e:
                warnings.warn(f"skipping run record {str(d)!r}: {e}", RunRecordWarning,
                              stacklevel=2)
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.astype({"run_id": "int64"}).sort_values("run_id", ignore_index=True)


def latest(df: pd.DataFrame) -> pd.DataFrame:
    """The latest run (by start time, then run id) of each named job."""
    df = df[df["job"].notna()]
    return df.sort_values(["start_time", "run_id"], na_position="first").groupby(
        "job", sort=False).tail(1)


def latest_completed(df: pd.DataFrame, stage: str | None = None) -> pd.DataFrame:
    """The latest COMPLETED run of each job (by start time, then run id), sorted by job."""
    sel = df[df["status"] == "COMPLETED"]
    if stage is not None:
        sel = sel[sel["stage"] == stage]
    return latest(sel).sort_values("job", ignore_index=True)


def missing_jobs(df: pd.DataFrame, expected_jobs) -> pd.DataFrame:
    """Expected jobs with no COMPLETED run: ``job``, ``status`` of their latest run
    (FAILED/INTERRUPTED/RUNNING/...; ``none`` if never run), its ``run_id`` and ``error``."""
    done = set(df.loc[df["status"] == "COMPLETED", "job"])
    last = latest(df).set_index("job")
    rows = []
    for job in expected_jobs:
        if job in done:
            continue
        if job in last.index:
            r = last.loc[job]
            rows.append({"job": job, "status": r["status"], "run_id": int(r["run_id"]),
                         "error": r["error"]})
        else:
            rows.append({"job": job, "status": "none", "run_id": None, "error": None})
    return pd.DataFrame(rows, columns=["job", "status", "run_id", "error"])


def expected_jobs(grid, stage: str = "evaluate") -> list[str]:
    """Job names of a grid (a name, a path or a loaded grid dict) for one stage."""
    g = rgrid.load_grid(grid) if isinstance(grid, str | Path) else grid
    points = rgrid.expand(g)
    if stage in ("teacher", "couplings"):
        return sorted({f"{stage}/{p.dataset}/seed~{p.seed}" for p in points})
    return [f"{stage}/{p.dataset}/seed~{p.seed}/{p.name}" for p in points]
