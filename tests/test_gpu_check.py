"""benchmarks/gpu_check.sh at toy size on the CPU (``DEVICE=cpu``): the JSON it promises and
the goal table printed from the same numbers; the projection model of
benchmarks/gpu_projection.py against closed forms; the mnist_gpu preset and grid (valid, the
915k UNet, the jobs the workflow plans, and the projection the preset was sized by)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from reflowma import models
from reflowma.infra import config
from reflowma.infra import grid as rgrid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_bench  # noqa: E402
import gpu_projection as gp  # noqa: E402

# --- the projection model -------------------------------------------------------------------


def _job(name, gpu, cpu=0.0, deps=(), threads=1):
    return gp.Job(name, "x", gpu, cpu, list(deps), threads)


def test_independent_jobs_run_side_by_side_up_to_the_saturation():
    """4 jobs of 10 s of GPU work: with room for all and a GPU that serves 4 at full speed,
    10 s; serving 1 at a time (processor sharing), 40 s; serving 2, 20 s."""
    jobs = [_job(f"j{i}", 10.0) for i in range(4)]
    assert gp.makespan(jobs, cores=4, saturation=4) == pytest.approx(10.0)
    assert gp.makespan(jobs, cores=4, saturation=1) == pytest.approx(40.0)
    assert gp.makespan(jobs, cores=4, saturation=2) == pytest.approx(20.0)


def test_cores_limit_the_jobs_running_at_once():
    """2 cores, jobs of 2 threads: one after another (3 x 10 s), whatever the GPU."""
    jobs = [_job(f"j{i}", 10.0, threads=2) for i in range(3)]
    assert gp.makespan(jobs, cores=2, saturation=8) == pytest.approx(30.0)


def test_a_chain_adds_up_and_cpu_phases_are_not_shared():
    """A chain: start-up and GPU work in sequence (the critical path). Two jobs whose 5 s of
    start-up overlap and whose GPU work is shared by a GPU serving one: 5 + 2 x 10 s."""
    chain = [_job("a", 10.0, 2.0), _job("b", 5.0, 1.0, ["a"]), _job("c", 1.0, 0.5, ["b"])]
    assert gp.makespan(chain, cores=8, saturation=1) == pytest.approx(19.5)
    assert gp.critical_path(chain) == pytest.approx(19.5)
    pair = [_job("a", 10.0, 5.0), _job("b", 10.0, 5.0)]
    assert gp.makespan(pair, cores=2, saturation=1) == pytest.approx(25.0)


def test_bad_plans_are_refused():
    with pytest.raises(ValueError, match="unknown"):
        gp.makespan([_job("a", 1.0, deps=["z"])], cores=1, saturation=1)
    with pytest.raises(ValueError, match="cores"):
        gp.makespan([_job("a", 1.0, threads=4)], cores=2, saturation=1)


def _mnist_gpu_jobs(rates, steps=None):
    pre = rgrid.load_preset("mnist_gpu")
    if steps:
        pre["stages"]["teacher"]["train"]["steps"] = steps[0]
        pre["stages"]["reflow"]["train"]["steps"] = steps[1]
    g = rgrid.load_grid("mnist_gpu")
    cfgs = rgrid.stage_configs(pre, g, rgrid.expand(g))
    return cfgs, gp.jobs(cfgs, lambda rule: rgrid.rule_resources(pre, rule), rates)


def test_job_work_follows_the_configs():
    """Each job's GPU work is its configuration's count times the rate: the couplings' RK4
    solve over the union grid of K in {1, 2} is 4 x 32 evaluations per pair; a regularized
    student pays the control's step for its warm start and the regularizer's after."""
    r = gp.Rates(teacher_step_s=0.01, control_step_s=0.02, hutchinson_step_s=0.05,
                 classifier_step_s=0.001, nfe_per_s=1000.0)
    cfgs, jobs = _mnist_gpu_jobs(r)
    by = {j.name: j for j in jobs}
    cp = cfgs[("couplings", ("mnist", 0))]
    assert gp.couplings_nfe(cp) == 4 * 32
    assert by["couplings/mnist/0"].gpu_s == pytest.approx(
        (cp["n_train"] + cp["n_test"]) * 128 / 1000.0)
    (reg,) = [j for j in jobs if j.rule == "reflow" and "lam~0.1" in j.name and "K~1" in j.name
              and j.seed == 0]
    rcfg = cfgs[("reflow", ("mnist", 0, reg.name.split("/", 3)[3]))]
    w = rcfg["regularizer"]["warm_start"]
    assert reg.gpu_s == pytest.approx(rcfg["train"]["steps"] * (w * 0.02 + (1 - w) * 0.05))
    ev = cfgs[("evaluate", ("mnist", 0))]
    e = [j for j in jobs if j.rule == "evaluate"][0]
    want = ev["n_samples"] * (2 * sum(ev["nfe"]) + 4 * ev["teacher_steps"]) + cp["n_test"] * 8
    assert e.gpu_s == pytest.approx(want / 1000.0)
    assert {"teacher/mnist/0", "classifier/mnist/0"} <= set(e.deps)
    assert by["report"].deps == [j.name for j in jobs if j.rule == "evaluate"]


# --- the mnist_gpu preset and grid ----------------------------------------------------------


def _train_gflop(cfg):
    with torch.device("meta"):
        net = models.build((1, 28, 28), cfg["net"])
        x, t = torch.randn(2, 1, 28, 28), torch.rand(2)
    with FlopCounterMode(display=False) as fc:
        net(x, t).sum().backward()
    return models.n_params(net), fc.get_total_flops() / 2e9


def test_mnist_gpu_preset_is_the_915k_unet_and_fits_its_projection():
    """The preset validates for every stage; its net is the 915,169-parameter UNet; at the
    rates it was sized by (the 280k mnist UNet's H200 figures scaled by the FLOPs ratio of the
    two nets, counted here, and the assumptions of gpu_projection.ASSUMED), the projected
    wall time of the whole grid on 16 cores is at most 10 minutes, and the full-length study
    (20,000 / 5,000 steps) is not."""
    for stage in config.STAGES:
        config.stage_config(stage, "mnist_gpu")
    n_gpu, f_gpu = _train_gflop(config.stage_config("teacher", "mnist_gpu"))
    n_cpu, f_cpu = _train_gflop(config.stage_config("teacher", "mnist"))
    assert (n_gpu, n_cpu) == (915_169, 280_177)
    ratio = f_gpu / f_cpu
    assert 3.2 < ratio < 3.3
    r = gp.scaled_rates(ratio)
    _, jobs = _mnist_gpu_jobs(r)
    minutes = gp.makespan(jobs, 16, r.saturation) / 60
    assert minutes <= 10.0
    _, full = _mnist_gpu_jobs(r, (20000, 5000))
    assert gp.makespan(full, 16, r.saturation) / 60 > 10.0
    text = (REPO / "params" / "presets" / "mnist_gpu.yaml").read_text()
    assert f"Projected: {minutes:.1f} min" in text  # the comment states this projection


def test_mnist_gpu_workflow_plans_the_study(tmp_path):
    """`snakemake -n` plans per seed a teacher, a classifier, couplings, 4 students and 4
    evaluations, for 5 seeds, and one report."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    res = subprocess.run(["snakemake", "-n", "--quiet", "rules", "--config", "preset=mnist_gpu",
                          "grid=mnist_gpu", f"results={tmp_path / 'results'}"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    counts = {}
    for line in (res.stdout + res.stderr).split("Job stats:")[1].splitlines()[3:]:
        words = line.split()
        if len(words) == 2 and words[1].isdigit():
            counts[words[0]] = int(words[1])
        elif counts:
            break
    assert {k: counts.get(k) for k in ("teacher", "classifier", "couplings", "reflow",
                                       "evaluate", "report")} == {
        "teacher": 5, "classifier": 5, "couplings": 5, "reflow": 20, "evaluate": 20,
        "report": 1}
    assert not (tmp_path / "results").exists()


