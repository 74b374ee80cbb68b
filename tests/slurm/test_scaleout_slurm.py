"""Scale-out on the local Slurm: a 2-rank torchrun job, preemption -> requeue -> resume, and
grouping of the grid's small jobs (submissions and wall time, with and without)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .test_local_slurm import JOBID, scontrol_job

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
PROFILES = REPO / "workflow" / "profiles"
TEACHER = "results/{p}/teacher/8gaussians/seed~0"


def _snakemake(workdir: Path, profile: str, *args) -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = ["timeout", "-k", "10", "480", str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"),
           "--profile", str(PROFILES / profile), "--directory", str(workdir), *args]
    env = {k: v for k, v in os.environ.items() if k != "REFLOWMA_SLURM_PARTITION"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _preset(tmp_path: Path, name: str, **teacher) -> Path:
    p = yaml.safe_load((REPO / "params/presets/smoke.yaml").read_text())
    p["teacher"]["train"].update(teacher)
    p["resources"]["teacher"]["nproc"] = 2  # two torchrun ranks (gloo) in one Slurm job
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(p))
    return path


def _records(runs: Path, job: str) -> list[str]:
    out = []
    for d in sorted((p for p in runs.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        if json.loads((d / "info.json").read_text()).get("job") == job:
            out.append(json.loads((d / "run.json").read_text())["status"])
    return out


@pytest.mark.slurm
def test_ddp_job_preempted_requeued_resumes_bit_identical(local_slurm, tmp_path):
    preset = _preset(tmp_path, "ddp", steps=400, checkpoint_every=20, log_every=20)
    wd = tmp_path / "wf"
    teacher = wd / TEACHER.format(p="ddp")
    t0 = time.monotonic()
    proc = _snakemake(wd, "slurm", f"{TEACHER.format(p='ddp')}/teacher.pt",
                      "--config", f"preset={preset}", "grid=smoke")
    # wait for the first resume checkpoint, then preempt the job as Slurm would
    deadline = time.monotonic() + 240
    while not (teacher / "state.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-4000:]
        time.sleep(1)
    rows = subprocess.run(["squeue", "-h", "-o", "%i %Z"], capture_output=True, text=True,
                          check=True).stdout.splitlines()
    (jid,) = [r.split()[0] for r in rows if r.split()[1] == str(wd)]
    subprocess.run(["scancel", "--signal=TERM", jid], check=True)
    # the requeued job waits cred_expire (default 120 s) before it may start: start it now
    deadline = time.monotonic() + 120
    while int(scontrol_job(jid).get("Restarts", 0)) < 1:
        assert time.monotonic() < deadline, scontrol_job(jid)
        time.sleep(1)
    subprocess.run(["scontrol", "update", f"JobId={jid}", "StartTime=now"], check=True)
    log, _ = proc.communicate(timeout=480)
    print(f"\n-> snakemake rc {proc.returncode} in {time.monotonic() - t0:.1f}s")
    assert proc.returncode == 0, log[-6000:]
    job = scontrol_job(jid)
    print(f"Slurm job {jid}: {job['JobState']} Restarts={job['Restarts']} "
          f"NumCPUs={job['NumCPUs']}")
    assert JOBID.findall(log) == [jid]  # one submission: Slurm reran the same job
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "1" and job["NumCPUs"] == "2"
    statuses = _records(wd / "results/ddp/runs", "teacher/8gaussians/seed~0")
    assert statuses == ["INTERRUPTED", "COMPLETED"], statuses
    m = json.loads((teacher / "metrics.json").read_text())["metrics"]
    assert (m["world_size"], m["batch_per_rank"]) == (2, 32)

    # the same job, uninterrupted, outside Slurm
    ref = tmp_path / "ref"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "REFLOWMA_ROOT": str(REPO),
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    subprocess.run(["timeout", "-k", "5", "300", sys.executable, "-m", "torch.distributed.run",
                    "--standalone", "--nproc_per_node", "2", "-m", "reflowma", "teacher",
                    "--params", str(wd / "results/ddp/configs/teacher/8gaussians/seed~0.yaml"),
                    "--out", str(ref)], env=env, check=True, capture_output=True)
    assert (teacher / "teacher.pt").read_bytes() == (ref / "teacher.pt").read_bytes()
    got = json.loads((ref / "metrics.json").read_text())
    assert got["history"] == json.loads((teacher / "metrics.json").read_text())["history"]


@pytest.mark.slurm
@pytest.mark.parametrize("profile", ["slurm", "slurm-grouped"])
def test_grid_submissions_and_wall_time(local_slurm, tmp_path, profile):
    t0 = time.monotonic()
    proc = _snakemake(tmp_path, profile, "--config", "preset=smoke", "grid=smoke")
    log, _ = proc.communicate(timeout=480)
    wall = time.monotonic() - t0
    ids = JOBID.findall(log)
    cpus = {j: scontrol_job(j)["NumCPUs"] for j in ids}
    print(f"\n[{profile}] smoke grid: {len(ids)} sbatch submissions, {wall:.1f} s; cpus {cpus}")
    assert proc.returncode == 0, log[-6000:]
    assert len(list((tmp_path / "results/smoke/eval").rglob("eval.json"))) == 2
    assert len(ids) == (7 if profile == "slurm" else 4)
