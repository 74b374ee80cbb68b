"""Params: defaults per stage, named presets, ``key=value`` overrides, schema validation.

A stage's config is ``defaults/common.yaml + defaults/<stage>.yaml``, overlaid by the preset's
top-level shared fields (``seed``, ``device``, ``data``), then the preset's ``<stage>`` section,
then dotted overrides (``train.steps=100``). The result is validated against
``schemas/params.schema.yaml`` before any work starts; a violation raises ``ConfigError`` with
one line naming the field, the value and what is allowed.
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys
from contextlib import contextmanager
from functools import cache, lru_cache
from pathlib import Path

import yaml

from reflowma.data import catalog
from reflowma.registry import InputError

STAGES = ("teacher", "couplings", "reflow", "evaluate", "classifier")
SHARED = ("seed", "device", "data")
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "params.schema.yaml"


class ConfigError(InputError):
    """A params problem; ``str(err)`` is one line naming the field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


PACKAGE_DIR = Path(__file__).resolve().parents[1]


@contextmanager
def exit_on_bad_params():
    """For the workflow's parse-time checks: an ``InputError`` prints one line ``reflowma:
    error: ...`` on stderr and exits 2, as the reflowma command does (raised through
    Snakemake it would print a traceback frame and exit 1)."""
    try:
        yield
    except InputError as e:
        print(f"reflowma: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _has_presets(root: Path) -> bool:
    return (root / "params" / "presets").is_dir()


def repo_root() -> Path:
    """The project whose ``params/`` a stage reads (see ``params_dir``)."""
    return params_dir().parent


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


def shown_path(path: str | Path) -> str:
    """A file as messages name it: relative to the working directory when below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


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


@lru_cache(maxsize=1)
def schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


@cache
def _validator(stage: str):
    from jsonschema import Draft202012Validator

    s = schema()
    return Draft202012Validator({"$ref": f"#/$defs/{stage}", "$defs": s["$defs"]})


def schema_error(err, stage: str) -> ConfigError:
    field = ".".join([stage, *[str(p) for p in err.absolute_path]])
    kw, inst, sch = err.validator, err.instance, err.schema
    if kw == "additionalProperties":
        extra = sorted(set(inst) - set(sch.get("properties", {})))
        allowed = ", ".join(sorted(sch.get("properties", {})))
        return ConfigError(f"{field}.{extra[0]}" if extra else field,
                           f"unknown key; allowed keys here: {allowed}")
    if kw == "enum":
        return ConfigError(field, f"{inst!r} is not allowed; allowed: "
                           f"{', '.join(map(str, sch['enum']))}")
    if kw == "type":
        want = sch["type"] if isinstance(sch["type"], str) else " or ".join(sch["type"])
        return ConfigError(field, f"{inst!r} has the wrong type ({type(inst).__name__}); "
                           f"expected {want}")
    bounds = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">",
              "exclusiveMaximum": "<"}
    if kw in bounds:
        return ConfigError(field, f"{inst!r} is out of range; must be {bounds[kw]} {sch[kw]}")
    if kw == "required":
        return ConfigError(field, err.message)
    if kw == "minItems":
        return ConfigError(field, f"{inst!r} has too few items; needs at least {sch['minItems']}")
    if kw == "oneOf":
        return ConfigError(field, f"{inst!r} is not allowed; {sch.get('description', '')}")
    return ConfigError(field, f"{inst!r}: {err.message}")


def validate(stage: str, cfg: dict, schema_check: bool = True, check_files: bool = True) -> dict:
    """Schema check plus the checks a schema cannot express; returns cfg.

    ``schema_check=False`` runs only the latter (for configs whose every field was already
    validated, e.g. grid points built from validated per-field overrides). ``check_files=False``
    skips whether ``data.path`` exists (``reflowma describe`` on a machine without the data).
    """
    if stage not in STAGES:
        raise ConfigError("stage", f"{stage!r} is not a stage; allowed: {', '.join(STAGES)}")
    errors = list(_validator(stage).iter_errors(cfg)) if schema_check else []
    if errors:
        from jsonschema.exceptions import best_match

        raise schema_error(best_match(errors), stage)
    if "net" in cfg and stage != "classifier":  # the classifier's net: the schema alone
        _check_net(stage, cfg["net"])
    for i, entry in enumerate(cfg.get("objectives") or []):
        from reflowma.objectives import OBJECTIVES

        if entry["name"] not in OBJECTIVES:
            raise ConfigError(f"{stage}.objectives.{i}.name", f"unknown {entry['name']!r}; "
                              f"allowed: {', '.join(OBJECTIVES.names())}")
    _check_data(stage, cfg["data"], check_files)
    train = cfg.get("train", {})
    if train.get("lr_scaling", "none") != "none" and train.get("lr_reference_batch") is None:
        raise ConfigError(f"{stage}.train.lr_reference_batch", "is required when "
                          f"train.lr_scaling is {train['lr_scaling']!r}: the batch size train.lr "
                          "was tuned at (or set lr_scaling: none)")
    if train.get("amp") == "bf16" and cfg["device"] == "cpu":
        raise ConfigError(f"{stage}.train.amp", "'bf16' autocast needs a CUDA device, "
                          "device is 'cpu'; allowed here: none")
    if stage == "classifier" or (stage == "evaluate" and cfg.get("fd_classifier")):
        _check_labelled_images(stage, cfg["data"], check_files)
    if stage == "evaluate":
        _check_inception(cfg, check_files)
    if stage == "reflow":
        reg, K = cfg["regularizer"], cfg["K"]
        if isinstance(reg["windows"], list) and max(reg["windows"]) >= K:
            raise ConfigError("reflow.regularizer.windows",
                              f"{reg['windows']} has an index >= K = {K}; allowed: 0..{K - 1}")
    return cfg


INCEPTION_METRICS = ("fid", "kid", "precision_recall")
INCEPTION_ENV = "REFLOWMA_INCEPTION_WEIGHTS"
INCEPTION_PYTHON_ENV = "REFLOWMA_INCEPTION_PYTHON"
INCEPTION_VENV = ".venv-inception"  # `make inception-env` creates it in the project folder


def _check_data(stage: str, data: dict, check_files: bool) -> None:
    """The data section against what its dataset declares (``data.catalog``): a name that
    exists, a path where the dataset reads one (and only there), a layout it has, flips and
    labels keys only where they apply."""
    f = f"{stage}.data"
    check_dataset_name(f"{f}.name", data["name"])
    d, path = catalog.declared(data["name"]), data.get("path")
    if d is None:  # a plug-in's dataset: checked when it reads its data
        return
    if path and not d.reads_path:
        raise ConfigError(f"{f}.path", f"{path!r} is set but data.name is {data['name']!r}, a "
                          "bundled dataset that never reads it; set data.name to file (points) "
                          "or images to read the file, or drop data.path")
    if d.reads_path:
        if not path:
            raise ConfigError(f"{f}.path", f"is required when data.name is {data['name']!r}")
        points = data["name"] == "file"  # a file; the image sets also read folders
        if check_files and not (Path(path).is_file() if points else Path(path).exists()):
            raise ConfigError(f"{f}.path", f"file {path!r} does not exist")
        if points and Path(path).suffix.lower() not in catalog.POINT_SUFFIXES:
            raise ConfigError(f"{f}.path", f"{path!r}: allowed suffixes "
                              f"{', '.join(catalog.POINT_SUFFIXES)}")
    if data.get("layout") and data["layout"] not in d.layouts:
        raise ConfigError(f"{f}.layout", f"{data['layout']!r} is not a layout of "
                          f"{data['name']!r}; allowed: {', '.join(d.layouts)}")
    if data.get("hflip") and not catalog.image_layout(data):
        raise ConfigError(f"{f}.hflip", f"applies to images [C, H, W] "
                          f"({', '.join(sorted(catalog.IMAGE_SETS))}, digits with layout "
                          f"image), not {data['name']!r} with layout "
                          f"{data.get('layout') or d.layout!r}")
    if data.get("labels_key"):
        if d.labels != "file":
            raise ConfigError(f"{f}.labels_key", f"applies to data.name images (an .npz's "
                              f"label array), not {data['name']!r}")
        if check_files and path and Path(path).is_dir():
            raise ConfigError(f"{f}.labels_key", f"{data['labels_key']!r} is set but {path!r} "
                              "is a folder, whose labels are its class sub-folders; allowed: "
                              "unset")


def _check_labelled_images(stage: str, data: dict, check_files: bool) -> None:
    """The classifier (and so fd_classifier) needs labelled images ``[C, H, W]``."""
    what = "the classifier stage" if stage == "classifier" else "evaluate.fd_classifier: true"
    if catalog.has_labels(data, check_files) is False:
        if data["name"] == "images":
            raise ConfigError(f"{stage}.data.labels_key", f"images at {data.get('path')!r} "
                              f"have no class labels; {what} needs them: set data.labels_key to "
                              "the .npz's label array, or put the PNGs in one sub-folder per "
                              "class (or set evaluate.fd_classifier: false)")
        raise ConfigError(f"{stage}.data.name", f"{data['name']!r} has no class labels; "
                          f"{what} needs labelled images: mnist, cifar10, digits with layout "
                          "image, images with labels (or set evaluate.fd_classifier: false)")
    if catalog.image_layout(data) is False:
        raise ConfigError(f"{stage}.data.layout", f"{data.get('layout')!r}: {what} needs "
                          "images [C, H, W]; allowed: image")


def inception_weights(cfg: dict) -> str | None:
    """The Inception weights file of the torch-fidelity metrics: ``inception_weights``, else
    ``$REFLOWMA_INCEPTION_WEIGHTS``, else None."""
    return cfg.get("inception_weights") or os.environ.get(INCEPTION_ENV) or None


def inception_python(cfg: dict) -> str:
    """The interpreter of the Inception feature worker: ``inception_python``, else
    ``$REFLOWMA_INCEPTION_PYTHON``, else ``.venv-inception/bin/python`` of the project folder
    (next to ``params/``) where it exists, else this interpreter (a cluster's conda env)."""
    explicit = cfg.get("inception_python") or os.environ.get(INCEPTION_PYTHON_ENV)
    if explicit:
        return str(explicit)
    venv = params_dir().parent / INCEPTION_VENV / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def _check_inception(cfg: dict, check_files: bool) -> None:
    """fid/kid/precision_recall need a local Inception weights file: refused before any work
    without one (nothing is ever downloaded)."""
    wanted = [m for m in INCEPTION_METRICS if cfg.get(m)]
    if not wanted:
        return
    path = inception_weights(cfg)
    if path is None:
        raise ConfigError("evaluate.inception_weights", f"is required when evaluate."
                          f"{wanted[0]} is true: a local torch-fidelity Inception weights "
                          f"file (or set ${INCEPTION_ENV}); it is never downloaded (the "
                          "metrics need the optional extra torch-fidelity, see README)")
    if check_files and not Path(path).is_file():
        raise ConfigError("evaluate.inception_weights", f"file {path!r} does not exist")
    data = cfg["data"]
    if catalog.image_layout(data) is False:
        raise ConfigError("evaluate.data.name", f"{data['name']!r} (layout "
                          f"{data.get('layout')!r}): evaluate.{wanted[0]} needs images "
                          f"[C, H, W]: {', '.join(sorted(catalog.IMAGE_SETS))}, or digits with "
                          "layout image")


def check_dataset_name(field: str, name: str) -> None:
    """``name`` is a registered dataset (bundled names need no import of the registry)."""
    if catalog.declared(name) is not None:
        return
    from reflowma.data import DATASETS

    if name not in DATASETS:
        raise ConfigError(field, f"unknown dataset {name!r}; allowed: "
                          f"{', '.join(DATASETS.names())}")


def _check_net(stage: str, net: dict) -> None:
    """``net.name`` is a registered architecture and the section fits that one's schema."""
    _net_check(stage, json.dumps(net, sort_keys=True))


@lru_cache(maxsize=256)
def _net_check(stage: str, net_json: str) -> None:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    from reflowma.models import MODELS

    net = json.loads(net_json)
    if net["name"] not in MODELS:
        raise ConfigError(f"{stage}.net.name", f"unknown {net['name']!r}; allowed: "
                          f"{', '.join(MODELS.names())}")
    defs = schema()["$defs"]
    sch = ({"$ref": f"#/$defs/net_{net['name']}", "$defs": defs}
           if f"net_{net['name']}" in defs else getattr(MODELS.get(net["name"]), "schema", None))
    if sch is None:
        return
    errors = list(Draft202012Validator(sch).iter_errors(net))
    if errors:
        raise schema_error(best_match(errors), f"{stage}.net")


def check_preset(preset: dict, where: str = "preset") -> None:
    allowed = set(SHARED) | set(STAGES) | {"resources"}
    for key in preset:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}", f"unknown key; allowed keys here: "
                              f"{', '.join(sorted(allowed))}")
    for key in STAGES:
        if key in preset and not isinstance(preset[key], dict):
            raise ConfigError(f"{where}.{key}", f"must be a mapping, got {preset[key]!r}")


