"""Fault-injection tests (issue 6): shared models, CLI helpers and run-record readers.

Everything uses the ``smoke`` preset with small overrides. Stage runs that need no real process
(reference runs, reruns, refused inputs) run in-process through ``cli.main``; the runs that are
signalled, killed or run concurrently are real processes (``python -m reflowma``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
from pathlib import Path

import pytest
import torch

from reflowma import cli

REPO = Path(__file__).resolve().parents[2]
REFLOWMA = [sys.executable, "-m", "reflowma"]
TIMING_KEYS = ("seconds", "seconds_per_step", "train_seconds")  # wall clock in metrics.json


def env() -> dict[str, str]:
    """Environment of a job process: one thread, no inherited run folder."""
    e = {k: v for k, v in os.environ.items() if k != "REFLOWMA_RUNS"}
    e["OMP_NUM_THREADS"] = "1"
    return e


def run_cli(*argv) -> int:
    return cli.main([str(a) for a in argv])


def records(runs: Path) -> list[dict]:
    """Every FileStorageObserver record under ``runs``: id, run, config, info."""
    out = []
    for d in sorted((d for d in runs.iterdir() if d.name.isdigit()), key=lambda d: int(d.name)):
        out.append({"id": d.name, **{n: json.loads((d / f"{n}.json").read_text())
                                    if (d / f"{n}.json").is_file() else {}
                                    for n in ("run", "config", "info")}})
    return out


def records_of(runs: Path, job: str) -> list[dict]:
    return [r for r in records(runs) if r["info"].get("job") == job]


def state_dict(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = state_dict(a), state_dict(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{a} and {b} differ in {k}"


def metrics_without_timing(path: Path) -> dict:
    m = json.loads(path.read_text())
    m["metrics"] = {k: v for k, v in m["metrics"].items() if k not in TIMING_KEYS}
    return m


def error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.strip()]


@pytest.fixture
def real_stderr():
    """Log records go to (captured) stderr as in a real process: ``cli.main``'s basicConfig
    takes effect because the root logger has no handlers while the test runs."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers = []
    yield
    for h in root.handlers:
        h.close()
    root.handlers, root.level = saved, level


PROXIES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy")


@contextlib.contextmanager
def no_network(attempts: list):
    """Every way to the network closed off (connect, DNS; attempts are recorded and fail) and
    the proxies pointing at a closed local port."""

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access in the offline default path")

    with pytest.MonkeyPatch.context() as mp:
        for name in ("connect", "connect_ex"):
            mp.setattr(socket.socket, name, refuse)
        mp.setattr(socket, "create_connection", refuse)
        mp.setattr(socket, "getaddrinfo", refuse)
        for k in PROXIES:
            mp.setenv(k, "http://127.0.0.1:9")
        mp.delenv("REFLOWMA_MONGO_URL", raising=False)
        yield


@pytest.fixture(scope="session")
def smoke(tmp_path_factory) -> dict:
    """The smoke pipeline (teacher, couplings, student, evaluation; run records in ``runs``),
    run with no network (``attempts``: the connections it tried); a teacher of another
    architecture (net.width=16) and its couplings."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("smoke")
    t, c, s = d / "teacher", d / "couplings.h5", d / "student"
    ev, runs = d / "eval.json", d / "runs"
    t16, c16 = d / "teacher16", d / "couplings16.h5"
    attempts: list = []
    try:
        rec = ["--params", "smoke", "--runs", runs]
        with no_network(attempts):
            assert run_cli("teacher", *rec, "--out", t) == 0
            assert run_cli("couplings", *rec, "--teacher", t / "teacher.pt", "--out", c) == 0
            assert run_cli("reflow", *rec, "--teacher", t / "teacher.pt", "--couplings", c,
                           "--out", s) == 0
            assert run_cli("evaluate", *rec, "--teacher", t / "teacher.pt", "--couplings", c,
                           "--student", s / "student.pt", "--out", ev) == 0
        assert run_cli("teacher", "--params", "smoke", "--out", t16, "net.width=16") == 0
        assert run_cli("couplings", "--params", "smoke", "--teacher", t16 / "teacher.pt",
                       "--out", c16) == 0
    finally:
        torch.set_num_threads(n)
    return {"teacher": t / "teacher.pt", "couplings": c, "student": s / "student.pt",
            "eval": ev, "runs": runs, "attempts": attempts,
            "teacher16": t16 / "teacher.pt", "couplings16": c16}
