"""The smoke grid through `snakemake --profile workflow/profiles/slurm` on a real local Slurm."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .test_local_slurm import JOBID, scontrol_job

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "workflow" / "profiles" / "slurm"
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
RULE_OF_JOB = re.compile(r"rule (\w+):.*?jobid: (\d+).*?submitted with SLURM jobid (\d+)", re.S)


def _start(workdir: Path, *config) -> tuple[subprocess.Popen, float]:
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = ["timeout", "-k", "10", "420", str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"),
           "--profile", str(PROFILE), "--directory", str(workdir), "--config", *config]
    env = {k: v for k, v in os.environ.items() if k != "REFLOWMA_SLURM_PARTITION"}
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    return proc, time.monotonic()


def _finish(proc, t0) -> tuple[int, str]:
    log, _ = proc.communicate(timeout=450)
    print(f"\n-> snakemake rc {proc.returncode} in {time.monotonic() - t0:.1f}s")
    return proc.returncode, log


def _jobs_by_rule(log: str) -> dict[str, list[str]]:
    """Slurm job ids per rule, from Snakemake's log (rule block, then the submission line)."""
    out: dict[str, list[str]] = {}
    blocks = re.split(r"\n(?=rule \w+:)", log)
    for b in blocks:
        m = re.match(r"rule (\w+):", b)
        ids = JOBID.findall(b)
        if m and ids:
            out.setdefault(m.group(1), []).extend(ids)
    return out


@pytest.mark.slow  # 188 s here; the default run keeps test_local_slurm's real sbatch workflow
@pytest.mark.slurm
def test_smoke_grid_on_slurm(local_slurm, tmp_path):
    # A failing variant of the same workflow runs alongside: a teacher whose loss diverges
    # (lr = 1e6) fails its job with the NaN guard, and snakemake must exit non-zero.
    bad_preset = yaml.safe_load((REPO / "params/presets/smoke.yaml").read_text())
    bad_preset["teacher"]["train"]["lr"] = 1.0e6
    bad_path = tmp_path / "diverging.yaml"
    bad_path.write_text(yaml.safe_dump(bad_preset))
    bad = _start(tmp_path / "fail", f"preset={bad_path}", "grid=smoke")
    try:
        rc, log = _finish(*_start(tmp_path / "ok", "preset=smoke", "grid=smoke"))
        assert rc == 0, log[-6000:]
        jobs = _jobs_by_rule(log)
        print({rule: ids for rule, ids in jobs.items()})
        assert {r: len(v) for r, v in jobs.items()} == {"teacher": 1, "couplings": 1,
                                                         "reflow": 2, "evaluate": 2,
                                                         "report": 1}, jobs
        want = {"teacher": ("1100M", "00:11:00"), "couplings": ("1000M", "00:10:00"),
                "reflow": ("1200M", "00:12:00"), "evaluate": ("1000M", "00:10:00"),
                "report": ("1000M", "00:10:00")}
        for rule, ids in jobs.items():
            for jid in ids:
                job = scontrol_job(jid)
                print(f"{rule}: Slurm job {jid} {job.get('JobState')} cpus={job.get('NumCPUs')}"
                      f" mem={job.get('MinMemoryNode')} time={job.get('TimeLimit')} "
                      f"partition={job.get('Partition')}")
                assert job["JobState"] == "COMPLETED"
                assert (job["MinMemoryNode"], job["TimeLimit"]) == want[rule]
                assert job["Partition"] == "debug"
        evals = sorted((tmp_path / "ok" / "results/smoke/eval").rglob("eval.json"))
        assert len(evals) == 2
        for e in evals:
            assert set(json.loads(e.read_text())["nfe"]) == {"1", "2", "4"}

        rc, log = _finish(*bad)
        bad_jobs = _jobs_by_rule(log)
        print(f"failing run: {bad_jobs}, rc {rc}")
        assert rc not in (0, 124, 137), log[-4000:]
        bad_job = scontrol_job(bad_jobs["teacher"][0])
        # exit 3 is no preemption: job.sh passes it on and does not requeue the job
        assert (bad_job["JobState"], bad_job["Restarts"]) == ("FAILED", "0")
        tlog = next((tmp_path / "fail" / "results").rglob("logs/teacher/**/*.log"))
        assert "non-finite loss" in tlog.read_text()
        assert "requeueing" not in tlog.read_text()
        assert not list((tmp_path / "fail" / "results").rglob("teacher.pt"))
    finally:
        if bad[0].poll() is None:
            bad[0].terminate()
            bad[0].communicate(timeout=60)
