"""Markdown a reviewer reads in a terminal: GitHub tables no wider than ``WIDTH`` columns (a
wider table is split by columns into parts that each repeat its key columns, the row labels,
in column order, as many columns per part as fit), and paragraphs and bullets wrapped at
``WIDTH`` (a word longer than that, e.g. a path, stays whole)."""

from __future__ import annotations

import textwrap

from tabulate import tabulate

WIDTH = 100


def _is_number(cell: str) -> bool:
    try:
        float(cell.strip("*"))  # a bold number is a number
    except ValueError:
        return False
    return True


def render(headers, rows) -> str:
    """One GitHub table; cells exactly as given, columns of plain numbers right-aligned."""
    rows = [[str(c) for c in r] for r in rows]
    align = ["right" if rows and all(_is_number(r[i]) or r[i] in ("", "–") for r in rows)
             and any(_is_number(r[i]) for r in rows) else "left" for i in range(len(headers))]
    return tabulate(rows, headers=list(headers), tablefmt="github", disable_numparse=True,
                    colalign=align)


def width(text: str) -> int:
    """The widest line of ``text``."""
    return max((len(line) for line in text.splitlines()), default=0)


def split(headers, rows, keys: int = 1, limit: int = WIDTH) -> list[str]:
    """``rows`` under ``headers`` as one or more GitHub tables no wider than ``limit`` (a part
    holds the first ``keys`` columns and at least one other, so a single column too wide for
    the limit still gets a part of its own). Cells are rendered as given (strings stay
    strings: no re-formatting of numbers)."""
    headers = list(headers)
    rows = [[str(c) for c in r] for r in rows]
    key_h, rest = headers[:keys], list(range(keys, len(headers)))

    def part(cols):
        return render(key_h + [headers[c] for c in cols], [r[:keys] + [r[c] for c in cols]
                                                           for r in rows])

    if not rest:
        return [render(headers, rows)]
    parts, cols = [], []
    for c in rest:
        if cols and width(part([*cols, c])) > limit:
            parts.append(part(cols))
            cols = []
        cols.append(c)
    parts.append(part(cols))
    return parts


def table(headers, rows, keys: int = 1, limit: int = WIDTH, title: str = "") -> str:
    """``split``'s parts as one Markdown block; with a ``title``, a heading over each part
    (``title (part i of n)`` where there are several)."""
    parts = split(headers, rows, keys, limit)
    out = []
    for i, p in enumerate(parts, 1):
        if title:
            out.append(f"{title}" + (f" (part {i} of {len(parts)})" if len(parts) > 1 else "")
                       + "\n")
        out.append(p + "\n")
    return "\n".join(out)


def _fill(text: str, limit: int, first: str = "", rest: str = "") -> str:
    return textwrap.fill(text, limit, initial_indent=first, subsequent_indent=rest,
                         break_long_words=False, break_on_hyphens=False)


def wrap_prose(text: str, limit: int = WIDTH) -> str:
    """Markdown whose every paragraph and bullet is one line, with the lines longer than
    ``limit`` wrapped (bullets with indented continuation lines); table rows, headings and
    indented lines are left as they are."""
    out = []
    for line in text.split("\n"):
        if len(line) <= limit or line.startswith(("|", "#", " ")):
            out.append(line)
        elif line.startswith("- "):
            out.append(_fill(line[2:], limit, "- ", "  "))
        else:
            out.append(_fill(line, limit))
    return "\n".join(out)


def bullets(items, limit: int = WIDTH) -> str:
    """A bullet list, each item wrapped at ``limit`` columns (continuation lines indented)."""
    return "".join(_fill(item, limit, "- ", "  ") + "\n" for item in items)
