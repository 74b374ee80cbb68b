"""Sacred wrapper: one run record per job.

``recorded(stage, cfg, fn, runs_dir, job)`` runs ``fn(cfg, on_log)`` inside a Sacred experiment
with a ``FileStorageObserver`` under ``runs_dir`` (Sacred's incremental ids, with its retry on
collision, keep concurrent jobs apart; ``job`` — the grid point — is stored in the run's info so
readers pick the latest completed run per job). The config is the validated params (its
``seed`` is Sacred's seed), training rows are logged as metrics with their step, the returned
metrics are the run's result, and ``attach`` files become artifacts. Failures are recorded as
FAILED with the traceback; SIGTERM/SIGINT as INTERRUPTED. Host, git commit and dirty flag and
package versions are Sacred's own records.

Set ``REFLOWMA_MONGO_URL`` (and optionally ``REFLOWMA_MONGO_DB``) to also record to MongoDB
(for Omniboard; needs ``pip install pymongo``). Nothing needs a server by default.
"""

from __future__ import annotations

import json
import os
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from reflowma.infra import config
from reflowma.infra.signals import Interrupted

# Sacred's import warns that pkg_resources is deprecated; the warning is about Sacred's own
# import and says nothing about a run, so it stays out of every job's log.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    from sacred import SETTINGS, Experiment
    from sacred.dependencies import get_commit_if_possible
    from sacred.observers import FileStorageObserver, MongoObserver
    from sacred.utils import SacredInterrupt, apply_backspaces_and_linefeeds


def _plain(obj):
    return json.loads(json.dumps(obj, default=str))


PACKAGES = ("reflowma", "torch", "numpy", "scipy", "h5py", "pot", "scikit-learn", "torchdiffeq",
            "pandas", "pyyaml", "jsonschema", "sacred", "snakemake", "dvc")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a run's numbers depend on."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


PACKAGE_DIR = Path(__file__).resolve().parents[1]


def repository(path=PACKAGE_DIR) -> list[dict]:
    """Sacred's repository entry (url, commit, dirty) of the git checkout holding ``path``,
    or ``[]`` outside one (an installed wheel)."""
    try:
        url, commit, dirty = get_commit_if_possible(str(Path(path) / "__init__.py"), True)
    except ValueError:  # GitPython or git missing
        return []
    return [{"url": url, "commit": commit, "dirty": dirty}] if url else []


def _experiment(base, name: str):
    """A Sacred experiment whose sources are the package's files and whose git repository is
    recorded once.

    Sacred (``save_git_info=True``) asks git about every source file and lists the repository
    once per file in ``experiment.repositories`` (``collect_repositories``, one entry per
    source), running ``git status`` for each. Here sources carry no git info and the one
    repository of the package is looked up once.
    """

    class _Experiment(base):
        def get_experiment_info(self):
            out = super().get_experiment_info()
            out["repositories"] = repository()
            return out

    return _Experiment(name, base_dir=str(PACKAGE_DIR), save_git_info=False)


def recorded(stage: str, cfg: dict, fn, runs_dir, job: str, attach=(), info=None):
    """Run ``fn(cfg, on_log) -> metrics`` as one Sacred run; returns the metrics."""
    SETTINGS.CAPTURE_MODE = "sys"
    SETTINGS.DISCOVER_SOURCES = "dir"

    class _Interrupt(SacredInterrupt):
        STATUS = "INTERRUPTED"

    ex = _experiment(Experiment, f"reflowma.{stage}")
    packages = package_versions()
    for name, installed in packages.items():  # Sacred's parser refuses local labels (+cpu)
        ex.add_package_dependency(name, installed.split("+")[0])
    ex.captured_out_filter = apply_backspaces_and_linefeeds
    ex.observers.append(FileStorageObserver(str(runs_dir)))
    if os.environ.get("REFLOWMA_MONGO_URL"):
        ex.observers.append(MongoObserver(url=os.environ["REFLOWMA_MONGO_URL"],
                                          db_name=os.environ.get("REFLOWMA_MONGO_DB", "reflowma")))
    ex.add_config(_plain(cfg))
    try:  # which project's params the job read (not in the config: that would change hashes)
        params_dir = str(config.params_dir())
    except config.ConfigError:
        params_dir = None
    holder = {}

    @ex.main
    def _main(_run):
        _run.info.update({"job": job, "stage": stage, "packages": packages,
                          "params_dir": params_dir, **(info or {})})
        # write info.json at the run's start, not at the first heartbeat (10 s in): a job killed
        # outright (SIGKILL, OOM, node failure) still leaves a record that names the job
        if hasattr(_run, "_emit_heartbeat"):
            _run._emit_heartbeat()

        def on_log(row):
            for k, v in row.items():
                if k != "step":
                    _run.log_scalar(f"train.{k}", v, row["step"])

        try:
            metrics = fn(cfg, on_log)
        except Interrupted as e:
            holder["interrupted"] = e
            raise _Interrupt() from e
        for path in attach:
            if Path(path).is_file():
                _run.add_artifact(str(path), name=f"{stage}.{Path(path).name}")
        return _plain(metrics)

    try:
        run = ex.run()
    except _Interrupt:
        raise holder["interrupted"] from None
    return run.result
