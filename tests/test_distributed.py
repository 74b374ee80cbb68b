"""Data-parallel training on CPU with gloo, two processes under torchrun.

Equivalence: 2 ranks with B/2 rows each must train like 1 rank with the same B rows. The mean
over B rows equals the mean of the two half-batch means, and the gradients are averaged, so the
two runs differ only by float32 summation order (~1e-7 relative per step); Adam, clipping and
30 steps amplify that by at most a few orders of magnitude, so we ask for 1e-5 absolute on
O(0.1..1) weights and losses: far below the ~1e-2 change of one step (a bug such as summing
instead of averaging, or ranks seeing the same rows, exceeds it by orders of magnitude).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "distributed" / "fit_script.py"


def _torchrun(nproc: int, *args, timeout=240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = ["timeout", "-k", "5", str(timeout), sys.executable, "-m", "torch.distributed.run",
           "--standalone", "--nproc_per_node", str(nproc), *args]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    out = {}
    for n in (1, 2):
        d = tmp_path_factory.mktemp(f"ws{n}")
        _torchrun(n, str(SCRIPT), str(d), *(["--interrupt", "12"] if n == 2 else []))
        out[n] = d
    return out


def test_two_ranks_half_batch_match_one_rank_full_batch(fits):
    one, two = (torch.load(fits[n] / "plain.pt") for n in (1, 2))
    assert two["ws"] == 2 and one["ws"] == 1
    for k, v in one["ema"].items():
        diff = (v - two["ema"][k]).abs().max().item()
        print(f"{k}: max |w1 - w2| = {diff:.2e}")
        assert diff < 1e-5, k
    for a, b in zip(one["history"], two["history"], strict=True):
        assert a["step"] == b["step"] and abs(a["loss"] - b["loss"]) < 1e-5


def test_preempted_ranks_stop_together_and_resume_bit_identical(fits):
    plain, resumed = (torch.load(fits[2] / f) for f in ("plain.pt", "resumed.pt"))
    assert resumed["stopped_at"] == 13  # rank 1 was signalled during step 12
    for k, v in plain["ema"].items():
        assert torch.equal(v, resumed["ema"][k]), k
    assert plain["history"] == resumed["history"]


def test_torchrun_teacher_records_world_size(tmp_path):
    out, runs = tmp_path / "t", tmp_path / "runs"
    _torchrun(2, "-m", "reflowma", "teacher", "--params", "smoke", "--out", str(out),
              "--runs", str(runs))
    m = json.loads((out / "metrics.json").read_text())["metrics"]
    assert (m["world_size"], m["batch_per_rank"]) == (2, 32)
    recs = [p for p in runs.iterdir() if p.name.isdigit()]
    assert len(recs) == 1  # rank 0 alone records
    run = json.loads((recs[0] / "run.json").read_text())
    assert run["status"] == "COMPLETED" and run["result"]["world_size"] == 2
    assert json.loads((recs[0] / "info.json").read_text())["world_size"] == 2
    assert not (out / "state.pt").exists()


def test_torchrun_couplings_write_the_file_of_one_process(tmp_path):
    """Two ranks solve the chunks round-robin and rank 0 writes them: the same file, byte for
    byte, as one process (both computed here), with a fitted step grid (rank 0's pilot, sent
    to the other rank) and an odd number of chunks per split (the last round has one)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    py = [sys.executable, "-m", "reflowma"]
    subprocess.run([*py, "teacher", "--params", "smoke", "--out", str(tmp_path / "t"),
                    "--runs", str(tmp_path / "runs"), "train.steps=30"],
                   check=True, env=env, cwd=REPO, capture_output=True)
    over = ["n_train=250", "n_test=150", "chunk_size=50", "time_grid=fitted", "pilot_size=32"]
    teacher = str(tmp_path / "t" / "teacher.pt")
    subprocess.run([*py, "couplings", "--params", "smoke", "--teacher", teacher, "--out",
                    str(tmp_path / "one.h5"), "--runs", str(tmp_path / "runs"), *over],
                   check=True, env=env, cwd=REPO, capture_output=True)
    _torchrun(2, "-m", "reflowma", "couplings", "--params", "smoke", "--teacher", teacher,
              "--out", str(tmp_path / "two.h5"), "--runs", str(tmp_path / "runs"), *over)
    assert (tmp_path / "one.h5").read_bytes() == (tmp_path / "two.h5").read_bytes()
