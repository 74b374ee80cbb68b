"""Validating a stage's config: the schema (``schemas/params.schema.yaml``), then the checks a
schema cannot express. Each violation raises ``ConfigError`` naming the field, the value and
what is allowed, before any work starts. What a dataset accepts is the data layer's
(``data.catalog``), what the Inception metrics need is the evaluation layer's
(``evaluation.inception_inputs``): both torch-free, as the workflow's parse runs these checks.

The dataset and objective registries are imported on first use: they import torch (the
architectures' registry names its built-ins as ``module:function`` and imports none)."""

from __future__ import annotations

import json
from functools import cache, lru_cache
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from reflowma.data import catalog
from reflowma.evaluation import inception_inputs
from reflowma.infra.config.errors import ConfigError
from reflowma.models import MODELS

STAGES = ("teacher", "couplings", "reflow", "evaluate", "classifier")
SHARED = ("seed", "device", "data")  # a preset's top-level fields, shared by every stage
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "params.schema.yaml"


@lru_cache(maxsize=1)
def schema() -> dict:
    """The params schema, read with libyaml's safe loader where PyYAML has it (about 10x
    faster on this file than the pure-Python one, which the user's files keep for its error
    messages)."""
    return yaml.load(SCHEMA_PATH.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@cache
def _validator(stage: str):
    return Draft202012Validator({"$ref": f"#/$defs/{stage}", "$defs": schema()["$defs"]})


def schema_error(err, stage: str) -> ConfigError:
    """The one-line ``ConfigError`` of a jsonschema error under ``stage`` (a field prefix)."""
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


def check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise ConfigError("stage", f"{stage!r} is not a stage; allowed: {', '.join(STAGES)}")


def validate(stage: str, cfg: dict, schema_check: bool = True, check_files: bool = True) -> dict:
    """Schema check plus the checks a schema cannot express; returns cfg.

    ``schema_check=False`` runs only the latter (for configs whose every field was already
    validated, e.g. grid points built from validated per-field overrides). ``check_files=False``
    skips whether ``data.path`` exists (``reflowma describe`` on a machine without the data).
    """
    check_stage(stage)
    errors = list(_validator(stage).iter_errors(cfg)) if schema_check else []
    if errors:
        raise schema_error(best_match(errors), stage)
    if "net" in cfg and stage != "classifier":  # the classifier's net: the schema alone
        _check_net(stage, cfg["net"])
    for i, entry in enumerate(cfg.get("objectives") or []):
        from reflowma.objectives import OBJECTIVES  # the registry: torch

        if entry["name"] not in OBJECTIVES:
            raise ConfigError(f"{stage}.objectives.{i}.name", f"unknown {entry['name']!r}; "
                              f"allowed: {', '.join(OBJECTIVES.names())}")
    data = cfg["data"]
    check_dataset_name(f"{stage}.data.name", data["name"])
    _raise(f"{stage}.data", catalog.section_problem(data, check_files))
    train = cfg.get("train", {})
    if train.get("lr_scaling", "none") != "none" and train.get("lr_reference_batch") is None:
        raise ConfigError(f"{stage}.train.lr_reference_batch", "is required when "
                          f"train.lr_scaling is {train['lr_scaling']!r}: the batch size train.lr "
                          "was tuned at (or set lr_scaling: none)")
    if train.get("amp") == "bf16" and cfg["device"] == "cpu":
        raise ConfigError(f"{stage}.train.amp", "'bf16' autocast needs a CUDA device, "
                          "device is 'cpu'; allowed here: none")
    if stage == "classifier" or (stage == "evaluate" and cfg.get("fd_classifier")):
        what = "the classifier stage" if stage == "classifier" else "evaluate.fd_classifier: true"
        _raise(f"{stage}.data", catalog.labelled_images_problem(data, what, check_files))
    if stage == "evaluate":
        _raise("evaluate", inception_inputs.problem(cfg, check_files))
    if stage == "couplings" and cfg["solver"] == "dopri5" and cfg["time_grid"] != "uniform":
        raise ConfigError("couplings.time_grid", f"{cfg['time_grid']!r} places fixed steps; "
                          "solver dopri5 places its own: allowed with dopri5: uniform")
    if stage == "reflow":
        reg, K = cfg["regularizer"], cfg["K"]
        if isinstance(reg["windows"], list) and max(reg["windows"]) >= K:
            raise ConfigError("reflow.regularizer.windows",
                              f"{reg['windows']} has an index >= K = {K}; allowed: 0..{K - 1}")
        if reg["share_window_start"] and reg["weight"] > 0:
            _check_shared_window_start(cfg)
    return cfg


def _check_shared_window_start(cfg: dict) -> None:
    """``regularizer.share_window_start`` joins the window-start term (every window) with the
    reverse-KL regularizer: both must be on and the regularizer must cover every window."""
    reg, field = cfg["regularizer"], "reflow.regularizer.share_window_start"
    if cfg["window_start_weight"] <= 0:
        raise ConfigError(field, "true needs the window-start term (window_start_weight > 0); "
                          "it is 0: set share_window_start to false")
    if reg["discrepancy"] != "reverse_kl":
        raise ConfigError(field, f"true needs regularizer.discrepancy reverse_kl, it is "
                          f"{reg['discrepancy']!r}: set share_window_start to false")
    if reg["windows"] != "all" and sorted(set(reg["windows"])) != list(range(cfg["K"])):
        raise ConfigError(field, f"true needs regularizer.windows all (the window-start term "
                          f"covers every window), it is {reg['windows']}")


def _raise(where: str, problem: tuple[str, str] | None) -> None:
    """A ``(key, message)`` problem of another layer's check as the ``ConfigError`` of field
    ``where.key``."""
    if problem is not None:
        raise ConfigError(f"{where}.{problem[0]}", problem[1])


def check_dataset_name(field: str, name: str) -> None:
    """``name`` is a registered dataset (bundled names need no import of the registry)."""
    if catalog.declared(name) is not None:
        return
    from reflowma.data import DATASETS  # the registry: torch

    if name not in DATASETS:
        raise ConfigError(field, f"unknown dataset {name!r}; allowed: "
                          f"{', '.join(DATASETS.names())}")


def _check_net(stage: str, net: dict) -> None:
    """``net.name`` is a registered architecture and the section fits that one's schema."""
    _net_check(stage, json.dumps(net, sort_keys=True))


@lru_cache(maxsize=256)
def _net_check(stage: str, net_json: str) -> None:
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
    """A preset's top level: the shared fields, one mapping per stage, ``resources``."""
    allowed = set(SHARED) | set(STAGES) | {"resources"}
    for key in preset:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}", f"unknown key; allowed keys here: "
                              f"{', '.join(sorted(allowed))}")
    for key in STAGES:
        if key in preset and not isinstance(preset[key], dict):
            raise ConfigError(f"{where}.{key}", f"must be a mapping, got {preset[key]!r}")
