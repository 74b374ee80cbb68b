"""Where params come from: the params folder a stage reads, a preset named or given by path."""

from __future__ import annotations

import os
from pathlib import Path

from reflowma.infra.config.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parents[2]  # src/reflowma


def _has_presets(root: Path) -> bool:
    return (root / "params" / "presets").is_dir()


def params_dir() -> Path:
    """The params folder: ``$REFLOWMA_ROOT/params`` if the variable is set; else ``params/`` of
    the nearest ancestor of the current directory that holds ``params/presets/``; else the
    params shipped inside the installed package (``reflowma/params``, a copy of the project's
    ``params/`` in a wheel, a link to it in a source checkout)."""
    env = os.environ.get("REFLOWMA_ROOT")
    if env:
        return Path(env).resolve() / "params"
    cwd = Path.cwd().resolve()
    for d in (cwd, *cwd.parents):
        if _has_presets(d):
            return d / "params"
    if _has_presets(PACKAGE_DIR):
        return PACKAGE_DIR / "params"
    raise ConfigError("params", f"no params folder (params/presets/) in {str(cwd)!r} or its "
                      "parents, none shipped with the package and REFLOWMA_ROOT is not set; "
                      "run in a project folder or set REFLOWMA_ROOT to one (--params NAME|PATH "
                      "picks a preset, the defaults come from that folder)")


def repo_root() -> Path:
    """The project whose ``params/`` a stage reads (see ``params_dir``)."""
    return params_dir().parent


def preset_path(name_or_path: str | Path) -> Path:
    """A preset's file: ``name_or_path`` itself where it is a YAML path or exists, else
    ``params/presets/<name>.yaml``."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    cand = params_dir() / "presets" / f"{name_or_path}.yaml"
    if not cand.is_file():
        names = sorted(q.stem for q in (params_dir() / "presets").glob("*.yaml"))
        raise ConfigError("preset", f"{str(name_or_path)!r} is not a preset; allowed: "
                          f"{', '.join(names)} or a path to a YAML file")
    return cand


def shown_path(path: str | Path) -> str:
    """A file as messages name it: relative to the working directory when below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
