"""DAG build time of `snakemake -n` for large ablation grids.

Run: `.venv/bin/python benchmarks/dag_build.py [--sizes 1000 10000]` (any grid sizes). `make bench`
(benchmarks/run.py, section ``dag``) times 1,000 and 10,000 jobs with ``grid_for`` and ``dry_run``.
Prints, per grid size, the wall time of a cold dry run (it also writes every job's resolved
config) and a warm one (configs already there), and their ratio to the smoke grid measured in
the same run. Goals (issue 4): < 5 s for 1,000 jobs and < 30 s for 10,000 jobs on 2 cores.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def grid_for(n_jobs: int) -> dict:
    """A grid of about n_jobs jobs: 4 (dataset, seed) pairs, 2 jobs per point + 2 per pair."""
    pairs = 4
    points = max(1, round((n_jobs - 1 - 2 * pairs) / (2 * pairs)))
    lams = [round(1e-3 * (i + 1), 6) for i in range(-(-points // 3))]
    return {"datasets": ["8gaussians", "moons"], "seeds": [0, 1],
            "axes": {"K": [1, 2, 4], "regularizer.weight": lams}}


def dry_run(workdir: Path, grid: str, preset: str = "toy") -> tuple[float, int]:
    t0 = time.perf_counter()
    res = subprocess.run([SNAKEMAKE, "-n", "--snakefile", str(REPO / "Snakefile"),
                          "--directory", str(workdir), "--config", f"grid={grid}",
                          f"preset={preset}"], capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"snakemake failed:\n{res.stderr[-3000:]}")
    m = re.search(r"^total\s+(\d+)", res.stdout + res.stderr, re.M)
    return dt, int(m.group(1)) if m else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", type=int, default=[1000, 10000])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ref, ref_jobs = dry_run(tmp / "ref", "smoke", "smoke")
        print(f"reference: smoke grid, {ref_jobs} jobs, {ref:.2f} s")
        print(f"{'jobs':>7} {'cold [s]':>9} {'warm [s]':>9} {'warm/ref':>9} {'goal [s]':>9}")
        for n in args.sizes:
            g = tmp / f"grid{n}.yaml"
            g.write_text(yaml.safe_dump(grid_for(n)))
            cold, jobs = dry_run(tmp / f"w{n}", str(g))
            warm, _ = dry_run(tmp / f"w{n}", str(g))
            goal = 5 if n <= 1000 else 30
            print(f"{jobs:>7} {cold:>9.2f} {warm:>9.2f} {warm / ref:>9.1f} {goal:>9}")


if __name__ == "__main__":
    main()
