"""`make bench` runs benchmarks/run.py; its cheapest section, at --quick size, writes the JSON
it promises (to --out only) and prints the goal table from the same numbers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "benchmarks" / "run.py"


def bench(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    # one thread and a lower priority: a benchmark must not take a shared machine's cores
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["nice", "-n", "10", sys.executable, str(RUN), *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)


def test_make_bench_runs_run_py():
    # not as a sub-make of `make test`: its flags would add "Entering directory" lines
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    res = subprocess.run(["make", "--no-print-directory", "-n", "bench", "BIN=BIN", "-o",
                          "BIN/reflowma"], cwd=REPO, capture_output=True, text=True,
                         timeout=30, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["BIN/python", "benchmarks/run.py"]


@pytest.mark.slow  # a benchmark section end to end: `make test-slow`, `make bench`
def test_quick_evaluate_section(tmp_path):
    out = tmp_path / "bench.json"
    # a subset updates its sections of an existing file and keeps the others
    out.write_text(json.dumps({"dag": {"jobs_10k_s": 12.5}, "evaluate": {"stale": True}}))
    before = {p: p.stat().st_mtime_ns for p in (REPO / "benchmarks" / "results").glob("*")}
    res = bench("--quick", "--only", "evaluate", "--repeats", "1", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    after = {p: p.stat().st_mtime_ns for p in (REPO / "benchmarks" / "results").glob("*")}
    assert after == before  # nothing written next to the committed results

    r = json.loads(out.read_text())
    assert r["quick"] is True and r["threads"] == 1
    assert set(r) - {"host", "cpus", "torch", "threads", "quick", "date", "sections_run"} == {
        "evaluate", "dag"}
    assert r["sections_run"] == ["evaluate"] and r["dag"] == {"jobs_10k_s": 12.5}
    ev = r["evaluate"]
    assert "stale" not in ev and ev["date"] >= r["date"]  # stamped when the section ends
    assert ev["n"] == 250  # --quick size
    for k in ("metrics", "audit"):
        s = ev["seconds"][k]
        assert s["n"] == 1 and 0 < s["min"] == s["median"] == s["max"]
        # seconds per 1,000 samples: the median over n = 250 samples, times 4
        assert abs(ev[f"{k}_s_per_1k"] - 4 * s["median"]) <= 1e-12 * ev[f"{k}_s_per_1k"]

    rows = [line.split() for line in res.stdout.splitlines()]
    (row,) = [w for w in rows if w and w[0] == "evaluate.audit_s_per_1k"]
    assert float(row[1]) == round(ev["audit_s_per_1k"], 3)
    assert row[-1] == ("yes" if ev["audit_s_per_1k"] <= 10 else "NO")
    assert not any(w and w[0].startswith(("couplings.", "step.", "study.", "dag.")) for w in rows)
    assert res.stdout.rstrip().endswith(f"-> {out}")



@pytest.mark.slow  # a benchmark section end to end: `make test-slow`, `make bench`
def test_quick_step_section_reads_the_training_configs(tmp_path):
    """The step section times the arms on the nets and batch sizes the presets train with
    (alignment batch from params; --quick shrinks the batches only), each ratio against the
    control timed in the same rotation, with the regularizer's parts and saved memory."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from run import STEP_CASES

    from reflowma.infra import config

    out = tmp_path / "bench.json"
    res = bench("--quick", "--only", "step", "--repeats", "1", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    st = json.loads(out.read_text())["step"]
    for tag, preset, shape, modes in STEP_CASES:
        o = st["by_dim"][tag]
        assert o["dim"] == math.prod(shape)
        cfg = config.stage_config("reflow", preset)
        assert (o["net"], o["params_batch"], o["params_reg_batch"]) == (
            cfg["net"]["name"], cfg["train"]["batch_size"], cfg["regularizer"]["batch_size"])
        assert (o["batch"], o["reg_batch"]) == (32, 16)  # --quick
        assert set(o["ms"]) == {"tm+ws", *(f"{a}_{m}" for a in ("reg", "shared") for m in modes)}
        for arm, r in o["ratio_to_control"].items():
            assert r > 0 and (arm != "tm+ws" or r == 1.0)
            assert o["autograd_saved_mb"][arm] > 0
        # the regularizer saves more for its backward than the control alone
        assert o["autograd_saved_mb"][o["parts_ms"]["arm"]] > o["autograd_saved_mb"]["tm+ws"]
        assert 0 < o["parts_ms"]["score"] < o["parts_ms"]["forward"]
    assert st["exact_vs_control_d2"] == st["by_dim"]["d2"]["ratio_to_control"]["reg_exact"]
    assert st["hutchinson_vs_control_d784"] == \
        st["by_dim"]["d784"]["ratio_to_control"]["reg_hutchinson"]
    # the shared arms: their ratios under step.shared, with the work bound that drops the
    # window-start batch (lower than the arm's own without sharing)
    for tag, arm in (("d2", "exact"), ("d64", "hutchinson"), ("d784", "hutchinson")):
        assert st["shared"][f"{arm}_vs_control_{tag}"] == \
            st["by_dim"][tag]["ratio_to_control"][f"shared_{arm}"]
    wb = st["by_dim"]["d2"]["work_bound"]
    assert wb["shared_exact"] < wb["reg_exact"]
    assert abs(wb["reg_exact"] - wb["shared_exact"] - 0.5) < 1e-12  # 3B of the 6B
    lines = res.stdout.splitlines()
    assert any(w.startswith("step.hutchinson_vs_control_d64") for w in lines)
    assert any(w.startswith("step.shared.exact_vs_control_d2") for w in lines)


def test_reference_solve_steps_onto_every_stored_time():
    """torchdiffeq's rk4 is Kutta's 3/8 rule, the project's ``rk38``: on the same uniform grid
    the two are one computation, so at step counts whose step size does not divide the window
    ends (10 per unit: 2 or 3 steps per quarter) the reference agrees with ``rk38`` to float32
    rounding (a few ulp per step on states of order 1: 1e-5 is well above it), and its NFE
    counts the steps that grid takes. Interpolating between steps instead would be off by
    the state's curvature times h^2 ~ 1e-2 here."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import couplings_nfe as cn
    import torch

    from reflowma.core import solvers, time_grids

    def net(x, t):  # a curved flow: its states between steps are far from linear in t
        return torch.stack([torch.cos(6 * t) * 3 + x[:, 1], -x[:, 0]], 1)

    times = [0.0, 0.25, 0.5, 0.75, 1.0]
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    for steps in (10, 14):
        states, nfe = cn.solve_reference(net, z, times, steps)
        ours = solvers.solve(net, z, times, steps, "rk38")
        assert torch.allclose(states, ours, atol=1e-5, rtol=0), steps
        assert nfe == 4 * time_grids.n_steps(time_grids.uniform(times, steps))


def test_equal_error_target_stays_above_the_reference_floor():
    """A small random MLP flow at 48 steps: torchdiffeq's error already sits at its floor
    (rounding, its own time grid: every point of its curve within a few percent of ~1e-6), so
    the reference's own error is no target the reference itself keeps with more steps. The
    target is then twice the floor, the reference's robust NFE exists, and every saving is a
    number or None, never a crash."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import couplings_nfe as cn
    import torch

    torch.manual_seed(0)
    f = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2))

    def net(x, t):
        return f(torch.cat([x, t[:, None]], 1))

    with torch.no_grad():
        res = cn.curves(net, torch.randn(256, 2), None, [4, 16, 64], 48, [2, 3])
    ref = res["reference_point"]
    errors = [p["error"] for p in res["curves"][cn.REFERENCE]]
    assert ref["floor"] == min(errors) > 0
    assert ref["target"] == max(ref["error"], 2 * ref["floor"])
    assert ref["target"] >= max(errors)  # all at the floor: the whole curve is below target
    assert ref["robust_nfe"] == min(p["nfe"] for p in res["curves"][cn.REFERENCE])
    for eq in res["equal_error"].values():
        # the saving is against the reference at its default steps, never its robust NFE
        assert eq["nfe_saving"] == (4 * 48 / eq["nfe"] if eq["nfe"] else None)


