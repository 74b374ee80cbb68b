"""A stage's config: ``defaults/common.yaml + defaults/<stage>.yaml``, overlaid by the preset's
shared fields (``seed``, ``device``, ``data``), then the preset's ``<stage>`` section, then
dotted overrides (``train.steps=100``), then validated (``validate``)."""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path

from reflowma.infra.config.errors import ConfigError
from reflowma.infra.config.load import (
    apply_overrides,
    deep_merge,
    load_yaml,
    parse_override,
    set_by_override,
)
from reflowma.infra.config.locate import params_dir, preset_path
from reflowma.infra.config.validate import SHARED, STAGES, check_preset, check_stage, validate


def defaults(stage: str) -> dict:
    """``defaults/common.yaml`` + ``defaults/<stage>.yaml`` (a fresh copy each call)."""
    d = params_dir() / "defaults"
    files = (d / "common.yaml", d / f"{stage}.yaml")
    key = tuple((str(f), f.stat().st_mtime_ns) if f.exists() else (str(f), 0) for f in files)
    return copy.deepcopy(_defaults(key))


@lru_cache(maxsize=16)
def _defaults(key) -> dict:
    return deep_merge(load_yaml(key[0][0]), load_yaml(key[1][0]))


def stage_config(stage: str, preset: str | Path | dict | None = None, overrides=(),
                 schema_check: bool = True, check_files: bool = True) -> dict:
    """Validated config of one stage (see the module docstring for the layering)."""
    return resolve(stage, *layered(stage, preset), overrides, schema_check, check_files)


def layered(stage: str, preset: str | Path | dict | None = None) -> tuple[dict, Path | None]:
    """(defaults + the preset's shared and stage sections, unvalidated; the params file or
    None): the part of ``stage_config`` that does not depend on the overrides, for callers
    that resolve many override sets on one preset (``grid.stage_configs``)."""
    check_stage(stage)
    cfg = defaults(stage)
    src = None  # the params file, named in errors about the values it set
    if preset is not None:
        if isinstance(preset, dict):
            p = preset
        else:
            src = preset_path(preset)
            p = load_yaml(src)
        try:
            check_preset(p)
        except ConfigError as e:
            raise _in_file(e, src) from None
        cfg = deep_merge(cfg, {k: p[k] for k in SHARED if k in p})
        cfg = deep_merge(_other_net_replaces(cfg, p.get(stage) or {}), p.get(stage) or {})
    return cfg, src


def resolve(stage: str, base: dict, src: Path | None, overrides=(), schema_check: bool = True,
            check_files: bool = True) -> dict:
    """``base`` (from ``layered``, not modified) with ``overrides`` applied, validated; errors
    about values the overrides did not set name ``src``."""
    overrides = [_strip_stage(stage, o) for o in overrides]
    cfg = apply_overrides(base, overrides, where=stage)
    try:
        return validate(stage, cfg, schema_check, check_files)
    except ConfigError as e:
        if set_by_override(e.field, overrides):
            raise
        raise _in_file(e, src) from None


def _other_net_replaces(cfg: dict, over: dict) -> dict:
    """A ``net`` section naming another architecture replaces the default one instead of being
    merged into it (the default's fields belong to the default architecture)."""
    net = over.get("net")
    if isinstance(net, dict) and "net" in cfg and net.get("name", cfg["net"].get("name")) != \
            cfg["net"].get("name"):
        return {**cfg, "net": {}}
    return cfg


def _strip_stage(stage: str, item):
    """``evaluate.audit.enabled=true`` -> ``audit.enabled=true``: the dotted path of a params
    file (stage section first) works on the command line too, and so does the short form.
    A path naming another stage is an error (it would be silently ignored otherwise)."""
    path, value = item if isinstance(item, tuple) else parse_override(item)
    if path[0] in STAGES and len(path) > 1:
        if path[0] != stage:
            raise ConfigError(".".join(path), f"sets the {path[0]} stage, not {stage}; "
                              f"write it in the params file or on `reflowma {path[0]}`")
        path = path[1:]
    return path, value


def _in_file(err: ConfigError, src: Path | None) -> ConfigError:
    if src is None:
        return err
    return ConfigError(err.field, f"{str(err).split(': ', 1)[1]} (in params file {str(src)!r})")
