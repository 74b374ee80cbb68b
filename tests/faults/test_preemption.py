"""Preemption of training jobs (real processes): SIGTERM/SIGINT during teacher and student
training save the state and exit 128 + signum with an INTERRUPTED run record; the rerun (the
same command) resumes and ends bit-identical to an uninterrupted run. A SIGKILL at a seeded
random point of teacher training loses at most the steps since the last checkpoint: the rerun
resumes from it, again bit-identical, and no output is ever half-written or left as a stray
temporary file.

Couplings generation under SIGTERM/SIGKILL (chunk-wise resume to identical HDF5 content) and
truncated/incomplete couplings files: tests/test_couplings_storage.py
(test_killed_generation_resumes_to_identical_content, test_incomplete_files_are_refused,
test_truncated_file_is_refused).
"""

from __future__ import annotations

import logging
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from reflowma.infra.storage import checkpoint
from reflowma.infra.storage.atomic import write_json

from .conftest import (
    REFLOWMA,
    assert_same_weights,
    env,
    metrics_without_timing,
    records_of,
    run_cli,
)

# 50 steps between checkpoints, 350 steps after the first one: time to signal the process
TRAIN = ["train.steps=400", "train.checkpoint_every=50"]
KILL_SEED = 6  # seeds the random delay of the SIGKILL
CASES = {  # name: (stage, signal)
    "teacher-SIGTERM": ("teacher", signal.SIGTERM),
    "teacher-SIGINT": ("teacher", signal.SIGINT),
    "teacher-SIGKILL": ("teacher", signal.SIGKILL),
    "reflow-SIGTERM": ("reflow", signal.SIGTERM),
    "reflow-SIGINT": ("reflow", signal.SIGINT),
}
MODEL = {"teacher": "teacher.pt", "reflow": "student.pt"}


def _argv(stage: str, out: Path, smoke: dict, runs: Path | None = None,
          job: str | None = None) -> list[str]:
    inputs = ([] if stage == "teacher" else
              ["--teacher", str(smoke["teacher"]), "--couplings", str(smoke["couplings"])])
    record = ["--runs", str(runs), "--job", job] if runs else []
    return [stage, "--params", "smoke", *inputs, "--out", str(out), *record, *TRAIN]


