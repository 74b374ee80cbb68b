"""The pipeline stages' commands: ``reflowma NAME --params P [inputs] --out OUT [key=value ...]``.

``STAGES`` holds one entry per stage: its help, the function it runs on the validated config
(``module:function``, imported when it runs: the stages import torch) and the arguments that
function takes, its input files and what the run record keeps. ``run_stage`` validates the
config and runs the function, as a Sacred run with ``--runs``.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass(frozen=True)
class Arg:
    """One argument of a command: its flags (or name) and ``add_argument``'s keywords."""

    flags: tuple[str, ...]
    kw: dict = field(default_factory=dict)


def arg(*flags: str, **kw) -> Arg:
    return Arg(flags, kw)


def function(name: str) -> Callable:
    """The function ``module:function``, importing its module."""
    module, fn = name.split(":")
    return getattr(importlib.import_module(module), fn)


def metrics_json(out: Path, cfg: dict) -> list:
    return [out / "metrics.json"]


def evaluation_files(out: Path, cfg: dict) -> list:
    """The report reads eval.json and samples.npz from the record; image data: PNG grids."""
    from reflowma.stages import evaluate  # torch: imported once the stage runs

    return [out, evaluate.samples_path(out), *evaluate.image_paths(out, cfg["nfe"])]


@dataclass(frozen=True)
class Stage:
    """``reflowma NAME --params P [inputs] --out OUT [key=value ...]`` runs ``run(cfg,
    *passes)`` on the validated config. ``passes`` names the values after ``cfg``: an input
    flag's (``teacher`` for ``--teacher``), ``out`` (a Path), ``log`` (the run record's
    logger, None when not recorded), ``plan_steps`` (whether ``--time-of`` is given).
    ``attach(out, cfg)``: the files the run record keeps."""

    name: str
    help: str
    run: str
    passes: tuple[str, ...]
    out: str
    inputs: tuple[Arg, ...] = ()  # required (except with --print-config)
    optional: tuple[Arg, ...] = ()
    attach: Callable[[Path, dict], list] = metrics_json


def no_files(out: Path, cfg: dict) -> list:
    return []


TEACHER = arg("--teacher", help="teacher model file (teacher.pt)")
COUPLINGS = arg("--couplings", help="couplings HDF5 file")
STAGES = (
    Stage(name="teacher", help="train the flow-matching teacher",
          run="reflowma.stages.teacher:run", passes=("out", "log"), out="output folder"),
    Stage(name="couplings",
          help="generate teacher couplings (z, x) + window-end states (HDF5)",
          run="reflowma.stages.couplings:run", passes=("teacher", "out"),
          out="output HDF5 file", inputs=(TEACHER,), attach=no_files),
    Stage(name="reflow",
          help="train a reflow student (vanilla or piecewise, optional regularizer)",
          run="reflowma.stages.reflow:run",
          passes=("couplings", "teacher", "out", "log", "plan_steps"), out="output folder",
          inputs=(COUPLINGS, arg("--teacher", help="teacher model file")),
          optional=(arg("--time-of", help="a student's metrics.json: train for its training "
                        "seconds (train.time_budget_s), with train.steps planned from this "
                        "job's measured seconds per step (the equal-time control)"),)),
    Stage(name="evaluate", help="few-step NFE sweep and marginal metrics of a student",
          run="reflowma.stages.evaluate:run",
          passes=("student", "teacher", "couplings", "out", "classifier"),
          out="output JSON file",
          inputs=(arg("--student", help="student model file (student.pt)"),
                  arg("--teacher", help="teacher model file"), COUPLINGS),
          optional=(arg("--classifier", help="classifier model file (classifier.pt); "
                        "required with fd_classifier: true"),),
          attach=evaluation_files),
    Stage(name="classifier", help="train the small CNN whose features fd_classifier uses "
          "(labelled image data)", run="reflowma.stages.classifier:run",
          passes=("out", "log"), out="output folder"),
)
PARAMS = arg("--params", default="toy",
             help="preset name (params/presets/NAME.yaml) or YAML path [toy]")
RECORD_INPUTS = ("teacher", "couplings", "student", "classifier", "time_of")


