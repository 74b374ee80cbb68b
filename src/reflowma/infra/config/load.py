"""Reading params: YAML files (a syntax error is one line naming the file and line), merging
mappings, and ``key=value`` overrides."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

from reflowma.infra.config.errors import ConfigError
from reflowma.infra.config.locate import shown_path

# PyYAML's problems with a likely cause to name: a second top-level value, a key without ':'
_SECOND_VALUE, _NO_COLON = "expected '<document start>'", "could not find expected ':'"


def yaml_error(path: str | Path, e: yaml.YAMLError) -> ConfigError:
    """One line ``FILE:LINE: not valid YAML: problem (column, context)`` of a YAML error (a
    MarkedYAMLError's own text spans several lines and names no file). LINE is where PyYAML
    found the problem, except for a key without its ``:``, which PyYAML finds on the line
    after the key: there it is the key's line."""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark, ctx = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
    context = getattr(e, "context", None) or ""
    at = ctx if ctx is not None and (mark is None or "simple key" in context) else mark
    where = [] if at is None else [f"column {at.column + 1}"]
    if context and ctx is not None and ctx.line != at.line:
        where.append(f"{context} at line {ctx.line + 1}")
    if problem.startswith(_SECOND_VALUE):
        where.append("the file's top-level value ends above this line: is a {} or [] line "
                     "left above new entries?")
    if problem.startswith(_NO_COLON):
        where.append("this line is not a `key: value` of the mapping around it")
    text = " ".join(f"{problem} ({'; '.join(where)})".split()) if where else problem
    return ConfigError(f"{shown_path(path)}{f':{at.line + 1}' if at else ''}",
                       f"not valid YAML: {text}")


def load_yaml(path: str | Path, what: str = "params") -> dict:
    """A YAML mapping (``yaml.safe_load``: no Python tags); ``what`` names it in errors. A
    syntax error is one line naming the file and line (``yaml_error``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(what, f"file {str(path)!r} does not exist")
    try:
        obj = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise yaml_error(path, e) from None
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise ConfigError(what, f"{str(path)!r} must hold a mapping, got {type(obj).__name__}")
    return obj


def deep_merge(base: dict, over: dict) -> dict:
    """``base`` with ``over`` laid on it, mapping by mapping (a fresh copy; neither changes)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


_SCI_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def parse_override(text: str) -> tuple[list[str], object]:
    """``a.b=value`` -> (['a', 'b'], yaml-parsed value)."""
    if "=" not in text:
        raise ConfigError("override", f"{text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    if not key or any(not p for p in key.split(".")):
        raise ConfigError("override", f"{text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _SCI_FLOAT.match(raw.strip()):
        value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
    return key.split("."), value


def apply_overrides(cfg: dict, overrides, where: str = "") -> dict:
    """``cfg`` (a fresh copy) with each override (``a.b=value`` or ``(['a', 'b'], value)``)
    set; ``where`` prefixes the field named when a path runs through a non-mapping."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        path, value = item if isinstance(item, tuple) else parse_override(item)
        node = cfg
        for i, p in enumerate(path[:-1]):
            nxt = node.get(p)
            if not isinstance(nxt, dict):
                if nxt is None and p not in node:
                    nxt = node[p] = {}
                else:
                    field = ".".join([where, *path[: i + 1]]).strip(".")
                    raise ConfigError(field, f"is not a mapping, cannot set {'.'.join(path)}")
            node = nxt
        node[path[-1]] = value
    return cfg


def set_by_override(field: str, overrides) -> bool:
    """Whether the field (``stage.a.b``) or a part of it was set by a ``key=value`` override."""
    parts = field.split(".")[1:]
    for item in overrides:
        path = item[0] if isinstance(item, tuple) else parse_override(item)[0]
        n = min(len(parts), len(path))
        if parts[:n] == list(path[:n]):
            return True
    return False
