"""CUDA smoke test (``pytest -m cuda``; a few minutes on one GPU): every stage at smoke size on
the device (teacher, classifier, couplings, reflow with the Hutchinson regularizer, evaluate
with fd_classifier, report), the mnist_smoke workflow through Snakemake on it, a resumed teacher
equal to an uninterrupted one, and ``device: auto`` choosing the GPU.

Skipped where torch sees no CUDA device; ``REFLOWMA_TEST_DEVICE=cpu`` runs all but the last on
the CPU (tests/conftest.py). On the GPU each stage must also have allocated CUDA memory: a
stage that quietly ran on the CPU fails.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from reflowma import cli
from reflowma.core import seeding
from reflowma.infra.storage import checkpoint
from reflowma.stages import teacher as teacher_stage

pytestmark = pytest.mark.cuda

REPO = Path(__file__).resolve().parents[2]
STAGES = ("teacher", "classifier", "couplings", "reflow", "evaluate")
POINT = "K~1/ws~1.0/lam~0.1"  # the stage test's student: the workflow's name for it
WORKFLOW_POINTS = ("K~1/ws~1.0/lam~0.0", "K~1/ws~1.0/lam~0.1")  # params/grids/mnist_smoke.yaml
TIMING = ("seconds", "seconds_per_step", "train_seconds")  # wall clock in metrics.json


def cuda_allocations() -> int:
    """CUDA allocations this process has made so far (0 without a GPU)."""
    if not torch.cuda.is_available():
        return 0
    return int(torch.cuda.memory_stats().get("allocation.all.allocated", 0))


def _fd_values(res: dict) -> dict[str, float]:
    return {f"{k} {n}": res[k][n]["fd_classifier"] for k in ("nfe", "teacher_euler")
            for n in ("1", "2")}


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _metrics_without_timing(path: Path) -> dict:
    m = json.loads(path.read_text())
    for k in TIMING:
        m["metrics"].pop(k, None)
    return m


@pytest.fixture(scope="module")
def stages(tmp_path_factory, cuda_device, smoke_preset, smoke):
    """Each stage once, in this process, on the device, recorded as the workflow names its jobs
    (so that the report reads them): return codes, seconds and CUDA allocations per stage."""
    root = tmp_path_factory.mktemp("cuda_stages")
    runs = root / "runs"
    t, c = root / "teacher" / "teacher.pt", root / "classifier" / "classifier.pt"
    cp, s = root / "couplings.h5", root / "student" / "student.pt"
    args = {
        "teacher": ["--out", t.parent],
        "classifier": ["--out", c.parent],
        "couplings": ["--teacher", t, "--out", cp],
        "reflow": ["--teacher", t, "--couplings", cp, "--out", s.parent],
        "evaluate": ["--teacher", t, "--couplings", cp, "--student", s, "--classifier", c,
                     "--out", root / "eval" / "eval.json"],
    }
    jobs = {"teacher": "teacher/mnist/seed~0", "classifier": "classifier/mnist/seed~0",
            "couplings": "couplings/mnist/seed~0", "reflow": f"reflow/mnist/seed~0/{POINT}",
            "evaluate": f"evaluate/mnist/seed~0/{POINT}"}
    out = {"root": root, "rc": {}, "seconds": {}, "allocations": {}}
    for stage in STAGES:
        before, t0 = cuda_allocations(), time.perf_counter()
        out["rc"][stage] = cli.main([stage, "--params", smoke_preset, *map(str, args[stage]),
                                     "--runs", str(runs), "--job", jobs[stage],
                                     f"device={cuda_device}", *smoke[stage]])
        out["seconds"][stage] = time.perf_counter() - t0
        out["allocations"][stage] = cuda_allocations() - before
        assert out["rc"][stage] == 0, stage  # the next stage needs this one's output
    t0 = time.perf_counter()
    out["rc"]["report"] = cli.main(["report", "--runs", str(runs), "--out", str(root / "report")])
    out["seconds"]["report"] = time.perf_counter() - t0
    print(f"stages on {cuda_device}: " + ", ".join(f"{k} {v:.1f} s"
                                                   for k, v in out["seconds"].items()))
    return out


def test_every_stage_runs_on_the_device(stages, cuda_device):
    assert stages["rc"] == dict.fromkeys((*STAGES, "report"), 0)
    recs = sorted((stages["root"] / "runs").glob("[0-9]*"), key=lambda p: int(p.name))
    assert len(recs) == len(STAGES)  # one record per stage
    for rec in recs:
        run, cfg = (json.loads((rec / f).read_text()) for f in ("run.json", "config.json"))
        assert run["status"] == "COMPLETED" and cfg["device"] == cuda_device, (rec, run["status"])
    if cuda_device.startswith("cuda"):  # the report is tables and figures: no network runs
        assert all(stages["allocations"][s] > 0 for s in STAGES), stages["allocations"]


def test_reflow_trains_with_the_hutchinson_regularizer(stages):
    m = json.loads((stages["root"] / "student" / "metrics.json").read_text())
    hist = m["history"]
    assert hist and all(math.isfinite(row["loss"]) for row in hist)
    assert any(row.get("reg", 0) != 0 for row in hist)  # the regularizer was on
    assert "window_start" in hist[-1]


def test_evaluate_reports_fd_classifier(stages):
    root = stages["root"]
    res = json.loads((root / "eval" / "eval.json").read_text())
    clf = json.loads((root / "classifier" / "metrics.json").read_text())["metrics"]
    assert res["classifier"]["test_accuracy"] == clf["test_accuracy"] > 0.2  # chance: 0.1
    fds = _fd_values(res)
    fds["floor"] = res["data_floor"]["fd_classifier"]
    assert all(math.isfinite(v) and v >= 0 for v in fds.values()), fds


def test_the_report_reads_the_records(stages):
    rep = stages["root"] / "report"
    assert (rep / "tables" / "all.md").is_file()
    metrics = json.loads((rep / "metrics.json").read_text())
    assert any(k.endswith("/fd_classifier") for k in metrics), sorted(metrics)[:10]
    assert (rep / "figures" / "images_mnist.png").is_file()


@pytest.fixture
def deterministic():
    """cuDNN and cuBLAS in their deterministic modes for one test. By default cuDNN may choose
    convolution weight-gradient algorithms that sum with atomics, in an order that changes from
    run to run: then two runs of the same steps differ in the last bits and the difference grows
    with training. torch.use_deterministic_algorithms(True) makes those kernels deterministic
    (and refuses any op that has no deterministic version); cuBLAS wants a fixed workspace."""
    old = (torch.are_deterministic_algorithms_enabled(),
           torch.is_deterministic_algorithms_warn_only_enabled(),
           torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
           os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.use_deterministic_algorithms(old[0], warn_only=old[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old[2], old[3]
    if old[4] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = old[4]


def test_a_resumed_teacher_equals_an_uninterrupted_one(tmp_path, cuda_device, smoke_preset,
                                                       smoke, deterministic, monkeypatch,
                                                       caplog):
    """The teacher signals itself (SIGTERM) during step STOP: it saves its state at the next
    step boundary and exits 143; the same command resumes and ends with the weights and logged
    history of an uninterrupted run, bit for bit (both computed here, deterministic kernels)."""
    stop = 6  # before the first periodic checkpoint (step 10): the state is the signal's
    args = ["--params", smoke_preset, f"device={cuda_device}", *smoke["teacher"]]
    plain, resumed = tmp_path / "plain", tmp_path / "resumed"
    assert cli.main(["teacher", "--out", str(plain), *args]) == 0
    fit = teacher_stage.fit

    def fit_signalled(model, loss_fn, cfg, generator, *a, **kw):
        def loss(m, step, gen):
            if step == stop:
                os.kill(os.getpid(), signal.SIGTERM)
            return loss_fn(m, step, gen)

        return fit(model, loss, cfg, generator, *a, **kw)

    monkeypatch.setattr(teacher_stage, "fit", fit_signalled)
    assert cli.main(["teacher", "--out", str(resumed), *args]) == 128 + signal.SIGTERM
    assert int(checkpoint.load(resumed / "state.pt")["step"]) == stop + 1
    assert not (resumed / "teacher.pt").exists()
    monkeypatch.setattr(teacher_stage, "fit", fit)
    caplog.set_level(logging.INFO)
    assert cli.main(["teacher", "--out", str(resumed), *args]) == 0
    assert f"resuming teacher from step {stop + 1}" in caplog.text
    a, b = _weights(plain / "teacher.pt"), _weights(resumed / "teacher.pt")
    assert a.keys() == b.keys()
    differ = {k: float((a[k].double() - b[k].double()).abs().max()) for k in a
              if not torch.equal(a[k], b[k])}
    assert not differ, f"resumed weights differ from the uninterrupted run's: {differ}"
    assert _metrics_without_timing(plain / "metrics.json") == _metrics_without_timing(
        resumed / "metrics.json")


def test_device_auto_picks_the_gpu(gpu, tmp_path, smoke_preset):
    assert seeding.device("auto") == torch.device("cuda")
    before = cuda_allocations()
    assert cli.main(["teacher", "--params", smoke_preset, "--out", str(tmp_path), "device=auto",
                     "train.steps=2", "train.warmup_steps=0"]) == 0
    assert cuda_allocations() > before  # the teacher's network and batches went to the GPU


def test_mnist_smoke_workflow_on_the_device(tmp_path, cuda_device):
    """The real workflow (Snakemake, one job per stage, each a process) with the preset's
    ``device`` set: every job's record names the device, evaluations have fd_classifier, the
    report is written."""
    preset = yaml.safe_load((REPO / "params/presets/mnist_smoke.yaml").read_text())
    preset["device"] = cuda_device
    name = f"mnist_smoke_{cuda_device.replace(':', '')}"
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(preset, sort_keys=False))
    env = dict(os.environ)  # jobs import this checkout's package, installed or not
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"),
                                                      env.get("PYTHONPATH")]))
    cores = str(min(4, os.cpu_count() or 1))
    t0 = time.perf_counter()
    res = subprocess.run(
        ["timeout", "-k", "10", "900", sys.executable, "-m", "snakemake", "--snakefile",
         str(REPO / "Snakefile"), "--directory", str(tmp_path), "--cores", cores, "--config",
         f"preset={tmp_path / name}.yaml", "grid=mnist_smoke", f"results={tmp_path}/results"],
        capture_output=True, text=True, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr[-4000:]
    print(f"mnist_smoke workflow on {cuda_device}: {time.perf_counter() - t0:.0f} s wall")
    out = tmp_path / "results" / name
    recs = [json.loads(p.read_text()) for p in (out / "runs").glob("*/config.json")]
    assert len(recs) == 7  # teacher, classifier, couplings, 2 students, 2 evaluations
    assert {r["device"] for r in recs} == {cuda_device}
    for point in WORKFLOW_POINTS:
        ev = json.loads((out / "eval/mnist/seed~0" / point / "eval.json").read_text())
        fds = _fd_values(ev)
        assert all(math.isfinite(v) and v >= 0 for v in fds.values()), (point, fds)
        print(point, {k: round(v, 3) for k, v in fds.items()})
    assert (out / "report" / "tables" / "all.md").is_file()
    assert (out / "report" / "figures" / "images_mnist.png").is_file()
