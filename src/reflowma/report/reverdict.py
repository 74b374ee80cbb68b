"""Kept claims under the current rule, without the run records:
``python -m reflowma.report.reverdict FOLDER`` reads ``FOLDER/claims.json`` (a report's, e.g.
``docs/results/mnist``), recomputes every regularizer verdict with the power of its tests
(``claims.reverdict``: the SD of the paired differences follows from the mean difference, p
and the number of seeds it kept) and writes ``claims.json`` and ``claims.md`` there. It
prints each claim's and point's verdict before -> after."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from reflowma.infra.storage.atomic import write_json
from reflowma.report import claims, claims_markdown, layout
from reflowma.report.build import jsonable, write_text


def reverdict_folder(folder: Path) -> list[str]:
    """Rewrite the claims of a report folder; returns the lines ``what: before -> after``."""
    old = json.loads((folder / "claims.json").read_text())
    new = claims.reverdict(old)
    lines = []
    for key in old["regularizer"]:
        a, b = old["regularizer"][key], new["regularizer"][key]
        lines.append(f"regularizer {key}: {a['verdict']} -> {b['verdict']}")
        for pa, pb in zip(a["points"], b["points"], strict=True):
            lines.append(f"  {pa['dataset']} {pa['method']}: {pa['verdict']} -> {pb['verdict']}")
    datasets = dict.fromkeys(r["dataset"] for r in new["theorem1"].get("grid", []))
    figures = {ds: f"tm_marginal_{layout.file_stem(ds)}" for ds in datasets
               if (folder / "figures" / f"tm_marginal_{layout.file_stem(ds)}.png").is_file()}
    md = claims_markdown.markdown_text(new, figures)
    write_json(folder / "claims.json", jsonable(new))
    write_text(folder / "claims.md", md)
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reflowma.report.reverdict",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path, help="report folders with a claims.json")
    for folder in ap.parse_args(argv).folders:
        print(f"{folder}:")
        print("\n".join(reverdict_folder(folder)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