def preset_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    cand = params_dir() / "presets" / f"{name_or_path}.yaml"
    if not cand.is_file():
        names = sorted(q.stem for q in (params_dir() / "presets").glob("*.yaml"))
        raise ConfigError("preset", f"{str(name_or_path)!r} is not a preset; allowed: "
                          f"{', '.join(names)} or a path to a YAML file")
    return cand


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
    if stage not in STAGES:
        raise ConfigError("stage", f"{stage!r} is not a stage; allowed: {', '.join(STAGES)}")
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


def set_by_override(field: str, overrides) -> bool:
    """Whether the field (``stage.a.b``) or a part of it was set by a ``key=value`` override."""
    parts = field.split(".")[1:]
    for item in overrides:
        path = item[0] if isinstance(item, tuple) else parse_override(item)[0]
        n = min(len(parts), len(path))
        if parts[:n] == list(path[:n]):
            return True
    return False


def field_docs(stage: str, values: dict | None = None) -> list[tuple[str, str, object]]:
    """(dotted field, description, value) for every field of a stage, for ``--help``; the
    values are the stage defaults unless a resolved config is given."""
    s = schema()["$defs"]
    dflt = values if values is not None else defaults(stage)

    def resolve(node):
        while "$ref" in node:
            ref = node["$ref"].split("/")[2:]
            base = s
            for r in ref:
                base = base[r]
            node = {**base, **{k: v for k, v in node.items() if k != "$ref"}}
        return node

    rows = []

    def walk(node, prefix, dvals):
        if prefix == "net" and isinstance(dvals, dict):  # the chosen architecture's fields
            node = s.get(f"net_{dvals.get('name', 'mlp')}", node)
        node = resolve(node)
        props = node.get("properties")
        if props and node.get("type") == "object":
            for k, sub in props.items():
                walk(sub, f"{prefix}.{k}" if prefix else k,
                     dvals.get(k) if isinstance(dvals, dict) else None)
            return
        desc = node.get("description", "")
        if "enum" in node:
            desc += f" [{'|'.join(map(str, node['enum']))}]"
        rows.append((prefix, desc, dvals))

    walk(s[stage], "", dflt)
    return rows