# --- gpu_check.sh at toy size ---------------------------------------------------------------


@pytest.fixture(scope="module")
def cpu_check(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpu_check")
    before = {p: p.stat().st_mtime_ns for p in (REPO / "benchmarks" / "results").glob("*")}
    env = {**os.environ, "DEVICE": "cpu", "PY": sys.executable, "RESULTS_DIR": str(d),
           "OMP_NUM_THREADS": "1", "BUDGET_S": "900"}
    env.pop("OUT", None)
    res = subprocess.run(["nice", "-n", "10", "bash", "benchmarks/gpu_check.sh"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=1200)
    after = {p: p.stat().st_mtime_ns for p in (REPO / "benchmarks" / "results").glob("*")}
    assert after == before  # nothing written next to the committed results
    return d, res


def test_cpu_run_writes_the_json_it_promises(cpu_check):
    d, res = cpu_check
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    r = json.loads((d / "gpu_cpu.json").read_text())
    assert r["device"] == "cpu" and r["device_type"] == "cpu"
    for name in ("env", "teacher_eager", "reflow", "couplings_eager", "mnist_gpu",
                 "concurrency"):
        assert r["sections"][name]["status"] == "ok", (name, r["sections"][name])
    for name in ("teacher_combined", "couplings_compiled", "teacher_compile_alone",
                 "couplings_compiled_fp32"):
        assert r["sections"][name]["status"].startswith("skipped: compilation")
    t = r["teacher"]
    plain = t["plain"]["images_per_s"]
    assert set(t["levers"]) == {"fused_optimizer", "data_on_device", "bf16", "channels_last",
                                "batch_16", "eager_best"}
    for name, row in t["levers"].items():
        if name in ("bf16", "eager_best"):
            assert row == {"skipped": "bf16 autocast needs CUDA"}
        else:
            assert row["speedup_vs_plain"] == pytest.approx(row["images_per_s"] / plain)
            assert row["images_per_s"] == pytest.approx(row["batch"] / row["seconds_per_step"])
    measured = {k: v["images_per_s"] for k, v in t["levers"].items()
                if "images_per_s" in v and v["batch"] == t["plain"]["batch"]}
    assert t["images_per_s"] == max([plain, *measured.values()])
    flops = r["flops"]["cifar10"]["train_gflop_per_image"]
    assert t["mfu"] == pytest.approx(t["images_per_s"] * flops * 1e9
                                     / (r["peak_bf16_tflops"] * 1e12))
    assert t["bf16_speedup"] is None  # bf16 needs CUDA
    rf = r["reflow"]
    assert rf["hutchinson_vs_control"] == pytest.approx(
        rf["hutchinson"]["seconds_per_step"] / rf["control"]["seconds_per_step"])
    c = r["couplings"]
    assert c["images_per_s"] == c["variants"]["fp32"]["images_per_s"] > 0
    assert c["variants"]["bf16"] == {"skipped": "bf16 autocast needs CUDA"}
    g = r["cifar10_grid"]
    assert r["cifar10_grid_hours"] == g["hours"] > 0
    assert g["hours"] == pytest.approx(sum(g["hours_by_stage"].values()))
    assert "one seed" in g["formula"]
    m = r["mnist_gpu"]
    assert r["mnist_gpu_minutes"] == m["minutes"] > 0 and m["jobs"] == 56
    assert m["full_length_minutes"] > m["minutes"]
    assert m["saturation_measured"] and 1 <= m["rates"]["saturation"] <= 2
    assert r["concurrency"]["workers"] == r["concurrency"]["finished"] == 2


def test_cpu_run_prints_the_goal_table_from_the_json(cpu_check):
    d, res = cpu_check
    r = json.loads((d / "gpu_cpu.json").read_text())
    rows = {line.split()[0]: line.split() for line in res.stdout.splitlines() if line.strip()}
    assert [g["key"] for g in r["goals"]] == [k for k, _, _ in gpu_bench.GOALS]
    for g in r["goals"]:
        words = rows[g["key"]]
        op = ">=" if g["kind"] == "min" else "<="
        assert words[1] == op + format(g["goal"], "g")
        if g["measured"] is None:
            assert words[2:] == ["n/a", "n/a"]
        else:
            assert float(words[2]) == pytest.approx(g["measured"], rel=1e-3)
            met = g["measured"] >= g["goal"] if g["kind"] == "min" else \
                g["measured"] <= g["goal"]
            assert words[3] == ("yes" if met else "NO") and g["met"] == met
    log = list(d.glob("gpu_check_cpu_*/gpu_check.log"))
    assert len(log) == 1 and "== 1. benchmark" in log[0].read_text()
    assert (log[0].parent / "gpu_cpu.json").exists()


def test_slug():
    assert gpu_bench.slug("NVIDIA H200") == "nvidia_h200"
    assert gpu_bench.slug("NVIDIA A100-SXM4-80GB") == "nvidia_a100_sxm4_80gb"