def stage_args(stage: Stage) -> tuple[Arg, ...]:
    needed = " (required, except with --print-config)"
    return (
        PARAMS,
        *(arg(*a.flags, **{**a.kw, "help": a.kw["help"] + needed}) for a in stage.inputs),
        *(arg(*a.flags, default=None, **a.kw) for a in stage.optional),
        arg("--out", help=f"{stage.out}{needed}"),
        arg("--runs", default=os.environ.get("REFLOWMA_RUNS"), help="record the job as a "
            "Sacred run in this folder [$REFLOWMA_RUNS; none: not recorded]"),
        arg("--job", default=None, help="job name stored in the run record (the workflow "
            "passes the grid point) [stage:out]"),
        arg("--print-config", action="store_true",
            help="print the validated config as YAML and exit"),
        arg("overrides", nargs="*", metavar="key=value",
            help="dotted overrides, e.g. train.steps=100 data.name=moons"),
    )


def fields_epilog(stage: str, params: str) -> str:
    """Every field with the value the preset gives it (the stage default where it sets none)."""
    from reflowma.infra import config  # jsonschema: a stage's help, not `reflowma --help`

    try:
        rows = config.field_docs(stage, config.stage_config(stage, params))
        head = f"fields, with their values under --params {params}"
    except Exception as e:  # noqa: BLE001 - help must still print
        try:
            rows = config.field_docs(stage)
        except Exception as e2:  # noqa: BLE001
            return f"(fields unavailable: {e2})"
        head = f"(--params {params}: {e}; showing stage defaults)\nfields, with their defaults"
    w = max(len(r[0]) for r in rows)
    lines = [f"{head} in brackets (set them in the params file, or as key=value or "
             f"{stage}.key=value):"]
    for name, desc, value in rows:
        lines.append(f"  {name:<{w}}  {desc} [{value!r}]")
    return "\n".join(lines)


def run_stage(stage: Stage, flags: dict, parser_error: Callable) -> dict:
    """A pipeline stage: its config validated, then its function, recorded as a Sacred run
    with ``--runs`` (under torchrun by rank 0 alone)."""
    from reflowma.infra import config  # jsonschema: a stage's run, not `reflowma --help`

    overrides, equal_time = list(flags["overrides"]), None
    if flags.get("time_of"):  # reflow's equal-time control
        from reflowma.stages.reflow import equal_time_of  # torch: imported once a stage runs

        equal_time = equal_time_of(flags["time_of"])
        overrides += equal_time["overrides"]
    cfg = config.stage_config(stage.name, flags["params"], overrides)
    if flags["print_config"]:
        print(yaml.safe_dump(cfg, sort_keys=False))
        return {}
    missing = [f for f in (*(a.flags[0] for a in stage.inputs), "--out")
               if flags[f[2:].replace("-", "_")] is None]
    if missing:
        parser_error(f"the following arguments are required: {', '.join(missing)}")
    out = Path(flags["out"])
    run = function(stage.run)
    # torch, as the stage's own module (``run``): imported once a stage runs, not for --help
    from reflowma.core.seeding import device
    from reflowma.infra import distributed

    def call(c, log):
        values = {**flags, "out": out, "log": log, "plan_steps": equal_time is not None}
        return run(c, *(values[p] for p in stage.passes))

    distributed.init(device(cfg["device"]))  # under torchrun: join; rank 0 alone records
    try:
        if not flags["runs"] or not distributed.is_main():
            return call(cfg, None)
        from reflowma.infra.tracking import recorded  # Sacred: imported for a recorded run
        from reflowma.stages.common import data_sha256  # torch: imported once a stage runs

        inputs = {k: flags[k] for k in RECORD_INPUTS if flags.get(k)}
        return recorded(stage.name, cfg, call, flags["runs"],
                        flags["job"] or f"{stage.name}:{flags['out']}", stage.attach(out, cfg),
                        {"out": str(out), "inputs": inputs, "argv": sys.argv[1:],
                         "world_size": distributed.world_size(),
                         "data_sha256": data_sha256(cfg["data"]),
                         **({"equal_time": equal_time["info"]} if equal_time else {})})
    finally:
        distributed.finish()


STAGE_BY_NAME = {s.name: s for s in STAGES}
