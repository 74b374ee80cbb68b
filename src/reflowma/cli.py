"""Command line: ``reflowma <stage> --params PRESET --out PATH [key=value ...]``.

Stages: teacher, couplings, reflow, evaluate (plus ``report`` and ``theory``). Params are
validated before any work; errors print one line naming the field and exit with code 2 (so do
the other input checks: ``InputError``, unreadable checkpoints or couplings, missing input
files); any other exception is a bug and exits 1 with its traceback. An
interrupted job (SIGTERM/SIGINT) saves its state and exits with 128 + signal number; a
non-finite loss exits 3.

The commands are two tables: ``STAGES`` (the pipeline stages: the function each runs on its
validated config, its input files) and ``COMMANDS`` (the others: the function each calls with
its arguments). A command's arguments are added to the parser when that command is parsed or
its help printed, and a stage's fields list (every field with its value under ``--params``,
which validates the config) only for its ``--help``. The functions' modules are imported when
they run (``module:function`` names): the stages import torch, the report matplotlib, the
theory numpy, none of which ``reflowma --help`` or a bad flag needs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from reflowma import __version__
from reflowma.infra import config
from reflowma.infra.signals import Interrupted
from reflowma.registry import InputError

EXIT_BAD_INPUT, EXIT_NONFINITE = 2, 3


@dataclass(frozen=True)
class Arg:
    """One argument of a command: its flags (or name) and ``add_argument``'s keywords."""

    flags: tuple[str, ...]
    kw: dict = field(default_factory=dict)


def arg(*flags: str, **kw) -> Arg:
    return Arg(flags, kw)


def function(name: str) -> Callable:
    """The function ``module:function`` (its module imported now)."""
    module, fn = name.split(":")
    return getattr(importlib.import_module(module), fn)


# --------------------------------------------------------------------------- pipeline stages


def metrics_json(out: Path, cfg: dict) -> list:
    return [out / "metrics.json"]


def evaluation_files(out: Path, cfg: dict) -> list:
    """The report reads eval.json and samples.npz from the record; image data: PNG grids."""
    from reflowma.stages import evaluate

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


