"""Every benchmark of the harness, one command: `make bench` (= `python benchmarks/run.py`;
arguments through ``make bench BENCH_ARGS="--quick --only evaluate"``).

Writes ``benchmarks/results/latest.json`` and prints a table. Every timing is min/median/max
over ``--repeats`` (>= 5) runs, and every ratio is taken against a reference measured in the
same run, interleaved with it (so load on a shared machine hits both alike):

* ``couplings``: samples/s of the project's RK4 generation against torchdiffeq's fixed-grid
  ``rk4`` at equal NFE, with both RMS errors against a tight reference (RK4, 8x the steps), and
  the fraction of the GEMM ceiling: the time of the net's matrix products alone (``torch.mm``
  on the same shapes) over the time of a full ODE step; ``net_call_fraction``: the share of our
  solve's time spent inside the network's calls (at equal NFE, the bound on any solver's
  speedup over another that calls the same network is 1 / that share).
* ``step``: ms per training step of each arm (control = TM + window-start term; + the marginal
  regularizer with each log-det mode), built by ``objectives.build`` from reflow configs at the
  preset's batch sizes (the objects training uses); d = 2 (toy), 64 (digits) and 784 (MNIST
  size, MLP). Peak CUDA memory when run on cuda.
* ``evaluate``: seconds per 1,000 samples for the sample metrics and for the marginal audit.
* ``study``: the toy study end to end (``snakemake --cores 2 --config preset=toy`` in a clone).
* ``dag``: ``snakemake -n`` for about 1,000 and 10,000 jobs (cold: configs written too).

``--only couplings,step`` runs a subset; ``--quick`` shrinks sizes for a smoke check (the
numbers are then not the ones to quote).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
OUT = REPO / "benchmarks" / "results" / "latest.json"


def summary(xs) -> dict:
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs), "n": len(xs)}


def interleaved(fns: dict, repeats: int, warmup: int = 1) -> dict:
    """Seconds per call of each function, timed in turn ``repeats`` times after a warm-up."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t0)
    return {k: summary(v) for k, v in times.items()}


# --------------------------------------------------------------------------- couplings


def _rk4_pair(net, z, steps: int):
    """(the project's RK4, torchdiffeq's fixed-grid rk4): endpoints of ``z`` over [0, 1] in
    ``steps`` steps each (equal NFE), no autograd."""
    from torchdiffeq import odeint

    from reflowma.core import solvers

    def ours():
        return solvers.solve(net, z, [0.0, 1.0], steps, "rk4")[-1]

    def ref():
        with torch.no_grad():
            return odeint(lambda t, x: net(x, t.expand(x.shape[0])), z, torch.tensor([0.0, 1.0]),
                          method="rk4", options={"step_size": 1.0 / steps})[-1]

    return ours, ref


