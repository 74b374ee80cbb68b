"""Concurrent jobs: eight real teacher processes at once recording into the same Sacred runs
folder (six into their own output folders, two into the same one), and eight processes writing
the same file through ``write_json`` / ``checkpoint.save`` while it is read back."""

from __future__ import annotations

import json
import multiprocessing as mp
import subprocess
import time
from pathlib import Path

import pytest
import torch

from reflowma.infra.storage import checkpoint
from reflowma.infra.storage.atomic import sha256, write_json

from .conftest import REFLOWMA, env, records

N = 8
SHARED = (6, 7)  # these two processes write into the same output folder
ROUNDS = 6  # writes of each version by each writer process


@pytest.mark.slow  # eight training processes on 2 cores
def test_eight_teachers_at_once_share_a_runs_folder(tmp_path):
    runs = tmp_path / "runs"
    outs = {i: tmp_path / ("shared" if i in SHARED else f"out{i}") for i in range(N)}
    procs = {i: subprocess.Popen(
        [*REFLOWMA, "teacher", "--params", "smoke", "--out", str(outs[i]), "--runs", str(runs),
         "--job", f"job{i}", f"seed={i}", "train.steps=20"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env())
        for i in range(N)}
    errs = {}
    for i, p in procs.items():
        _, errs[i] = p.communicate(timeout=300)
    assert {i: p.returncode for i, p in procs.items()} == dict.fromkeys(range(N), 0), errs

    recs = records(runs)
    assert len(recs) == N  # one record per job, none lost or merged
    assert len({r["id"] for r in recs}) == N
    by_job = {r["info"]["job"]: r for r in recs}
    assert sorted(by_job) == sorted(f"job{i}" for i in range(N))
    shas = {}
    for i in range(N):
        r = by_job[f"job{i}"]
        assert r["run"]["status"] == "COMPLETED", r["run"].get("fail_trace")
        assert r["config"]["seed"] == i  # each record holds its own job's config
        assert r["info"]["out"] == str(outs[i])
        shas[i] = r["run"]["result"]["sha256"]
    assert len(set(shas.values())) == N  # eight seeds, eight different teachers
    for i, out in outs.items():
        checkpoint.load_model_file(out / "teacher.pt", "teacher")  # every model file loads
        json.loads((out / "metrics.json").read_text())
        if i not in SHARED:
            assert sha256(out / "teacher.pt") == shas[i]
        assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files
    # The shared folder holds one of the two versions whole, not a mix of both.
    assert sha256(outs[SHARED[0]] / "teacher.pt") in {shas[i] for i in SHARED}


def _json_version(i: int) -> dict:
    return {"writer": i, "data": [i] * 20000}


def _ckpt_version(i: int) -> dict:
    return {"writer": i, "t": torch.full((50000,), float(i))}


def _writer(i: int, path_json: str, path_ckpt: str, payload, rounds: int, start) -> None:
    start.wait()
    for _ in range(rounds):
        write_json(path_json, _json_version(i))
        checkpoint.save(path_ckpt, payload)


def _check_json(path: Path) -> int:
    obj = json.loads(path.read_text())  # a torn file would not parse
    assert obj["data"] == [obj["writer"]] * 20000
    return obj["writer"]


def _check_ckpt(path: Path) -> int:
    obj = checkpoint.load(path)
    assert torch.equal(obj["t"], torch.full((50000,), float(obj["writer"])))
    return obj["writer"]


def test_concurrent_writers_of_one_file(tmp_path):
    pj, pc = tmp_path / "same.json", tmp_path / "same.pt"
    payloads = [_ckpt_version(i) for i in range(N)]  # built before the fork
    ctx = mp.get_context("fork")  # real processes, without a fresh interpreter each
    start = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(i, str(pj), str(pc), payloads[i], ROUNDS, start))
             for i in range(N)]
    for p in procs:
        p.start()
    start.set()
    seen_json, seen_ckpt, reads = set(), set(), 0
    while any(p.is_alive() for p in procs):  # read back while they write: always complete
        if pj.exists():
            seen_json.add(_check_json(pj))
            reads += 1
        if pc.exists():
            seen_ckpt.add(_check_ckpt(pc))
        time.sleep(0.002)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert reads > 0 and seen_json <= set(range(N)) and seen_ckpt <= set(range(N))
    assert _check_json(pj) in range(N) and _check_ckpt(pc) in range(N)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.json", "same.pt"]  # no temps
