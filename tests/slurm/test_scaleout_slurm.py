"""Scale-out on the local Slurm: a 2-rank torchrun job preempted -> requeued -> resumed
bit-identically, a cancelled job that stays cancelled, and grouping of the grid's small jobs
(submissions and wall time, with and without).

The figures these tests print are the ones quoted in docs/slurm.md (2-core machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from .test_local_slurm import JOBID, scontrol_job

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
PROFILES = REPO / "workflow" / "profiles"
TEACHER = "results/{p}/teacher/8gaussians/seed~0"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "REFLOWMA_SLURM_PARTITION"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env


def _snakemake(workdir: Path, profile: str, *args, limit: int = 420) -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = ["timeout", "-k", "10", str(limit), str(SNAKEMAKE), "--snakefile",
           str(REPO / "Snakefile"), "--profile", str(PROFILES / profile), "--directory",
           str(workdir), *args]
    return subprocess.Popen(cmd, cwd=workdir, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:  # an assertion failed first
        proc.terminate()  # `timeout` passes SIGTERM on, then SIGKILLs after 10 s
        proc.communicate(timeout=60)


def _preset(tmp_path: Path, name: str, nproc: int, **teacher) -> Path:
    p = yaml.safe_load((REPO / "params/presets/smoke.yaml").read_text())
    p["teacher"]["train"].update(teacher)
    p["resources"]["teacher"]["nproc"] = nproc
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(p))
    return path


def _records(runs: Path, job: str) -> list[str]:
    out = []
    for d in sorted((p for p in runs.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        if json.loads((d / "info.json").read_text()).get("job") == job:
            out.append(json.loads((d / "run.json").read_text())["status"])
    return out


def _job_of(workdir: Path) -> str:
    """The id of the one Slurm job whose working directory is ``workdir``."""
    rows = subprocess.run(["squeue", "-h", "-o", "%i %Z"], capture_output=True, text=True,
                          check=True).stdout.splitlines()
    (jid,) = [r.split()[0] for r in rows if r.split()[1] == str(workdir)]
    return jid


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            pytest.fail(f"{path} did not appear:\n{proc.stdout.read()[-4000:]}")
        time.sleep(0.5)


@dataclass(frozen=True)
class SignalledRun:
    """A smoke teacher run under the `slurm` profile whose Slurm job was signalled mid-training."""

    workdir: Path
    teacher: Path  # the teacher's output folder
    jid: str  # its Slurm job
    returncode: int  # Snakemake's
    log: str  # Snakemake's output
    signal_after: float  # seconds from the start of Snakemake to the scancel
    wall: float  # seconds from the start of Snakemake to its end


def _signal_teacher_job(tmp_path: Path, name: str, nproc: int, scancel: list[str],
                        timeout: float) -> SignalledRun:
    """Run the teacher of preset ``name`` (smoke, ``nproc`` ranks, 400 steps, a resume checkpoint
    every 20) as the target of Snakemake's `slurm` profile; once its first checkpoint is written,
    ``scancel *scancel <job>``, then wait up to ``timeout`` s for Snakemake to end."""
    preset = _preset(tmp_path, name, nproc, steps=400, checkpoint_every=20, log_every=20)
    wd = tmp_path / "wf"
    target = TEACHER.format(p=name)
    t0 = time.monotonic()
    proc = _snakemake(wd, "slurm", f"{target}/teacher.pt", "--config", f"preset={preset}",
                      "grid=smoke")
    try:
        _wait_for(wd / target / "state.pt", proc, 240)
        jid = _job_of(wd)
        t_sig = time.monotonic()
        subprocess.run(["scancel", *scancel, jid], check=True)
        log, _ = proc.communicate(timeout=timeout)
    finally:
        _stop(proc)
    return SignalledRun(wd, wd / target, jid, proc.returncode, log, t_sig - t0,
                        time.monotonic() - t0)


@pytest.mark.slow
@pytest.mark.slurm
def test_ddp_job_preempted_requeued_resumes_bit_identical(local_slurm, tmp_path):
    # ~130 s here. 2 torchrun ranks (gloo) in one Slurm job of 2 CPUs; 400 steps leave time to
    # signal it after the first resume checkpoint (step 20) even on a fast machine.
    # What a preemption notice does: SIGTERM to every process of the job's steps.
    run = _signal_teacher_job(tmp_path, "ddp", 2, ["--signal=TERM"], timeout=420)
    wd, teacher, jid, log = run.workdir, run.teacher, run.jid, run.log
    job = scontrol_job(jid)
    tlog = (wd / "results/ddp/logs/teacher/8gaussians/seed~0.log").read_text()
    print(f"\n-> snakemake rc {run.returncode} in {run.wall:.1f}s (signal after "
          f"{run.signal_after:.1f}s); Slurm job {jid}: {job['JobState']} "
          f"Restarts={job['Restarts']} NumCPUs={job['NumCPUs']}")
    print("\n".join(ln for ln in tlog.splitlines() if "resuming" in ln or "requeue" in ln
                    or "interrupted" in ln))
    assert run.returncode == 0, log[-6000:]
    assert JOBID.findall(log) == [jid]  # one submission: Slurm reran the same job
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "1" and job["NumCPUs"] == "2"
    # one log for both attempts: interrupted, requeued, restarted, resumed
    for line in ("interrupted by SIGTERM", f"requeueing Slurm job {jid}",
                 f"Slurm job {jid} restarted after its requeue", "resuming teacher from step"):
        assert line in tlog, (line, tlog[-3000:])
    assert not list(wd.rglob("*.requeued-*"))
    statuses = _records(wd / "results/ddp/runs", "teacher/8gaussians/seed~0")
    assert statuses == ["INTERRUPTED", "COMPLETED"], statuses
    got = json.loads((teacher / "metrics.json").read_text())
    assert (got["metrics"]["world_size"], got["metrics"]["batch_per_rank"]) == (2, 32)

    # the same job uninterrupted, outside Slurm, from the config Snakemake resolved
    ref = tmp_path / "ref"
    t1 = time.monotonic()
    env = {**_env(), "OMP_NUM_THREADS": "1", "REFLOWMA_ROOT": str(REPO)}
    env.pop("SLURM_JOB_ID", None)
    subprocess.run(["timeout", "-k", "5", "300", sys.executable, "-m", "torch.distributed.run",
                    "--standalone", "--nproc_per_node", "2", "-m", "reflowma", "teacher",
                    "--params", str(wd / "results/ddp/configs/teacher/8gaussians/seed~0.yaml"),
                    "--out", str(ref)], env=env, check=True, capture_output=True)
    print(f"uninterrupted reference: {time.monotonic() - t1:.1f}s")
    assert (teacher / "teacher.pt").read_bytes() == (ref / "teacher.pt").read_bytes()
    want = json.loads((ref / "metrics.json").read_text())
    assert got["history"] == want["history"]
    timing = {k for k in got["metrics"] if k == "seconds" or "time" in k or k.endswith("_s")}
    assert ({k: v for k, v in got["metrics"].items() if k not in timing}
            == {k: v for k, v in want["metrics"].items() if k not in timing})


@pytest.mark.slow  # 76 s here
@pytest.mark.slurm
def test_cancelled_job_is_not_requeued(local_slurm, tmp_path):
    # A plain `scancel` is the user's decision: SIGTERM reaches the stage as for a preemption,
    # but the job is CANCELLED already and job.sh must not bring it back.
    run = _signal_teacher_job(tmp_path, "cancel", 1, [], timeout=300)
    jid = run.jid
    time.sleep(3)  # a wrong requeue would show within a second or two
    job = scontrol_job(jid)
    tlog = (run.workdir / "results/cancel/logs/teacher/8gaussians/seed~0.log").read_text()
    print(f"\n-> snakemake rc {run.returncode} in {run.wall:.1f}s; Slurm job "
          f"{jid}: {job['JobState']} Restarts={job['Restarts']}")
    assert run.returncode not in (0, 124, 137), run.log[-4000:]
    assert (job["JobState"], job["Restarts"]) == ("CANCELLED", "0"), job
    assert "requeueing" not in tlog and f"Slurm job {jid} is COMPLETING" in tlog, tlog[-3000:]
    assert not (run.teacher / "teacher.pt").exists()


# Measured on the 2-core local Slurm (smoke grid: 1 teacher, 1 couplings, 2 reflow, 2 evaluate,
# 1 report): one sbatch per job without grouping; with it, the reflow and evaluate jobs of both
# points share one Slurm job.
SUBMISSIONS = {"slurm": 7, "slurm-grouped": 4}


@pytest.mark.slow  # 166 s and 162 s here
@pytest.mark.slurm
@pytest.mark.parametrize("profile", ["slurm", "slurm-grouped"])
def test_grid_submissions_and_wall_time(local_slurm, tmp_path, profile):
    t0 = time.monotonic()
    # --cores 2: the node's cores; a group asks at most that many (its points then run in
    # series inside the job) instead of one core per point.
    proc = _snakemake(tmp_path, profile, "--cores", "2", "--config", "preset=smoke",
                      "grid=smoke")
    try:
        log, _ = proc.communicate(timeout=450)
    finally:
        _stop(proc)
    wall = time.monotonic() - t0
    ids = JOBID.findall(log)
    cpus = {j: scontrol_job(j)["NumCPUs"] for j in ids}
    print(f"\n[{profile}] smoke grid: {len(ids)} sbatch submissions, {wall:.1f} s; "
          f"cpus per job {cpus}")
    assert proc.returncode == 0, log[-6000:]
    assert len(list((tmp_path / "results/smoke/eval").rglob("eval.json"))) == 2
    assert all(int(c) <= 2 for c in cpus.values()), cpus
    assert len(ids) == SUBMISSIONS[profile], ids
