"""The other commands (``report``, ``describe``, ``theory counterexample``): ``COMMANDS`` holds one
entry per command, naming the function it calls with its parsed arguments as keywords."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from reflowma.cli.stages import PARAMS, Arg, arg


@dataclass(frozen=True)
class Command:
    """``reflowma NAME [args]`` calls ``call`` (``module:function``) with the parsed arguments
    as keywords and exits with what it returns; or, with ``subcommands``, picks one of them."""

    name: str
    help: str
    call: str = ""
    args: tuple[Arg, ...] | Callable[[], tuple[Arg, ...]] = ()  # a function: called on use
    description: str | None = None
    subcommands: tuple[Command, ...] = ()
    defaults_in_help: bool = False


def report(counterexample=None, **flags) -> int:
    """``reflowma report``: Theorem 1's counterexample (the theory layer's) handed to the report
    command (the report layer's); the two layers are siblings and meet here."""
    from reflowma.report import command  # matplotlib: imported on use, not for --help
    from reflowma.theory.counterexample import for_report  # numpy: imported on use

    return command.main(**flags, counterexample=lambda: for_report(counterexample))


def counterexample_args() -> tuple[Arg, ...]:
    """``theory counterexample``'s arguments, whose defaults are the theory module's (which
    imports numpy: called when the command is used)."""
    from reflowma.theory import counterexample  # numpy: imported on use, not for --help

    return (
        arg("--mu", nargs=2, type=float, default=list(counterexample.DEFAULT_MU),
            metavar=("M1", "M2"), help="mean of the 2D Gaussian data"),
        arg("--sigma", nargs=4, type=float, metavar=("S11", "S12", "S21", "S22"),
            default=[v for row in counterexample.DEFAULT_SIGMA for v in row],
            help="covariance of the data, row by row (symmetric positive definite)"),
        arg("--angle", type=float, default=counterexample.DEFAULT_ANGLE_DEG,
            help="rotation angle of the rotation student, in degrees"),
        arg("--nfe", nargs="+", type=int, default=list(counterexample.DEFAULT_NFES),
            help="step counts at which each student's marginal is compared"),
        arg("--out", default=counterexample.DEFAULT_OUT, help="output folder"),
    )


COMMANDS = (
    Command(name="report", help="tables, figures and metrics.json from the run records",
            call="reflowma.cli.commands:report", description="Tables (Markdown, LaTeX, CSV), "
            "figures (PNG, PDF), a flat metrics.json and missing.json from the Sacred run "
            "records.", args=(
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
    Command(name="describe", help="each stage's resolved config and network size (JSON)",
            call="reflowma.infra.describe:main", description="Print, as JSON, every stage's "
            "resolved config and, for teacher and reflow, the data shape and the network's "
            "parameter count (built on the meta device: no weights allocated). The data file "
            "need not exist where the dataset declares its shape.", args=(
                PARAMS, arg("overrides", nargs="*", metavar="key=value",
                            help="dotted overrides; STAGE.key=value sets one stage only"))),
    Command(name="theory", help="closed-form checks of the paper's theorems", subcommands=(
        Command(name="counterexample", help="Theorem 1: equal TM loss, different marginals",
                call="reflowma.theory.counterexample:main", args=counterexample_args,
                defaults_in_help=True,
                description="Four students of N(mu, Sigma) data with the same trajectory-"
                "matching loss and different marginals (rotation, scaling, shrink, "
                "translation); writes counterexample.json and a figure (PNG, PDF)."),)),
)
