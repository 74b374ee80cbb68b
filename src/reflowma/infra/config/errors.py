"""The params error: one line naming the field, the value and what is allowed."""

from __future__ import annotations

import sys
from contextlib import contextmanager

from reflowma.registry import InputError


class ConfigError(InputError):
    """A params problem; ``str(err)`` is one line naming the field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


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
