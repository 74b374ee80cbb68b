"""Ablation grids and the plan of the Snakemake workflow (pure, apart from writing configs).

A grid (params/grids/*.yaml) lists datasets, seeds and axes (dotted reflow fields -> values);
its points are the Cartesian product minus ``exclude``. A point is named in paths as
``alias~value`` segments in axis order (``K~2/lam~0.1/logdet~exact/ws~1.0``). Every point's
reflow config is validated before any job starts. ``write_if_changed`` writes each job's fully
resolved stage config only when its content changes, so Snakemake reruns exactly the jobs whose
config changed (the resolved config file is the job's input). ``equal_time: true`` adds, per
regularized point, an equal-time control (``equal_time_twins``): the lam-0 control's training,
for the regularized student's measured seconds (its reflow job reads that student's record).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from reflowma import data
from reflowma.data import readers
from reflowma.infra import config
from reflowma.infra.storage.atomic import atomic_path, content_sha256
from reflowma.registry import InputError

ALIASES = {"regularizer.weight": "lam", "regularizer.logdet": "logdet",
           "regularizer.discrepancy": "disc",
           "window_start_weight": "ws", "regularizer.eps": "eps",
           "regularizer.warm_start": "warm", "regularizer.share_window_start": "share",
           "loss.name": "loss", "time_sampler.name": "tsamp"}


def fmt(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


@dataclass(frozen=True)
class Point:
    dataset: str
    seed: int
    fields: tuple  # ((dotted field, value), ...) in axis order
    name: str = field(compare=False)
    # an equal-time control: (the regularized point's name, its lam-0 control's name)
    equal_time: tuple | None = None


WEIGHT = "regularizer.weight"
BUDGET_KEY, BUDGET_PREFIX = "budget", "time_of_lam_"


def is_regularizer_field(key: str) -> bool:
    """Fields that only matter when the regularizer is on (as the report's matching)."""
    return key.startswith("regularizer.")


def control_of(pt: Point, points) -> Point | None:
    """The lam-0 control of a regularized point among ``points``: same dataset, seed and every
    field but the regularizer's; among several, the one sharing most regularizer settings
    (the report's ``stats.baseline_of`` on names)."""
    d = dict(pt.fields)
    best, score = None, -1
    for q in points:
        e = dict(q.fields)
        if (q.equal_time or (q.dataset, q.seed) != (pt.dataset, pt.seed) or set(e) != set(d)
                or e.get(WEIGHT) != 0):
            continue
        if any(e[k] != d[k] for k in d if not is_regularizer_field(k)):
            continue
        sc = sum(e[k] == d[k] for k in d if is_regularizer_field(k) and k != WEIGHT)
        if sc > score:
            best, score = q, sc
    return best


def point_name(fields) -> str:
    """A point's name in paths: ``alias~value`` segments in axis order."""
    return "/".join(f"{ALIASES.get(k, k)}~{fmt(v)}" for k, v in fields)


def equal_time_point(pt: Point, ctrl: Point) -> Point:
    """The equal-time control of regularized point ``pt`` (lam-0 control ``ctrl``): ``pt``'s
    fields with the control's lam (the regularizer is off, so its other settings change
    nothing in training), named ``K~2/lam~0.0/ws~1.0/budget~time_of_lam_0.1`` (the lam it is
    timed against: unique per regularized point)."""
    w0 = dict(ctrl.fields)[WEIGHT]
    fields = tuple((k, w0 if k == WEIGHT else v) for k, v in pt.fields)
    name = f"{point_name(fields)}/{BUDGET_KEY}~{BUDGET_PREFIX}{fmt(dict(pt.fields)[WEIGHT])}"
    return Point(pt.dataset, pt.seed, fields, name, (pt.name, ctrl.name))


def equal_time_of(name: str) -> str | None:
    """The regularized point an equal-time control's name is timed against (None for any
    other name): ``K~2/lam~0.0/ws~1.0/budget~time_of_lam_0.1`` -> ``K~2/lam~0.1/ws~1.0``."""
    segs = name.split("/")
    key, _, val = segs[-1].partition("~")
    if key != BUDGET_KEY or not val.startswith(BUDGET_PREFIX):
        return None
    lam = ALIASES[WEIGHT]
    return "/".join(f"{lam}~{val[len(BUDGET_PREFIX):]}" if s.split("~", 1)[0] == lam else s
                    for s in segs[:-1])


def equal_time_twins(points: list[Point]) -> list[Point]:
    """``equal_time: true``: one equal-time control per regularized point (``equal_time``
    names the regularized point and its control, whose records plan its training)."""
    out = []
    for pt in points:
        if not dict(pt.fields).get(WEIGHT, 0) > 0:
            continue
        ctrl = control_of(pt, points)
        if ctrl is None:
            raise config.ConfigError("grid.equal_time", f"true needs a lam-0 control of every "
                                     f"regularized point; {pt.dataset}/seed~{pt.seed}/{pt.name} "
                                     f"has none (add 0.0 to {WEIGHT} or drop the exclude that "
                                     "removes it); allowed: false, or a grid with controls")
        out.append(equal_time_point(pt, ctrl))
    return out


@cache
def _validator(name: str):
    return Draft202012Validator(yaml.safe_load((config.SCHEMA_PATH.parent
                                                / f"{name}.schema.yaml").read_text()))


def check_schema(name: str, obj, where: str) -> None:
    err = best_match(_validator(name).iter_errors(obj))
    if err is not None:
        raise config.schema_error(err, where)


def grid_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        return p
    cand = config.params_dir() / "grids" / f"{name_or_path}.yaml"
    if not cand.is_file():
        names = sorted(q.stem for q in (config.params_dir() / "grids").glob("*.yaml"))
        raise config.ConfigError("grid", f"{name_or_path!r} is not a grid; allowed: "
                                 f"{', '.join(names)} or a path to a YAML file")
    return cand


def load_grid(name_or_path: str) -> dict:
    g = config.load_yaml(grid_path(name_or_path), "grid")
    check_schema("grid", g, "grid")
    user = user_datasets()
    for i, name in enumerate(g["datasets"]):
        if name in user:
            dataset_section(name)  # the file exists and loads: checked here, not in a job
        else:
            config.check_dataset_name(f"grid.datasets.{i}", name)
    return g


DATASETS_FILE = "datasets.yaml"


def user_datasets() -> dict:
    """``params/datasets.yaml``: {NAME: data section} ({} when the file is absent)."""
    path = config.params_dir() / DATASETS_FILE
    if not path.is_file():
        return {}
    return config.load_yaml(path, "datasets")


def _resolve_path(path: str) -> str:
    """A relative path of params/datasets.yaml is relative to the project (the folder holding
    params/); written relative to the working directory when below it, else absolute."""
    p = Path(path)
    if not p.is_absolute():
        p = config.params_dir().parent / p
    p = p.resolve()
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def dataset_section(name: str) -> dict:
    """The ``data`` section of a grid dataset: ``{"name": name}`` for a registered one; for an
    entry of params/datasets.yaml its fields, the path resolved and ``sha256`` (the content
    hash of the file, so a changed file changes every resolved config of that dataset).
    A missing or unreadable file is a ConfigError naming the entry and the file."""
    user = user_datasets()
    if name not in user:
        return {"name": name}
    where = f"datasets.{name}"
    entry = user[name]
    if not isinstance(entry, dict) or not entry.get("name"):
        raise config.ConfigError(where, f"{entry!r} is not a data section; expected "
                                 "{name: file, path: data/points.npy} (the fields of a stage's "
                                 "data section)")
    if entry["name"] in user:
        raise config.ConfigError(f"{where}.name", f"{entry['name']!r} names another entry; "
                                 "allowed: a registered dataset (file, images, cifar10, ...)")
    sec = {k: v for k, v in entry.items() if k != "sha256"}
    if sec.get("path"):
        sec["path"] = _resolve_path(str(sec["path"]))
    try:
        cfg = config.stage_config("teacher", None, [(["data"], sec)], check_files=False)
    except config.ConfigError as e:
        raise config.ConfigError(f"{where}.{e.field.split('.data.', 1)[-1]}",
                                 str(e).split(": ", 1)[1]) from None
    path = sec.get("path")
    if path:
        if not Path(path).exists():
            raise config.ConfigError(f"{where}.path", f"file {entry['path']!r} does not exist "
                                     f"(looked for {path!r}); add it (dvc add / dvc pull) or fix "
                                     f"params/{DATASETS_FILE}")
        sec["sha256"] = content_sha256(path)
    try:  # reads the file (torch-free for file and images): a malformed one fails at parse time
        if readers.read_user_file(cfg["data"]) is None:  # a bundled or plug-in dataset
            data.data_shape(cfg["data"])
    except config.ConfigError:
        raise
    except InputError as e:  # "data.<field>: ..." -> the entry's field
        field, _, msg = str(e).partition(": ")
        raise config.ConfigError(f"{where}.{field.removeprefix('data.')}", msg) from None
    except Exception as e:  # noqa: BLE001 - any reader error names the entry and the file
        raise config.ConfigError(where, f"cannot read {entry.get('path')!r}: "
                                 f"{type(e).__name__}: {e}") from None
    return sec


def expand(grid: dict) -> list[Point]:
    axes = list(grid["axes"].items())
    excl = grid.get("exclude", [])
    for i, e in enumerate(excl):  # a typo would otherwise exclude nothing, silently
        for k, v in e.items():
            if k not in grid["axes"]:
                raise config.ConfigError(f"grid.exclude.{i}.{k}", "is not an axis of the grid; "
                                         f"allowed: {', '.join(grid['axes'])}")
            if v not in grid["axes"][k]:
                raise config.ConfigError(f"grid.exclude.{i}.{k}", f"{v!r} is not a value of "
                                         f"that axis; allowed: {grid['axes'][k]}")
    points = []
    for dataset in grid["datasets"]:
        for seed in grid["seeds"]:
            for values in itertools.product(*[v for _, v in axes]):
                fields = tuple((k, v) for (k, _), v in zip(axes, values, strict=True))
                d = dict(fields)
                if any(all(d.get(k) == v for k, v in e.items()) for e in excl):
                    continue
                name = point_name(fields)
                points.append(Point(dataset, int(seed), fields, name))
    if not points:
        raise config.ConfigError("grid.exclude", "excludes every point: the grid is empty")
    if grid.get("equal_time"):
        vals = grid["axes"].get(WEIGHT, [])
        if not any(isinstance(v, int | float) and v > 0 for v in vals):
            raise config.ConfigError("grid.equal_time", f"true needs an axis {WEIGHT} with a "
                                     "value > 0 (and 0.0 for the control); allowed: false, or "
                                     "such an axis")
        points += equal_time_twins(points)
    return points


def load_preset(name_or_path: str) -> dict:
    p = config.load_yaml(config.preset_path(name_or_path))
    res = p.pop("resources", {}) or {}
    check_schema("resources", res, "preset.resources")
    config.check_preset(p)
    return {"stages": p, "resources": res}


def _shared(section: dict, seed: int) -> list:
    return [(["data", k], v) for k, v in section.items()] + [(["seed"], seed)]


def _check_datasets(p: dict, grid: dict) -> None:
    """A preset's data section that names a file must not be overridden by the grid's dataset
    (the file would be carried along unused)."""
    sections = [("preset.data", p.get("data"))] + [
        (f"preset.{s}.data", (p.get(s) or {}).get("data")) for s in config.STAGES]
    for where, section in sections:
        name = section.get("name") if isinstance(section, dict) else None
        if not name or not section.get("path"):  # (a path without a name: validate() refuses it)
            continue
        for i, dataset in enumerate(grid["datasets"]):
            if dataset != name:
                raise config.ConfigError(
                    f"grid.datasets.{i}", f"{dataset!r} conflicts with {where} "
                    f"(name {name!r}, path {section['path']!r}): the grid's dataset replaces "
                    f"data.name and the file would go unused; list {name!r} in the grid or "
                    "drop data from the preset")


def stage_configs(preset: dict, grid: dict, points: list[Point]) -> dict:
    """Validated config of every job: {(stage, key): cfg}; key = (dataset, seed[, point])."""
    p = preset["stages"]
    _check_datasets(p, grid)
    out = {}
    checked = set()
    sections = {d: dataset_section(d) for d in grid["datasets"]}  # hashes each file once
    reflow = config.layered("reflow", p)  # merged once; each point only adds its overrides
    for pt in points:  # grid points first: their errors name the grid field
        shared = _shared(sections[pt.dataset], pt.seed)
        ov = shared + [(k.split("."), v) for k, v in pt.fields]
        try:
            # The schema has no cross-field rules: a point is schema-valid iff its dataset and
            # seed's base is and each of its (field, value) overrides is, so each base and each
            # override is checked once (an override on the first base it comes with);
            # cross-field checks run on every point.
            for k, v in [(None, None), *pt.fields]:
                key = (pt.dataset, pt.seed) if k is None else (k, repr(v))
                if key not in checked:
                    config.resolve("reflow", *reflow, shared + ([(k.split("."), v)] if k else []))
                    checked.add(key)
            cfg = config.resolve("reflow", *reflow, ov, schema_check=False)
        except config.ConfigError as e:
            raise config.ConfigError(e.field, f"{str(e).split(': ', 1)[1]} (grid point "
                                     f"{pt.dataset}/seed~{pt.seed}/{pt.name})") from None
        out[("reflow", (pt.dataset, pt.seed, pt.name))] = cfg
    Ks = {c["K"] for c in out.values()}
    for dataset in grid["datasets"]:
        for seed in grid["seeds"]:
            base = _shared(sections[dataset], seed)
            out[("teacher", (dataset, seed))] = config.stage_config("teacher", p, base)
            cp = config.stage_config("couplings", p, base)
            cp = config.stage_config("couplings", p, base + [(["windows"], sorted(
                set(cp["windows"]) | Ks))])
            out[("couplings", (dataset, seed))] = cp
            ev = config.stage_config("evaluate", p, base)
            if ev["n_samples"] > cp["n_test"]:  # the evaluate job would refuse it
                raise config.ConfigError("evaluate.n_samples", f"{ev['n_samples']} is more than "
                                         f"couplings.n_test = {cp['n_test']}, the test couplings "
                                         f"it evaluates on; allowed: <= {cp['n_test']}")
            if ev["logdet"]["enabled"] and ev["logdet"]["n_points"] > cp["n_test"]:
                raise config.ConfigError("evaluate.logdet.n_points", f"{ev['logdet']['n_points']}"
                                         f" is more than couplings.n_test = {cp['n_test']}; "
                                         f"allowed: <= {cp['n_test']}")
            out[("evaluate", (dataset, seed))] = ev
            if ev.get("fd_classifier"):  # the classifier job exists only where it is used
                out[("classifier", (dataset, seed))] = config.stage_config("classifier", p, base)
    return out


def as_preset(stage: str, cfg: dict) -> dict:
    """A resolved stage config in preset form (shared fields at the top)."""
    top = {k: cfg[k] for k in config.SHARED}
    return {**top, stage: {k: v for k, v in cfg.items() if k not in config.SHARED}}


def config_text(obj) -> str:
    """The text of a resolved config file."""
    return "# written by the workflow from the preset and grid; do not edit\n" + yaml.safe_dump(
        obj, sort_keys=True)


def is_current(path: Path, obj) -> bool:
    """Whether ``path`` already holds exactly ``obj``'s config text."""
    return path.is_file() and path.read_text() == config_text(obj)


def write_if_changed(path: Path, obj) -> bool:
    if is_current(path, obj):
        return False
    text = config_text(obj)
    with atomic_path(path, fsync=False) as tmp:
        tmp.write_text(text)
    return True


def rule_resources(preset: dict, rule: str) -> dict:
    res = preset["resources"]
    return {**res.get("default", {}), **res.get(rule, {})}