def _loads_or_absent(path: Path) -> None:
    """A final output is either absent or complete (never half-written)."""
    if path.exists():
        checkpoint.load(path)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, smoke):
    """The five jobs run at once as real processes, each signalled once its first checkpoint
    (state.pt) exists; SIGKILL comes after a seeded random delay."""
    root = tmp_path_factory.mktemp("preempt")
    runs = root / "runs"
    delay = random.Random(KILL_SEED).uniform(0.0, 0.25)
    jobs = {}
    try:
        for name, (stage, sig) in CASES.items():
            out = root / name
            argv = _argv(stage, out, smoke, runs, name)
            log = root / f"{name}.log"
            with open(log, "w") as f:
                proc = subprocess.Popen([*REFLOWMA, *argv], stdout=subprocess.DEVNULL, stderr=f,
                                        env=env())
            jobs[name] = {"stage": stage, "sig": sig, "out": out, "argv": argv, "proc": proc,
                          "log": log, "signal_at": None, "sent": False}
        deadline = time.monotonic() + 240
        while not all(j["sent"] for j in jobs.values()) and time.monotonic() < deadline:
            for name, j in jobs.items():
                if j["sent"]:
                    continue
                assert j["proc"].poll() is None, (
                    f"{name} ended (rc {j['proc'].returncode}) before it was signalled: "
                    f"{j['log'].read_text()[-2000:]}")
                _loads_or_absent(j["out"] / MODEL[j["stage"]])  # never half-written
                now = time.monotonic()
                if j["signal_at"] is None and (j["out"] / "state.pt").exists():
                    j["signal_at"] = now + (delay if j["sig"] == signal.SIGKILL else 0.0)
                if j["signal_at"] is not None and now >= j["signal_at"]:
                    j["proc"].send_signal(j["sig"])
                    j["sent"] = True
            time.sleep(0.005)
        assert all(j["sent"] for j in jobs.values()), "no checkpoint appeared in time"
        for j in jobs.values():
            j["rc"] = j["proc"].wait(timeout=120)
            j["stderr"] = j["log"].read_text()
    finally:
        for j in jobs.values():
            if j["proc"].poll() is None:
                j["proc"].kill()
                j["proc"].wait()
    return {"runs": runs, "jobs": jobs, "kill_delay": delay}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, smoke):
    """Uninterrupted runs of the same commands (no run records)."""
    root = tmp_path_factory.mktemp("reference")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for stage in ("teacher", "reflow"):
            assert run_cli(*_argv(stage, root / stage, smoke)) == 0
            out[stage] = root / stage
    finally:
        torch.set_num_threads(n)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_interrupt_then_resume_is_bit_identical(name, interrupted, reference, caplog):
    job = interrupted["jobs"][name]
    stage, sig, out, runs = job["stage"], job["sig"], job["out"], interrupted["runs"]
    model = out / MODEL[stage]
    state = out / "state.pt"
    # The interrupted process.
    if sig == signal.SIGKILL:
        assert job["rc"] == -signal.SIGKILL, job["stderr"][-2000:]
        assert [r["run"]["status"] for r in records_of(runs, name)] == ["RUNNING"]  # no chance
    else:
        assert job["rc"] == 128 + sig, job["stderr"][-2000:]
        m = re.search(rf"reflowma: interrupted by {sig.name} at step (\d+); state saved, rerun "
                      "to resume", job["stderr"])
        assert m, job["stderr"][-2000:]
        recs = records_of(runs, name)
        assert [r["run"]["status"] for r in recs] == ["INTERRUPTED"]
    assert state.is_file()
    step = int(checkpoint.load(state)["step"])  # complete, even after SIGKILL (atomic replace)
    assert 50 <= step < 400
    if sig == signal.SIGKILL:
        assert step % 50 == 0  # the last periodic checkpoint
    else:
        assert step == int(m.group(1))  # saved at the step boundary after the signal
    _loads_or_absent(model)
    assert not model.exists()  # promoted only at the end

    # The rerun: the very same command.
    caplog.set_level(logging.INFO)
    assert run_cli(*job["argv"]) == 0
    desc = "teacher" if stage == "teacher" else "reflow K=1"
    assert f"resuming {desc} from step {step} ({state})" in caplog.text
    recs = records_of(runs, name)
    assert [r["run"]["status"] for r in recs][-1] == "COMPLETED"
    assert recs[-1]["id"] != recs[0]["id"]
    # Bit-identical to the uninterrupted run.
    ref = reference[stage]
    assert_same_weights(model, ref / MODEL[stage])
    assert metrics_without_timing(out / "metrics.json") == metrics_without_timing(
        ref / "metrics.json")
    # Only the outputs remain: no state, no temporary file of a killed writer.
    assert sorted(p.name for p in out.iterdir()) == sorted([MODEL[stage], "metrics.json"])


_WRITER = """
import sys, time
from pathlib import Path
from reflowma.infra.storage.atomic import atomic_path
out = Path(sys.argv[1])
with atomic_path(out / "state.pt") as a, atomic_path(out / "teacher.pt") as b, \\
        atomic_path(out.parent / "eval.json") as c:
    for p in (a, b, c):
        p.write_bytes(b"half a file")
    print("writing", flush=True)
    time.sleep(60)
"""


def test_kill_during_writes_leaves_no_half_file_and_rerun_sweeps_temps(tmp_path, caplog):
    """A writer SIGKILLed in the middle of writing state.pt, teacher.pt and eval.json: the
    final names hold the old version or nothing, and the rerun leaves no temporary file."""
    out, ev = tmp_path / "teacher", tmp_path / "eval.json"
    write_json(ev, {"version": "old"})
    proc = subprocess.Popen([REFLOWMA[0], "-c", _WRITER, str(out)], stdout=subprocess.PIPE,
                            text=True, env=env())
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    assert proc.wait(timeout=30) == -signal.SIGKILL
    proc.stdout.close()
    temps = sorted(p.name for p in [*out.iterdir(), *tmp_path.glob(".eval.json.*")])
    assert len(temps) == 3 and all(t.startswith(".") and t.endswith(".tmp") for t in temps)
    assert not (out / "teacher.pt").exists() and not (out / "state.pt").exists()
    assert ev.read_text() == '{\n  "version": "old"\n}\n'  # the old version, complete

    caplog.set_level(logging.INFO)
    assert run_cli("teacher", "--params", "smoke", "--out", out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "teacher.pt"]
    checkpoint.load_model_file(out / "teacher.pt", "teacher")
    write_json(ev, {"version": "new"})
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".eval.json")] == []
