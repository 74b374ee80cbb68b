"""Command line: ``reflowma <stage> --params PRESET --out PATH [key=value ...]``.

Stages: teacher, couplings, reflow, evaluate (plus ``report`` and ``theory``). Params are
validated before any work; errors print one line naming the field and exit with code 2 (so do
the other input checks: ``InputError``, unreadable checkpoints or couplings, missing input
files); any other exception is a bug and exits 1 with its traceback. An
interrupted job (SIGTERM/SIGINT) saves its state and exits with 128 + signal number; a
non-finite loss exits 3.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from reflowma import __version__
from reflowma.infra import config

EXIT_BAD_INPUT, EXIT_NONFINITE = 2, 3

STAGE_INPUTS = {
    "teacher": [],
    "couplings": [("--teacher", "teacher model file (teacher.pt)")],
    "reflow": [("--couplings", "couplings HDF5 file"), ("--teacher", "teacher model file")],
    "evaluate": [("--student", "student model file (student.pt)"),
                 ("--teacher", "teacher model file"), ("--couplings", "couplings HDF5 file")],
    "classifier": [],
}
# optional inputs: (flag, help)
STAGE_OPTIONAL = {"evaluate": [("--classifier", "classifier model file (classifier.pt); "
                                "required with fd_classifier: true")],
                  "reflow": [("--time-of", "a student's metrics.json: train for its training "
                              "seconds (train.time_budget_s), with train.steps planned from "
                              "this job's measured seconds per step (the equal-time control)")]}
STAGE_OUT = {"teacher": "output folder", "couplings": "output HDF5 file",
             "reflow": "output folder", "evaluate": "output JSON file",
             "classifier": "output folder"}
STAGE_HELP = {"teacher": "train the flow-matching teacher",
              "couplings": "generate teacher couplings (z, x) + window-end states (HDF5)",
              "reflow": "train a reflow student (vanilla or piecewise, optional regularizer)",
              "evaluate": "few-step NFE sweep and marginal metrics of a student",
              "classifier": "train the small CNN whose features fd_classifier uses (labelled "
                            "image data)"}


def _fields_epilog(stage: str, params: str) -> str:
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


def _params_in(argv) -> str:
    """The ``--params`` value on a command line (for the help text), ``toy`` without one."""
    argv = list(argv if argv is not None else sys.argv[1:])
    for i, a in enumerate(argv):
        if a == "--params" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--params="):
            return a.split("=", 1)[1]
    return "toy"


def build_parser(params: str = "toy") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reflowma", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=f"reflowma {__version__}")
    sub = p.add_subparsers(dest="stage", required=True)
    for stage in config.STAGES:
        sp = sub.add_parser(stage, help=STAGE_HELP[stage], description=STAGE_HELP[stage],
                            epilog=_fields_epilog(stage, params),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.add_argument("--params", default="toy",
                        help="preset name (params/presets/NAME.yaml) or YAML path [toy]")
        for flag, h in STAGE_INPUTS[stage]:
            sp.add_argument(flag, help=f"{h} (required, except with --print-config)")
        for flag, h in STAGE_OPTIONAL.get(stage, []):
            sp.add_argument(flag, default=None, help=h)
        sp.add_argument("--out", help=f"{STAGE_OUT[stage]} (required, except with --print-config)")
        sp.add_argument("--runs", default=os.environ.get("REFLOWMA_RUNS"),
                        help="record the job as a Sacred run in this folder "
                        "[$REFLOWMA_RUNS; none: not recorded]")
        sp.add_argument("--job", default=None,
                        help="job name stored in the run record (the workflow passes the "
                        "grid point) [stage:out]")
        sp.add_argument("--print-config", action="store_true",
                        help="print the validated config as YAML and exit")
        sp.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. train.steps=100 data.name=moons")
    rp = sub.add_parser("report", help="tables, figures and metrics.json from the run records",
                        description="Tables (Markdown, LaTeX, CSV), figures (PNG, PDF), a flat "
                        "metrics.json and missing.json from the Sacred run records.")
    rp.add_argument("--runs", default=None,
                    help="Sacred runs folder [results/<preset>/runs with --preset]")
    rp.add_argument("--out", default=None, help="report folder [results/<preset>/report]")
    rp.add_argument("--grid", default=None,
                    help="grid name or YAML: its evaluate jobs are expected (missing ones are "
                    "shown as rows) [the jobs seen in the records]")
    rp.add_argument("--preset", default=None,
                    help="preset name: sets the default --runs and --out")
    rp.add_argument("--no-figures", action="store_true", help="tables and metrics only")
    rp.add_argument("--counterexample", default=None, metavar="JSON",
                    help="Theorem 1's counterexample.json (reflowma theory counterexample) for "
                    "claims.md [computed in-process with the default Gaussian]")
    rp.add_argument("--compare", default=None, metavar="OTHER",
                    help="another runs folder, or a report folder next to its runs/: write "
                    "compare/ with side-by-side tables, differences and paired tests")
    rp.add_argument("--record", default=None, metavar="DIR",
                    help="record the report itself as a Sacred run in DIR (a folder apart from "
                    "--runs); a failing figure leaves it FAILED [not recorded]")
    rp.add_argument("--keep-going-figures", action="store_true",
                    help="a figure that fails is logged and replaced by a placeholder naming "
                    "the error [default: the report fails]")
    dp = sub.add_parser("describe", help="each stage's resolved config and network size "
                        "(JSON)", description="Print, as JSON, every stage's resolved config "
                        "and, for teacher and reflow, the data shape and the network's "
                        "parameter count (built on the meta device: no weights allocated). "
                        "The data file need not exist where the dataset declares its shape.")
    dp.add_argument("--params", default="toy",
                    help="preset name (params/presets/NAME.yaml) or YAML path [toy]")
    dp.add_argument("overrides", nargs="*", metavar="key=value",
                    help="dotted overrides; STAGE.key=value sets one stage only")
    th = sub.add_parser("theory", help="closed-form checks of the paper's theorems")
    tsub = th.add_subparsers(dest="theory", required=True)
    from reflowma.theory import counterexample as ce

    c = tsub.add_parser("counterexample", help="Theorem 1: equal TM loss, different marginals",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                        description="Four students of N(mu, Sigma) data with the same trajectory-"
                        "matching loss and different marginals (rotation, scaling, shrink, "
                        "translation); writes counterexample.json and a figure (PNG, PDF).")
    c.add_argument("--mu", nargs=2, type=float, default=list(ce.DEFAULT_MU), metavar=("M1", "M2"),
                   help="mean of the 2D Gaussian data")
    c.add_argument("--sigma", nargs=4, type=float, metavar=("S11", "S12", "S21", "S22"),
                   default=[v for row in ce.DEFAULT_SIGMA for v in row],
                   help="covariance of the data, row by row (symmetric positive definite)")
    c.add_argument("--angle", type=float, default=ce.DEFAULT_ANGLE_DEG,
                   help="rotation angle of the rotation student, in degrees")
    c.add_argument("--nfe", nargs="+", type=int, default=list(ce.DEFAULT_NFES),
                   help="step counts at which each student's marginal is compared")
    c.add_argument("--out", default=ce.DEFAULT_OUT, help="output folder")
    return p


def _run_stage(args) -> dict:
    from reflowma.stages import classifier, couplings, evaluate, reflow, teacher

    overrides = list(args.overrides)
    equal_time = {}
    if args.stage == "reflow" and args.time_of:
        equal_time = _equal_time(args.time_of)
        overrides += equal_time["overrides"]
    cfg = config.stage_config(args.stage, args.params, overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg, sort_keys=False))
        return {}
    missing = [f for f, _ in [*STAGE_INPUTS[args.stage], ("--out", "")]
               if getattr(args, f[2:]) is None]
    if missing:
        args.parser_error(f"the following arguments are required: {', '.join(missing)}")
    out = Path(args.out)
    if args.stage == "teacher":
        fn, attach = (lambda c, log: teacher.run(c, out, log)), [out / "metrics.json"]
    elif args.stage == "couplings":
        fn, attach = (lambda c, log: couplings.run(c, args.teacher, out)), []
    elif args.stage == "classifier":
        fn, attach = (lambda c, log: classifier.run(c, out, log)), [out / "metrics.json"]
    elif args.stage == "reflow":
        fn = lambda c, log: reflow.run(c, args.couplings, args.teacher, out, log,  # noqa: E731
                                       plan_steps=bool(equal_time))
        attach = [out / "metrics.json"]
    else:
        fn = lambda c, log: evaluate.run(c, args.student, args.teacher,  # noqa: E731
                                         args.couplings, out, args.classifier)
        # the report reads eval.json and samples.npz from the record; image data: PNG grids
        attach = [out, evaluate.samples_path(out), *evaluate.image_paths(out, cfg["nfe"])]
    from reflowma.core.seeding import device
    from reflowma.infra import distributed

    distributed.init(device(cfg["device"]))  # under torchrun: join; rank 0 alone records
    if not args.runs or not distributed.is_main():
        return fn(cfg, None)
    from reflowma.infra.tracking import recorded
    from reflowma.stages.common import data_sha256

    inputs = {k: getattr(args, k) for k in ("teacher", "couplings", "student", "classifier",
                                            "time_of")
              if getattr(args, k, None)}
    return recorded(args.stage, cfg, fn, args.runs, args.job or f"{args.stage}:{args.out}",
                    attach, {"out": str(out), "inputs": inputs, "argv": sys.argv[1:],
                             "world_size": distributed.world_size(),
                             "data_sha256": data_sha256(cfg["data"]),
                             **({"equal_time": equal_time["info"]} if equal_time else {})})


def _equal_time(time_of: str) -> dict:
    """An equal-time control's override, ``train.time_budget_s`` = the training seconds of the
    student whose metrics.json ``time_of`` is, and what the run record keeps of it."""
    from reflowma.stages.reflow import train_seconds

    try:
        budget = train_seconds(json.loads(Path(time_of).read_text()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise config.InputError(f"--time-of: {time_of!r} is not a readable student "
                                f"metrics.json with its training seconds ({e!r})") from None
    if not budget > 0:
        raise config.InputError(f"--time-of: training seconds {budget!r} in {time_of!r} "
                                "are not > 0")
    return {"overrides": [(["train", "time_budget_s"], budget)],
            "info": {"time_of": time_of, "time_budget_s": budget}}


def _describe_config(stage: str, params, overrides, refused: dict) -> dict:
    """A stage's config under ``describe``'s overrides: ``STAGE.key=value`` ones of this stage,
    and each unqualified one that this stage's own command accepts (``net.channels=32`` sets
    the teacher's and the students' UNet; the couplings have no net and the classifier's
    ``channels`` is a list). An unqualified override this stage refuses is kept in
    ``refused`` with the error; ``describe`` fails on one that every stage refuses."""
    mine = [o for o in overrides if o.split("=", 1)[0].split(".")[0] == stage]
    for o in overrides:
        if o.split("=", 1)[0].split(".")[0] in config.STAGES:
            continue
        try:
            config.stage_config(stage, params, [*mine, o], check_files=False)
        except config.ConfigError as e:
            if not config.set_by_override(e.field, [o]):
                raise
            refused.setdefault(o, []).append(e)
            continue
        mine.append(o)
        refused.setdefault(o, []).append(None)
    return config.stage_config(stage, params, mine, check_files=False)


def describe(params, overrides=()) -> dict:
    """``{stage: {"config": ..., ["data_shape": ..., "n_params": ...]}}`` of a preset."""
    import torch

    from reflowma import data, models

    out, taken = {}, {}
    for stage in config.STAGES:
        if stage == "classifier" and not out["evaluate"]["config"].get("fd_classifier"):
            continue  # a job only where evaluate uses it
        out[stage] = {"config": _describe_config(stage, params, overrides, taken)}
    for errors in taken.values():
        if None not in errors:  # refused by every stage: the first stage's reason
            raise errors[0]
    for stage, d in out.items():
        cfg = d["config"]
        if "net" in cfg and stage != "classifier":
            shape = data.declared_shape(cfg["data"])
            with torch.device("meta"):
                net = models.build(shape, cfg["net"])
            d |= {"data_shape": list(shape), "n_params": models.n_params(net)}
    return out


def _read_counterexample(path) -> dict:
    """``report --counterexample``: Theorem 1's JSON; an ``InputError`` naming the flag and the
    file where it is unreadable or not that JSON."""
    from reflowma.report.claims import check_counterexample

    where = f"report --counterexample {str(path)!r}"
    try:
        cex = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise config.InputError(f"{where}: the file does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise config.InputError(f"{where}: not readable JSON ({e})") from None
    return check_counterexample(cex, where)


def _report(args) -> int:
    from reflowma.infra import grid as rgrid
    from reflowma.report import build_report, expected_from_grid

    base = Path("results") / Path(args.preset).stem if args.preset else None
    runs = args.runs or (base / "runs" if base else None)
    out = args.out or (base / "report" if base else None)
    if runs is None or out is None:
        raise config.ConfigError("report", "give --runs and --out, or --preset")
    if not Path(runs).is_dir():
        hint = (f"run the workflow first: snakemake --cores 2 --config preset={args.preset}"
                + (f" grid={args.grid}" if args.grid else "")) if args.preset else \
            "run the workflow first (snakemake --cores 2), or give the runs folder it wrote"
        raise FileNotFoundError(f"runs folder {str(runs)!r} does not exist: no job has run "
                                f"for it yet; {hint}")
    expected = None
    if args.grid:
        if args.preset:
            rgrid.load_preset(args.preset)  # validated: a typo fails here, not silently
        expected = expected_from_grid(args.grid)
    from reflowma.report.figures import FigureError
    from reflowma.theory import counterexample as ce

    if args.counterexample:
        cex = _read_counterexample(args.counterexample)
        cex_source = f"read from {args.counterexample}"
    else:
        cex = ce.counterexample(ce.DEFAULT_MU, ce.DEFAULT_SIGMA, ce.DEFAULT_ANGLE_DEG,
                                ce.DEFAULT_NFES)
        cex_source = ("computed in-process with reflowma theory counterexample's defaults: "
                      f"mu {list(ce.DEFAULT_MU)}, angle {ce.DEFAULT_ANGLE_DEG}°")

    def make(cfg, on_log=None):
        res = build_report(runs, out, expected, figures=cfg["figures"],
                           keep_going_figures=cfg["keep_going_figures"],
                           counterexample=cex, counterexample_source=cex_source)
        if args.compare:
            from reflowma.report.compare import compare_reports

            res["compare"] = compare_reports(runs, args.compare, Path(out) / "compare",
                                             expected)
        return {k: v if isinstance(v, int) else len(v) for k, v in res.items()
                if k != "claims"} | {"_res": res, "claims": res["claims"]}

    cfg = {"seed": 0, "runs": str(runs), "out": str(out), "grid": args.grid,
           "figures": not args.no_figures, "keep_going_figures": args.keep_going_figures}
    try:
        if args.record:
            from reflowma.infra.tracking import recorded

            counts = recorded("report", cfg, lambda c, log: {
                k: v for k, v in make(c).items() if k != "_res"}, args.record, "report")
        else:
            counts = make(cfg)
    except FigureError as e:
        logging.getLogger("reflowma.report").exception("report failed")
        print(f"reflowma: error: {e} (--keep-going-figures writes the others and a "
              "placeholder)", file=sys.stderr)
        return 1
    print(f"report: {counts['n_tables']} tables ({counts['tables']} files under tables/), "
          f"{counts['figures']} figure files, {counts['metrics']} metrics in metrics.json, "
          f"{counts['missing']} missing jobs -> {out}")
    print("claims (claims.md): " + ", ".join(f"{k} {v}" for k, v in counts["claims"].items()))
    return 0


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


def main(argv=None) -> int:
    args = parse(argv)
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("[reflowma] %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    from reflowma.infra.signals import Interrupted
    from reflowma.infra.storage.checkpoint import CheckpointError
    from reflowma.infra.storage.couplings import CouplingsError
    from reflowma.training.loop import NonFiniteLoss

    try:
        if args.stage == "report":
            return _report(args)
        if args.stage == "describe":

            print(json.dumps(describe(args.params, args.overrides), indent=2))
            return 0
        if args.stage == "theory":
            from reflowma.theory import counterexample as ce

            sigma = [args.sigma[:2], args.sigma[2:]]
            res = ce.write_counterexample(args.out, args.mu, sigma, args.angle, args.nfe)
            for name, s in res["students"].items():
                print(f"{name:12s} TM={s['tm_loss']:.6g}  W2={s['w2']}")
            print(f"wrote {Path(args.out) / 'counterexample.json'} and "
                  f"counterexample.{{png,pdf}} in {args.out}")
            return 0
        try:
            _run_stage(args)
        finally:
            from reflowma.infra import distributed

            distributed.finish()
    except (config.InputError, CheckpointError, CouplingsError, FileNotFoundError) as e:
        # validated input only (ConfigError and registry.UnknownName are InputErrors); any
        # other exception is a bug and keeps its traceback
        print(f"reflowma: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Interrupted as e:
        print(f"reflowma: {e}", file=sys.stderr)
        return 128 + e.signum
    except NonFiniteLoss as e:
        print(f"reflowma: error: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    return 0


if __name__ == "__main__":
    sys.exit(main())