TEACHER = arg("--teacher", help="teacher model file (teacher.pt)")
COUPLINGS = arg("--couplings", help="couplings HDF5 file")
STAGES = (
    Stage("teacher", "train the flow-matching teacher", "reflowma.stages.teacher:run",
          ("out", "log"), "output folder"),
    Stage("couplings", "generate teacher couplings (z, x) + window-end states (HDF5)",
          "reflowma.stages.couplings:run", ("teacher", "out"), "output HDF5 file",
          inputs=(TEACHER,), attach=lambda out, cfg: []),
    Stage("reflow", "train a reflow student (vanilla or piecewise, optional regularizer)",
          "reflowma.stages.reflow:run", ("couplings", "teacher", "out", "log", "plan_steps"),
          "output folder", inputs=(COUPLINGS, arg("--teacher", help="teacher model file")),
          optional=(arg("--time-of", help="a student's metrics.json: train for its training "
                        "seconds (train.time_budget_s), with train.steps planned from this "
                        "job's measured seconds per step (the equal-time control)"),)),
    Stage("evaluate", "few-step NFE sweep and marginal metrics of a student",
          "reflowma.stages.evaluate:run",
          ("student", "teacher", "couplings", "out", "classifier"), "output JSON file",
          inputs=(arg("--student", help="student model file (student.pt)"),
                  arg("--teacher", help="teacher model file"), COUPLINGS),
          optional=(arg("--classifier", help="classifier model file (classifier.pt); "
                        "required with fd_classifier: true"),),
          attach=evaluation_files),
    Stage("classifier", "train the small CNN whose features fd_classifier uses (labelled "
          "image data)", "reflowma.stages.classifier:run", ("out", "log"), "output folder"),
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
    overrides, equal_time = list(flags["overrides"]), None
    if flags.get("time_of"):
        equal_time = function("reflowma.stages.reflow:equal_time_of")(flags["time_of"])
        overrides += equal_time["overrides"]
    cfg = config.stage_config(stage.name, flags["params"], overrides)
    if flags["print_config"]:
        import yaml

        print(yaml.safe_dump(cfg, sort_keys=False))
        return {}
    missing = [f for f in (*(a.flags[0] for a in stage.inputs), "--out")
               if flags[f[2:].replace("-", "_")] is None]
    if missing:
        parser_error(f"the following arguments are required: {', '.join(missing)}")
    out = Path(flags["out"])
    run = function(stage.run)
    from reflowma.core.seeding import device
    from reflowma.infra import distributed

    def call(c, log):
        values = {**flags, "out": out, "log": log, "plan_steps": equal_time is not None}
        return run(c, *(values[p] for p in stage.passes))

    distributed.init(device(cfg["device"]))  # under torchrun: join; rank 0 alone records
    if not flags["runs"] or not distributed.is_main():
        return call(cfg, None)
    from reflowma.infra.tracking import recorded
    from reflowma.stages.common import data_sha256

    inputs = {k: flags[k] for k in RECORD_INPUTS if flags.get(k)}
    return recorded(stage.name, cfg, call, flags["runs"],
                    flags["job"] or f"{stage.name}:{flags['out']}", stage.attach(out, cfg),
                    {"out": str(out), "inputs": inputs, "argv": sys.argv[1:],
                     "world_size": distributed.world_size(),
                     "data_sha256": data_sha256(cfg["data"]),
                     **({"equal_time": equal_time["info"]} if equal_time else {})})


STAGE_BY_NAME = {s.name: s for s in STAGES}


# --------------------------------------------------------------------------- other commands


@dataclass(frozen=True)
class Command:
    """``reflowma NAME [args]`` calls ``call`` (``module:function``) with the parsed arguments
    as keywords and exits with what it returns; or, with ``subcommands``, picks one of them."""

    name: str
    help: str
    call: str = ""
    args: tuple[Arg, ...] = ()
    description: str | None = None
    subcommands: tuple[Command, ...] = ()
    defaults_in_help: bool = False


def report(counterexample=None, **flags) -> int:
    """``reflowma report``: Theorem 1's counterexample (the theory layer's) handed to the report
    command (the report layer's); the two layers are siblings and meet here."""
    from reflowma.report import command
    from reflowma.theory.counterexample import for_report

    cex, source = for_report(counterexample)
    return command.main(**flags, counterexample=cex, counterexample_source=source)


def counterexample_args() -> tuple[Arg, ...]:
    from reflowma.theory import counterexample as ce

    return (
        arg("--mu", nargs=2, type=float, default=list(ce.DEFAULT_MU), metavar=("M1", "M2"),
            help="mean of the 2D Gaussian data"),
        arg("--sigma", nargs=4, type=float, metavar=("S11", "S12", "S21", "S22"),
            default=[v for row in ce.DEFAULT_SIGMA for v in row],
            help="covariance of the data, row by row (symmetric positive definite)"),
        arg("--angle", type=float, default=ce.DEFAULT_ANGLE_DEG,
            help="rotation angle of the rotation student, in degrees"),
        arg("--nfe", nargs="+", type=int, default=list(ce.DEFAULT_NFES),
            help="step counts at which each student's marginal is compared"),
        arg("--out", default=ce.DEFAULT_OUT, help="output folder"),
    )


COMMANDS = (
    Command("report", "tables, figures and metrics.json from the run records",
            "reflowma.cli:report", description="Tables (Markdown, LaTeX, CSV), figures (PNG, "
            "PDF), a flat metrics.json and missing.json from the Sacred run records.", args=(
                arg("--runs", default=None,
                    help="Sacred runs folder [results/<preset>/runs with --preset]"),
                arg("--out", default=None, help="report folder [results/<preset>/report]"),
                arg("--grid", default=None,
                    help="grid name or YAML: its evaluate jobs are expected (missing ones are "
                    "shown as rows) [the jobs seen in the records]"),
                arg("--preset", default=None,
                    help="preset name: sets the default --runs and --out"),
                arg("--no-figures", action="store_true", help="tables and metrics only"),
                arg("--counterexample", default=None, metavar="JSON",
                    help="Theorem 1's counterexample.json (reflowma theory counterexample) for "
                    "claims.md [computed in-process with the default Gaussian]"),
                arg("--compare", default=None, metavar="OTHER",
                    help="another runs folder, or a report folder next to its runs/: write "
                    "compare/ with side-by-side tables, differences and paired tests"),
                arg("--record", default=None, metavar="DIR",
                    help="record the report itself as a Sacred run in DIR (a folder apart "
                    "from --runs); a failing figure leaves it FAILED [not recorded]"),
                arg("--keep-going-figures", action="store_true",
                    help="a figure that fails is logged and replaced by a placeholder naming "
                    "the error [default: the report fails]"))),
    Command("describe", "each stage's resolved config and network size (JSON)",
            "reflowma.infra.describe:main", description="Print, as JSON, every stage's "
            "resolved config and, for teacher and reflow, the data shape and the network's "
            "parameter count (built on the meta device: no weights allocated). The data file "
            "need not exist where the dataset declares its shape.", args=(
                PARAMS, arg("overrides", nargs="*", metavar="key=value",
                            help="dotted overrides; STAGE.key=value sets one stage only"))),
    Command("theory", "closed-form checks of the paper's theorems", subcommands=(
        Command("counterexample", "Theorem 1: equal TM loss, different marginals",
                "reflowma.theory.counterexample:main", defaults_in_help=True,
                description="Four students of N(mu, Sigma) data with the same trajectory-"
                "matching loss and different marginals (rotation, scaling, shrink, "
                "translation); writes counterexample.json and a figure (PNG, PDF)."),)),
)
LATE_ARGS = {("theory", "counterexample"): counterexample_args}  # their defaults import numpy


# --------------------------------------------------------------------------- the parser


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose arguments (``build(parser)``) are added when it parses or
    prints its usage or help, and whose epilog (``epilog_of()``) is computed for its help."""

    def __init__(self, *a, build: Callable | None = None, epilog_of: Callable | None = None,
                 **kw):
        super().__init__(*a, **kw)
        self._build, self._epilog_of = build, epilog_of

    def _built(self) -> None:
        if self._build is not None:
            build, self._build = self._build, None
            build(self)

    def parse_known_args(self, args=None, namespace=None):
        self._built()
        return super().parse_known_args(args, namespace)

    def format_usage(self):
        self._built()
        return super().format_usage()

    def format_help(self):
        self._built()
        if self._epilog_of is not None:
            self.epilog = self._epilog_of()
        return super().format_help()


def add_args(parser: argparse.ArgumentParser, args: tuple[Arg, ...]) -> None:
    for a in args:
        parser.add_argument(*a.flags, **a.kw)


def add_command(sub, cmd: Command, path: tuple[str, ...] = ()) -> None:
    """``cmd``'s parser under ``sub``: its arguments and subcommands added when it is used."""
    path = (*path, cmd.name)

    def build(p):
        if cmd.subcommands:
            inner = p.add_subparsers(dest=cmd.name, required=True, parser_class=Parser)
            for c in cmd.subcommands:
                add_command(inner, c, path)
        add_args(p, LATE_ARGS[path]() if path in LATE_ARGS else cmd.args)
        p.set_defaults(call=cmd.call)

    sub.add_parser(cmd.name, help=cmd.help, description=cmd.description, build=build,
                   formatter_class=argparse.ArgumentDefaultsHelpFormatter
                   if cmd.defaults_in_help else argparse.HelpFormatter)


def build_parser(params: str = "toy") -> argparse.ArgumentParser:
    """The parser; ``params`` names the preset whose values a stage's ``--help`` shows."""
    p = argparse.ArgumentParser(prog="reflowma", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=f"reflowma {__version__}")
    sub = p.add_subparsers(dest="stage", required=True, parser_class=Parser)
    for stage in STAGES:
        sub.add_parser(stage.name, help=stage.help, description=stage.help,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       build=lambda sp, s=stage: add_args(sp, stage_args(s)),
                       epilog_of=lambda s=stage.name: fields_epilog(s, params))
    for cmd in COMMANDS:
        add_command(sub, cmd)
    return p


def _params_in(argv) -> str:
    """The ``--params`` value on a command line (for the help text), ``toy`` without one."""
    argv = list(argv if argv is not None else sys.argv[1:])
    for i, a in enumerate(argv):
        if a == "--params" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--params="):
            return a.split("=", 1)[1]
    return "toy"


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now, so Sacred's output capture sees the log."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def parse(argv=None) -> argparse.Namespace:
    """Parse the command line; ``key=value`` overrides may stand anywhere after the stage."""
    parser = build_parser(_params_in(argv))
    args, rest = parser.parse_known_args(argv)
    args.parser_error = parser.error
    extra = [a for a in rest if "=" in a and not a.startswith("-")]
    unknown = [a for a in rest if a not in extra]
    if unknown or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


# Exceptions that mean bad input (exit 2) or a non-finite loss (exit 3), by module: a command
# has imported the module of any exception it raises, so the check imports none of them
# (checkpoint and couplings storage import torch and h5py).
BAD_INPUT = (("reflowma.infra.storage.checkpoint", "CheckpointError"),
             ("reflowma.infra.storage.couplings", "CouplingsError"))
NONFINITE = ("reflowma.training.loop", "NonFiniteLoss")


def _raised(e: BaseException, module: str, name: str) -> bool:
    """Whether ``e`` is a ``module.name`` (False where that module was never imported)."""
    m = sys.modules.get(module)
    return m is not None and isinstance(e, getattr(m, name))


def main(argv=None) -> int:
    args = parse(argv)
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("[reflowma] %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        if args.stage in STAGE_BY_NAME:
            from reflowma.infra import distributed

            try:
                run_stage(STAGE_BY_NAME[args.stage], vars(args), args.parser_error)
            finally:
                distributed.finish()
            return 0
        not_args = {"stage", "call", "parser_error", *(c.name for c in COMMANDS)}
        return function(args.call)(**{k: v for k, v in vars(args).items()
                                      if k not in not_args})
    except Interrupted as e:
        print(f"reflowma: {e}", file=sys.stderr)
        return 128 + e.signum
    except Exception as e:
        # validated input only (ConfigError and registry.UnknownName are InputErrors); any
        # other exception is a bug and keeps its traceback
        if isinstance(e, (InputError, FileNotFoundError)) or any(_raised(e, *b)
                                                                 for b in BAD_INPUT):
            print(f"reflowma: error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if _raised(e, *NONFINITE):
            print(f"reflowma: error: {e}", file=sys.stderr)
            return EXIT_NONFINITE
        raise


if __name__ == "__main__":
    sys.exit(main())
