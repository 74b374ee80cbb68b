"""Command line: ``reflowma <stage> --params PRESET --out PATH [key=value ...]``.

Stages: teacher, couplings, reflow, evaluate, classifier (plus ``report``, ``describe`` and
``theory``). Params are validated before any work; errors print one line naming the field and
exit with code 2 (so do the other input checks: ``InputError``, unreadable checkpoints or
couplings, missing input files); any other exception is a bug and exits 1 with its traceback.
An interrupted job (SIGTERM/SIGINT) saves its state and exits with 128 + signal number; a
non-finite loss exits 3.

The commands are two tables: ``stages.STAGES`` (the pipeline stages: the function each runs on
its validated config, its input files) and ``commands.COMMANDS`` (the others: the function each
calls with its arguments). A command's arguments are added to the parser when that command is
parsed or its help printed, and a stage's fields list (every field with its value under
``--params``, which validates the config) only for its ``--help``. The functions' modules are
imported when they run (``module:function`` names): the stages import torch, the report
matplotlib, the theory numpy, none of which ``reflowma --help`` or a bad flag needs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from reflowma import __version__
from reflowma.cli.commands import COMMANDS, Command
from reflowma.cli.stages import (
    STAGE_BY_NAME,
    STAGES,
    Arg,
    fields_epilog,
    function,
    run_stage,
    stage_args,
)
from reflowma.infra.signals import Interrupted
from reflowma.registry import InputError

EXIT_BAD_INPUT, EXIT_NONFINITE = 2, 3


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


def add_command(sub, cmd: Command) -> None:
    """``cmd``'s parser under ``sub``: its arguments and subcommands added when it is used."""

    def build(p):
        if cmd.subcommands:
            inner = p.add_subparsers(dest=cmd.name, required=True, parser_class=Parser)
            for c in cmd.subcommands:
                add_command(inner, c)
        add_args(p, cmd.args() if callable(cmd.args) else cmd.args)
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
    """Writes to whatever ``sys.stderr`` is at each record, so Sacred's output capture sees the
    log."""

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
            run_stage(STAGE_BY_NAME[args.stage], vars(args), args.parser_error)
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
