"""DAG build time of `snakemake -n` for large ablation grids.

Run: `.venv/bin/python benchmarks/dag_build.py [--sizes 1000 10000]` (any grid sizes). `make bench`
(benchmarks/run.py, section ``dag``) times 1,000 and 10,000 jobs with ``grid_for`` and ``dry_run``.
Prints, per grid size, the wall time of a cold dry run (it also writes every job's resolved
config) and a warm one (configs already there), their ratio to the smoke grid measured in the
same run, and the floor: the dry run of a bare Snakefile with as many jobs of the same shape
(``FLOOR_SNAKEFILE``), Snakemake's own cost for that many jobs.
"""

from __future__ import annotations

import argparse
import re
import resource
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


# The floor: a Snakefile with the workflow's job shape (one teacher; per grid point a reflow
# job and an evaluate job with its log; one report) and nothing else: no input functions, no
# params, no resources, no config validation. Its dry run is Snakemake's own cost for that
# many jobs, the part of `dry_run` that no change to this workflow can remove.
FLOOR_SNAKEFILE = """
POINTS = [f"p{i}" for i in range(int(config["points"]))]

rule all:
    input: "report.txt"

rule report:
    input: expand("eval/{p}.json", p=POINTS)
    output: "report.txt"
    shell: "cat {input} > {output}"

rule teacher:
    output: "teacher.pt"
    shell: "touch {output}"

rule reflow:
    input: "teacher.pt"
    output: "students/{p}.pt"
    log: "logs/reflow/{p}.log"
    shell: "touch {output} > {log}"

rule evaluate:
    input: s="students/{p}.pt", t="teacher.pt"
    output: "eval/{p}.json"
    log: "logs/evaluate/{p}.log"
    shell: "touch {output} > {log}"
"""


def _run(cmd, cwd=None) -> tuple[float, int, float]:
    """(wall seconds, jobs in the dry run's summary, CPU seconds of the process and its
    children): the CPU time is what a loaded machine distorts least."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        sys.exit(f"snakemake failed:\n{res.stderr[-3000:]}")
    m = re.search(r"^total\s+(\d+)", res.stdout + res.stderr, re.M)
    cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
    return dt, int(m.group(1)) if m else 0, cpu


def floor_run(workdir: Path, n_jobs: int) -> tuple[float, int, float]:
    """``_run`` of `snakemake -n` on ``FLOOR_SNAKEFILE`` with about n_jobs."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "Snakefile").write_text(FLOOR_SNAKEFILE)
    return _run([SNAKEMAKE, "-n", "--cores", "1", "--config",
                 f"points={max(1, (n_jobs - 2) // 2)}"], workdir)


def dry_run(workdir: Path, grid: str, preset: str = "toy") -> tuple[float, int, float]:
    """``_run`` of `snakemake -n` on the workflow with ``grid`` and ``preset`` in workdir."""
    return _run([SNAKEMAKE, "-n", "--snakefile", str(REPO / "Snakefile"), "--directory",
                 str(workdir), "--config", f"grid={grid}", f"preset={preset}"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", type=int, default=[1000, 10000])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ref, ref_jobs, _ = dry_run(tmp / "ref", "smoke", "smoke")
        print(f"reference: smoke grid, {ref_jobs} jobs, {ref:.2f} s")
        print(f"{'jobs':>7} {'cold [s]':>9} {'warm [s]':>9} {'warm/ref':>9} {'floor [s]':>9}")
        for n in args.sizes:
            g = tmp / f"grid{n}.yaml"
            g.write_text(yaml.safe_dump(grid_for(n)))
            cold, jobs, _ = dry_run(tmp / f"w{n}", str(g))
            warm, _, _ = dry_run(tmp / f"w{n}", str(g))
            floor, _, _ = floor_run(tmp / f"floor{n}", jobs)
            print(f"{jobs:>7} {cold:>9.2f} {warm:>9.2f} {warm / ref:>9.1f} {floor:>9.2f}")


if __name__ == "__main__":
    main()
