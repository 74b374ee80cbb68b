"""``snakemake --lint`` for this workflow, as ``make lint`` runs it: any lint fails it except
"Specify a conda environment or container for each rule.", which Snakemake gives every shell
rule without a ``conda:`` directive. The rules declare none on purpose: each runs the reflowma
command of the interpreter that runs Snakemake, in the one environment Snakemake runs in
(docs/workflow.md, "One environment").

    python workflow/scripts/lint.py [SNAKEFILE]
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ACCEPTED = ("Specify a conda environment or container for each rule.",)


def lint_titles(text: str) -> list[str]:
    """The title of each lint in ``snakemake --lint``'s text output (``    * TITLE:``)."""
    return re.findall(r"^    \* (.+):$", text, re.M)


def main(argv: list[str]) -> int:
    snakefile = argv[1] if len(argv) > 1 else "Snakefile"
    snakemake = Path(sys.executable).with_name("snakemake")
    res = subprocess.run([str(snakemake), "--lint", "--snakefile", snakefile],
                         capture_output=True, text=True)
    titles = lint_titles(res.stdout + res.stderr)
    other = [t for t in titles if t not in ACCEPTED]
    if res.returncode == 0 or (titles and not other):
        print(f"snakemake --lint: no lint but {len(titles)} x {ACCEPTED[0]!r} (one environment, "
              "see docs/workflow.md)")
        return 0
    sys.stdout.write(res.stdout + res.stderr)
    if not titles:  # no lint reported: the workflow did not parse, or snakemake itself failed
        print(f"snakemake --lint failed (exit {res.returncode}) before linting: see above",
              file=sys.stderr)
        return 1
    print(f"snakemake --lint: {len(other)} lint(s) besides the accepted one: "
          f"{sorted(set(other))}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