def _net_call_fraction(net, z, steps: int, repeats: int) -> float:
    """Median over ``repeats`` RK4 solves of (seconds inside ``net`` calls) / (solve seconds)."""
    from reflowma.core import solvers

    calls, fracs = [], []

    def timed(x, t):
        t0 = time.perf_counter()
        y = net(x, t)
        calls.append(time.perf_counter() - t0)
        return y

    for _ in range(repeats):
        calls.clear()
        t0 = time.perf_counter()
        solvers.solve(timed, z, [0.0, 1.0], steps, "rk4")
        fracs.append(sum(calls) / (time.perf_counter() - t0))
    return float(sorted(fracs)[len(fracs) // 2])


def bench_couplings(args) -> dict:
    from reflowma.core import solvers
    from reflowma.models import mlp

    torch.manual_seed(0)
    width, depth, steps = 128, 3, 100
    n = 5000 if args.quick else 20000
    net = mlp.MLPVelocity((2,), width, depth).eval().requires_grad_(False)
    z = torch.randn(n, 2)
    grid = torch.linspace(0, 1, steps + 1)

    ours, ref = _rk4_pair(net, z, steps)

    hs = [z @ torch.randn(2, width)] + [torch.randn(n, width) for _ in range(depth)]
    ws = [torch.randn(width + 32, width)] + [torch.randn(width, width)] * (depth - 1) + \
        [torch.randn(width, 2)]
    xin = torch.randn(n, 2 + 32)

    def gemms():  # the matrix products of one network evaluation, nothing else
        torch.mm(xin, ws[0][: 2 + 32])
        for w, h in zip(ws[1:], hs[1:], strict=False):
            torch.mm(h, w)

    t = interleaved({"ours": ours, "torchdiffeq": ref}, args.repeats)
    t_gemm = interleaved({"gemm": gemms}, args.repeats)["gemm"]
    tight = solvers.solve(net, z, [0.0, 1.0], steps * 8, "rk4")[-1]
    rms = {k: float((f() - tight).pow(2).sum(-1).mean().sqrt()) for k, f in
           (("ours", ours), ("torchdiffeq", ref))}
    in_net = _net_call_fraction(net, z, steps, args.repeats)
    nfe = 4 * steps
    per_eval = t["ours"]["median"] / nfe
    del grid
    return {"n": n, "steps": steps, "nfe": nfe, "net": f"mlp {width}x{depth}",
            "samples_per_s": {k: n / v["median"] for k, v in t.items()},
            "seconds": t, "rms_error": rms,
            "speedup_vs_torchdiffeq": t["torchdiffeq"]["median"] / t["ours"]["median"],
            "gemm_fraction": t_gemm["median"] / per_eval,
            # the share of our solve spent inside the network's calls: at equal NFE no solver
            # sharing that network can be faster than 1 / this
            "net_call_fraction": in_net,
            "unet": _couplings_unet(args, solvers)}


def _couplings_unet(args, solvers) -> dict:
    """The MNIST preset's UNet (1x28x28): images/s of the project's RK4 against torchdiffeq's
    fixed-grid rk4 at equal NFE, RMS errors against RK4 at 4x the steps."""
    from reflowma.infra import config
    from reflowma.models import build

    net_cfg = config.stage_config("teacher", "mnist")["net"]
    torch.manual_seed(0)
    net = build((1, 28, 28), net_cfg).eval().requires_grad_(False)
    for prm in net.parameters():  # the zero-initialised output layer: a field that moves
        if not prm.any():
            prm.normal_(0.0, 0.05)
    n, steps = (16, 4) if args.quick else (128, 8)
    z = torch.randn(n, 1, 28, 28)

    ours, ref = _rk4_pair(net, z, steps)

    t = interleaved({"ours": ours, "torchdiffeq": ref}, max(3, args.repeats // 2))
    tight = solvers.solve(net, z, [0.0, 1.0], steps * 4, "rk4")[-1]
    rms = {k: float((f() - tight).pow(2).flatten(1).sum(-1).mean().sqrt()) for k, f in
           (("ours", ours), ("torchdiffeq", ref))}
    return {"n": n, "steps": steps, "nfe": 4 * steps,
            "n_params": sum(p.numel() for p in net.parameters()),
            "images_per_s": {k: n / v["median"] for k, v in t.items()}, "seconds": t,
            "rms_error": rms,
            "speedup_vs_torchdiffeq": t["torchdiffeq"]["median"] / t["ours"]["median"]}


# --------------------------------------------------------------------------- step


def bench_step(args) -> dict:
    import step_time

    from reflowma.models import mlp

    out = {}
    dims = {"d2": (2, 256, 256), "d64": (64, 256, 256), "d784": (784, 256, 128)}
    if args.quick:
        dims = {k: (d, w, 64) for k, (d, w, _) in dims.items()}
    for tag, (d, width, batch) in dims.items():
        torch.manual_seed(0)
        v = mlp.MLPVelocity((d,), width, 3)
        teacher = mlp.MLPVelocity((d,), width, 3).requires_grad_(False)
        ends = torch.randn(4096, 5, d)
        arms = ["tm+ws", "reg_trace", "reg_hutchinson"] + (["reg_exact"] if d <= 16 else [])
        steps = {}
        for arm in arms:
            cfg = step_time.arm_config(arm, 4, batch, batch)
            opt = torch.optim.Adam(v.parameters(), lr=1e-5)
            steps[arm] = step_time.make_step(cfg, v, teacher, opt, ends,
                                             torch.Generator().manual_seed(0), torch.device("cpu"))
        if d > 64:
            steps.pop("reg_trace")  # d VJPs per step: minutes at d = 784
        t = interleaved(steps, args.repeats * 2, warmup=2)
        ctrl = t["tm+ws"]["median"]
        out[tag] = {"dim": d, "batch": batch, "ms": {k: 1e3 * v_["median"] for k, v_ in t.items()},
                    "seconds": t, "ratio_to_control": {k: v_["median"] / ctrl
                                                       for k, v_ in t.items()}}
    res = {"by_dim": out}
    r = {tag: o["ratio_to_control"] for tag, o in out.items()}
    res["exact_vs_control_d2"] = r["d2"].get("reg_exact")
    res["hutchinson_vs_control_d64"] = r["d64"]["reg_hutchinson"]
    res["hutchinson_vs_control_d784"] = r["d784"]["reg_hutchinson"]
    return res


# --------------------------------------------------------------------------- evaluate


def bench_evaluate(args) -> dict:
    from reflowma.core import solvers
    from reflowma.evaluation import audit, spec
    from reflowma.infra import config
    from reflowma.models import mlp

    n = 250 if args.quick else 1000
    torch.manual_seed(0)
    teacher = mlp.MLPVelocity((2,), 128, 3).eval().requires_grad_(False)
    student = mlp.MLPVelocity((2,), 128, 3).eval().requires_grad_(False)
    cfg = config.stage_config("evaluate", "toy", ["audit.enabled=true"])
    z = torch.randn(n, 2)
    xt = solvers.solve(teacher, z, [0.0, 1.0], 32, "rk4")[-1]
    data = torch.randn(n, 2)
    grid = solvers.sample_grid(2, 2)

    def sampler(x):
        return solvers.euler_sample(student, x, grid, grad=torch.is_grad_enabled())

    def metrics():
        y = sampler(z)
        spec.sample_metrics(spec.Samples(y, z, xt, data, sampler, student, grid), cfg)

    def marginal():
        audit.marginal_audit(student, teacher, z, 2, [1, 2], cfg["audit"], teacher_samples=xt,
                             generator=torch.Generator().manual_seed(0))

    reps = max(3, args.repeats // 2) if not args.quick else 1
    t = interleaved({"metrics": metrics, "audit": marginal}, reps, warmup=0)
    scale = 1000 / n
    return {"n": n, "seconds": t, "metrics_s_per_1k": t["metrics"]["median"] * scale,
            "audit_s_per_1k": t["audit"]["median"] * scale}


# --------------------------------------------------------------------------- study, dag


def bench_study(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(REPO), str(d)], check=True)
        snakemake = str(Path(sys.executable).parent / "snakemake")
        preset = ["--config", "preset=smoke", "grid=smoke"] if args.quick else []
        env = {**os.environ, "PYTHONPATH": str(d / "src")}
        t0 = time.perf_counter()
        res = subprocess.run([snakemake, "--cores", "2", *preset], cwd=d, env=env,
                             capture_output=True, text=True)
        dt = time.perf_counter() - t0
        if res.returncode != 0:
            raise RuntimeError(res.stderr[-3000:])
    return {"preset": "smoke" if args.quick else "toy", "toy_s": dt}


def bench_dag(args) -> dict:
    import yaml
    from dag_build import dry_run, grid_for

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ref, ref_jobs = dry_run(tmp / "ref", "smoke", "smoke")
        out["reference"] = {"jobs": ref_jobs, "s": ref}
        for n in ([1000] if args.quick else [1000, 10000]):
            g = tmp / f"grid{n}.yaml"
            g.write_text(yaml.safe_dump(grid_for(n)))
            cold, jobs = dry_run(tmp / f"w{n}", str(g))
            warm, _ = dry_run(tmp / f"w{n}", str(g))
            key = "jobs_1k_s" if n == 1000 else "jobs_10k_s"
            out[key] = cold
            out[f"{key}_warm"] = warm
            out[f"jobs_{n}"] = jobs
    return out


SECTIONS = {"couplings": bench_couplings, "step": bench_step, "evaluate": bench_evaluate,
            "study": bench_study, "dag": bench_dag}
GOALS = {"couplings.speedup_vs_torchdiffeq": (">=", 1.3), "couplings.gemm_fraction": (">=", 0.8),
         "step.exact_vs_control_d2": ("<=", 1.6), "step.hutchinson_vs_control_d64": ("<=", 1.5),
         "step.hutchinson_vs_control_d784": ("<=", 1.5), "evaluate.audit_s_per_1k": ("<=", 10),
         "study.toy_s": ("<=", 90), "dag.jobs_10k_s": ("<=", 15)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke check)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    if args.repeats < 5 and not args.quick:
        ap.error("--repeats must be >= 5 (or use --quick)")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    only = args.only.split(",")
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        ap.error(f"--only: unknown section(s) {unknown}; allowed: {', '.join(SECTIONS)}")
    out = Path(args.out)
    # a subset of the sections updates those in an existing file and keeps the others (each
    # section carries its own date)
    res = (json.loads(out.read_text()) if set(only) != set(SECTIONS) and out.is_file()
           else {})
    res.update({"host": platform.node(), "cpus": os.cpu_count(), "torch": torch.__version__,
                "threads": torch.get_num_threads(), "quick": args.quick,
                "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "sections_run": only})
    for name in only:
        print(f"[bench] {name} ...", flush=True)
        t0 = time.perf_counter()
        res[name] = {**SECTIONS[name](args), "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
        print(f"[bench] {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(res, indent=2) + "\n")
    tmp.replace(out)
    print(f"\n{'key':<38} {'value':>10} {'goal':>9}  met")
    for key, (op, goal) in GOALS.items():
        sec, k = key.split(".")
        if sec not in only or res[sec].get(k) is None:  # this run's sections only
            continue
        v = res[sec][k]
        ok = v >= goal if op == ">=" else v <= goal
        print(f"{key:<38} {v:>10.3f} {op}{goal:>7}  {'yes' if ok else 'NO'}")
    if "couplings" in only:  # no goal: what bounds the solver's speedup at equal NFE
        print(f"{'couplings.net_call_fraction':<38} {res['couplings']['net_call_fraction']:>10.3f}")
    unet = res.get("couplings", {}).get("unet") if "couplings" in only else None
    if unet:  # no goal: reported next to the MLP's
        print(f"{'couplings.unet.speedup_vs_torchdiffeq':<38} "
              f"{unet['speedup_vs_torchdiffeq']:>10.3f}  ({unet['images_per_s']['ours']:.0f} "
              f"images/s, {unet['n_params']:,} params)")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