@pytest.mark.slow  # trains a toy teacher and a small mnist UNet: minutes on 2 cores
def test_quick_couplings_section(tmp_path):
    """The couplings section: curves of every option on the two trained teachers, the
    equal-error savings recomputed from those curves, the headline option timed against the
    reference, and the figure written next to --out (nothing next to the committed results)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import couplings_nfe as cn
    from run import HEADLINE

    out = tmp_path / "bench.json"
    res = bench("--quick", "--only", "couplings", "--repeats", "1", "--out", str(out),
                timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    c = json.loads(out.read_text())["couplings"]
    assert (tmp_path / "couplings_nfe.png").stat().st_size > 10_000
    assert c["figure"] == "couplings_nfe.png"  # named relative to the output file
    for teacher in ("toy", "mnist_unet"):
        cur = c["nfe"][teacher]
        assert set(cur["curves"]) == {cn.REFERENCE, *cn.OPTIONS}
        ref = cur["reference_point"]
        assert ref["robust_nfe"] == cn.robust_nfe(cur["curves"][cn.REFERENCE], ref["target"])
        for name, eq in cur["equal_error"].items():
            n = cn.robust_nfe(cur["curves"][name], ref["target"])
            assert eq["nfe"] == n
            # against what a user runs today: the reference at its default steps
            assert eq["nfe_saving"] == (ref["nfe"] / n if n else None)
    assert c["nfe_saving_at_equal_error"] == c["nfe"]["toy"]["equal_error"][HEADLINE][
        "nfe_saving"]
    for k in ("speedup_vs_torchdiffeq", "equal_nfe_time_ratio", "whole_batch_time_ratio",
              "mlp_fast_path_gain", "gemm_fraction", "net_call_fraction"):
        assert c[k] > 0, k
    assert c["unet"]["equal_nfe_time_ratio"] > 0
    # the same toy teacher with a smooth time embedding: its reference's NFE at the default
    # teacher's target, recomputed from its curve, and both teachers' fit to the data
    te = c["time_embedding"]
    smooth_ref = c["nfe"]["toy_smooth_time"]["curves"][cn.REFERENCE]
    n = cn.robust_nfe(smooth_ref, c["nfe"]["toy"]["reference_point"]["target"])
    assert te["reference_nfe_at_default_error"] == n
    assert te["nfe_saving_at_equal_error"] == (c["nfe"]["toy"]["reference_point"]["nfe"] / n
                                               if n else None)
    assert te["max_freq"] == {"default": 1000.0, "smooth": 16.0}
    assert all(v > 0 for v in te["teacher_w2_data"].values())
    # the project's rk38 and torchdiffeq's rk4 share a tableau: the same endpoints to rounding
    assert abs(c["endpoint_rms_error"]["rk38"] - c["endpoint_rms_error"]["reference"]) <= \
        1e-3 * c["endpoint_rms_error"]["reference"] + 1e-6
    lines = [w.split() for w in res.stdout.splitlines()]
    assert any(w and w[0] == "couplings.nfe_saving_at_equal_error" for w in lines)

