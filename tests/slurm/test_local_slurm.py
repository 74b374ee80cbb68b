"""Snakemake's Slurm profile (workflow/profiles/slurm) against a real local Slurm."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "workflow" / "profiles" / "slurm"
SNAKEMAKE = Path(sys.executable).parent / "snakemake"

SNAKEFILE = textwrap.dedent(
    """
    rule good:
        output: "good.txt"
        threads: 1
        resources: mem_mb=321, runtime=7, cpus_per_task=1
        shell: "echo slurm_job=$SLURM_JOB_ID > {output}"

    rule bad:
        output: "bad.txt"
        shell: "exit 3"
    """
)

JOBID = re.compile(r"submitted with SLURM jobid (\d+)")


def start_snakemake(workdir: Path, target: str) -> tuple[subprocess.Popen, list[str], float]:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "Snakefile").write_text(SNAKEFILE)
    cmd = [
        "timeout", "-k", "10", "300",  # plain SIGTERM can leave snakemake waiting
        str(SNAKEMAKE), "--profile", str(PROFILE), "--directory", str(workdir), target,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "REFLOWMA_SLURM_PARTITION"}
    proc = subprocess.Popen(
        cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    return proc, cmd, time.monotonic()


def finish_snakemake(proc: subprocess.Popen, cmd: list[str], t0: float) -> tuple[int, str]:
    log, _ = proc.communicate(timeout=330)
    print(f"\n$ {' '.join(cmd)}\n-> rc {proc.returncode} in {time.monotonic() - t0:.1f}s")
    return proc.returncode, log


def scontrol_job(jobid: str) -> dict[str, str]:
    # Finished jobs stay visible for MinJobAge (600 s) in the local slurm.conf.
    out = subprocess.run(
        ["scontrol", "-o", "show", "job", jobid],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    return dict(f.split("=", 1) for f in out.split() if "=" in f)


@pytest.mark.slurm
def test_profile_submits_through_sbatch(local_slurm, tmp_path):
    # Both runs at once (1 CPU each on the 2-CPU node): after a failure the plugin takes ~20 s
    # more to exit, which the good run's ~15 s then hides.
    bad = start_snakemake(tmp_path / "fail", "bad.txt")
    try:
        good_dir = tmp_path / "ok"
        rc, log = finish_snakemake(*start_snakemake(good_dir, "good.txt"))
        assert rc == 0, f"snakemake failed (rc {rc}):\n{log[-4000:]}"
        out = good_dir / "good.txt"
        assert out.exists(), log[-4000:]
        jobids = JOBID.findall(log)
        assert len(jobids) == 1, f"expected one sbatch submission, got {jobids}:\n{log[-4000:]}"
        job = scontrol_job(jobids[0])
        print(
            f"good: Slurm job {jobids[0]} state={job.get('JobState')} "
            f"partition={job.get('Partition')} cpus={job.get('NumCPUs')} "
            f"mem={job.get('MinMemoryNode')} time={job.get('TimeLimit')} "
            f"node={job.get('NodeList')}; output: {out.read_text().strip()}"
        )
        assert job["JobState"] == "COMPLETED"
        assert job["MinMemoryNode"] == "321M"
        assert job["TimeLimit"] == "00:07:00"
        assert job["NumCPUs"] == "1"
        assert job["Partition"] == "debug"
        assert out.read_text().strip() == f"slurm_job={jobids[0]}"

        rc, log = finish_snakemake(*bad)
        bad_ids = JOBID.findall(log)
        states = {j: scontrol_job(j).get("JobState") for j in bad_ids}
        print(f"bad: Slurm jobs {states}; snakemake rc {rc}")
        assert rc not in (0, 124, 137), f"expected a failure, not success/timeout (rc {rc}):\n{log}"
        assert bad_ids, f"the failing rule was not submitted:\n{log[-4000:]}"
        assert states[bad_ids[0]] == "FAILED"
        assert not (tmp_path / "fail" / "bad.txt").exists()
    finally:
        if bad[0].poll() is None:  # an assertion above failed first
            bad[0].terminate()  # `timeout` passes SIGTERM on, then SIGKILLs after 10 s
            bad[0].communicate(timeout=60)
