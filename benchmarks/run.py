"""Every benchmark of the harness, one command: `make bench` (= `python benchmarks/run.py`;
arguments through ``make bench BENCH_ARGS="--quick --only evaluate"``).

Writes ``benchmarks/results/latest.json`` and prints a table. Every timing is min/median/max
over ``--repeats`` (>= 5) runs, and every ratio is taken against a reference measured in the
same run, interleaved with it (so load on a shared machine hits both alike):

* ``couplings``: samples/s of the project's RK4 generation (solved ``chunk_size`` rows at a
  time, as the couplings stage does) against torchdiffeq's fixed-grid ``rk4`` on the whole
  batch, at equal NFE and at equal RMS error against a tight reference (RK4, 8x the steps);
  torchdiffeq with the same chunks too; the fraction of the GEMM ceiling: the time of the
  net's matrix products alone (``torch.mm`` on the same shapes, preallocated outputs) over
  the time of a network evaluation inside the solve; ``net_call_fraction``: the share of our
  solve's time spent inside the network's calls (at equal NFE and batching, the bound on any
  solver's speedup over another that calls the same network is 1 / that share).
* ``step``: ms per training step of each arm (control = TM + window-start term; + the marginal
  regularizer with each log-det mode), built by ``objectives.build`` from the reflow configs
  that training reads (the objects training uses), at their net and batch sizes (alignment
  batch from params): d = 2 (the toy preset: MLP, exact log-det), 64 (the defaults: MLP) and
  784 (the mnist preset: its UNet, Hutchinson), K = 2; ``parts_ms``: the regularizer term's
  forward alone and the teacher's score alone, so the extra cost splits into forward, score
  and backward; ``work_bound`` (MLP): the ratio the matrix products alone imply (the
  regularizer's rows with their tangents against the control's); memory: the MB autograd
  saves for the backward in one step of each arm.
* ``evaluate``: seconds per 1,000 samples for the sample metrics and for the marginal audit.
* ``study``: the toy study end to end (``snakemake --cores 2 --config preset=toy`` in a clone).
* ``dag``: ``snakemake -n`` for about 1,000 and 10,000 jobs (cold: configs written too), and
  the floor: the same on a bare Snakefile with as many jobs of the same shape (Snakemake's own
  cost, which no change to the workflow removes).

``--only couplings,step`` runs a subset; ``--quick`` shrinks sizes for a smoke check (the
numbers are then not the ones to quote).
"""

from __future__ import annotations

import argparse
import json
import math
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


def _rk4_pair(net, z, steps: int, chunk: int | None = None, ref_chunk: int | None = None,
              method: str = "rk4"):
    """(the project's ``method``, torchdiffeq's fixed-grid rk4): endpoints of ``z`` over [0, 1]
    in ``steps`` steps each (equal NFE), no autograd; ``chunk`` / ``ref_chunk`` rows at a time
    (None: the whole batch in one solve)."""
    from torchdiffeq import odeint

    from reflowma.core import solvers

    def blocks(c):
        return z.split(c) if c else (z,)

    def ours():
        return torch.cat([solvers.solve(net, b, [0.0, 1.0], steps, method)[-1]
                          for b in blocks(chunk)])

    def ref():
        with torch.no_grad():
            return torch.cat([odeint(lambda t, x: net(x, t.expand(x.shape[0])), b,
                                     torch.tensor([0.0, 1.0]), method="rk4",
                                     options={"step_size": 1.0 / steps})[-1]
                              for b in blocks(ref_chunk)])

    return ours, ref


def _net_call_fraction(net, z, steps: int, repeats: int, chunk: int) -> float:
    """Median over ``repeats`` chunked rk38 solves of (seconds inside ``net``) / (solve seconds)."""
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
        for b in z.split(chunk):
            solvers.solve(timed, b, [0.0, 1.0], steps, "rk38")
        fracs.append(sum(calls) / (time.perf_counter() - t0))
    return float(sorted(fracs)[len(fracs) // 2])


def _rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).flatten(1).sum(-1).mean().sqrt())


def bench_couplings(args) -> dict:
    """The MLP (2D toy teacher's shape): the project's generation as the couplings stage runs
    it (``chunk_size`` rows per solve, the defaults' value) against torchdiffeq's ``rk4`` on
    the whole batch (how one calls ``odeint``). torchdiffeq's ``rk4`` is Kutta's 3/8 rule, so
    the project's ``rk38`` (the same tableau) is the comparison at equal NFE *and* equal error
    (the headline); the classic ``rk4`` (the couplings default) is about twice as far from
    the tight reference per step here, so it is compared at equal NFE and at equal error (its
    step count raised until its error is at most torchdiffeq's). torchdiffeq with the same
    chunks too: what the solvers themselves add, apart from the batching."""
    from reflowma.core import solvers
    from reflowma.infra import config
    from reflowma.models import mlp

    torch.manual_seed(0)
    width, depth, steps = 128, 3, 100
    n = 5000 if args.quick else 20000
    chunk = config.stage_config("couplings")["chunk_size"]
    net = mlp.MLPVelocity((2,), width, depth).eval().requires_grad_(False)
    z = torch.randn(n, 2)

    ours, ref = _rk4_pair(net, z, steps, chunk, method="rk38")
    classic = _rk4_pair(net, z, steps, chunk)[0]
    ref_same = _rk4_pair(net, z, steps, chunk, chunk)[1]

    # the GEMM ceiling: the matrix products of one network evaluation on the shapes the net
    # multiplies (first layer: the 2 data inputs, its time part folded into the bias), chunk
    # by chunk as the solve runs, into preallocated outputs: nothing but the products
    rows = [b.shape[0] for b in z.split(chunk)]
    lins = list(net.net)[::2]
    ws = [lins[0].weight[:, :2].t()] + [lin.weight.t() for lin in lins[1:]]  # the net's own
    ins = [[torch.randn(r, w.shape[0]) for w in ws] for r in rows]
    outs = [[torch.empty(r, w.shape[1]) for w in ws] for r in rows]

    def gemms():
        for xs, ys in zip(ins, outs, strict=True):
            for x_, w, y_ in zip(xs, ws, ys, strict=True):
                torch.mm(x_, w, out=y_)

    def activations():  # the other big part: one in-place activation per hidden layer
        for ys in outs:
            for y_ in ys[:-1]:
                mlp.IN_PLACE[net.activation](y_)

    t = interleaved({"ours": ours, "ours_rk4": classic, "torchdiffeq": ref,
                     "torchdiffeq_same_chunks": ref_same}, args.repeats)
    t_parts = interleaved({"gemm": gemms, "activations": activations}, args.repeats)
    t_gemm = t_parts["gemm"]
    tight = solvers.solve(net, z, [0.0, 1.0], steps * 8, "rk4")[-1]
    rms = {"ours": _rms(ours(), tight), "ours_rk4": _rms(classic(), tight),
           "torchdiffeq": _rms(ref(), tight)}
    # classic rk4 at equal error: the fewest steps (from the h^4 estimate up, 5 % at a time)
    # at which its error is no larger than torchdiffeq's at `steps`
    eq = math.ceil(steps * (rms["ours_rk4"] / rms["torchdiffeq"]) ** 0.25)
    while True:
        classic_eq = _rk4_pair(net, z, eq, chunk)[0]
        rms["ours_rk4_equal_error"] = _rms(classic_eq(), tight)
        if rms["ours_rk4_equal_error"] <= rms["torchdiffeq"]:
            break
        eq = math.ceil(eq * 1.05)
    t_eq = interleaved({"ours_rk4": classic_eq, "torchdiffeq": ref}, args.repeats)
    in_net = _net_call_fraction(net, z, steps, args.repeats, chunk)
    nfe = 4 * steps
    per_eval = t["ours"]["median"] / nfe
    td = t["torchdiffeq"]["median"]
    return {"n": n, "steps": steps, "nfe": nfe, "chunk_size": chunk, "net": f"mlp {width}x{depth}",
            "solver": "rk38", "samples_per_s": {k: n / v["median"] for k, v in t.items()},
            "seconds": t, "rms_error": rms,
            "speedup_vs_torchdiffeq": td / t["ours"]["median"],
            "speedup_vs_torchdiffeq_same_chunks":
                t["torchdiffeq_same_chunks"]["median"] / t["ours"]["median"],
            "rk4": {"speedup_vs_torchdiffeq_equal_nfe": td / t["ours_rk4"]["median"],
                    "equal_error_steps": eq, "equal_error_seconds": t_eq,
                    "speedup_vs_torchdiffeq_equal_error":
                        t_eq["torchdiffeq"]["median"] / t_eq["ours_rk4"]["median"]},
            "gemm_fraction": t_gemm["median"] / per_eval,
            "activation_fraction": t_parts["activations"]["median"] / per_eval,
            # the share of our solve spent inside the network's calls: at equal NFE and equal
            # batching no solver sharing that network can be faster than 1 / this
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


# (tag, preset, data shape, log-det modes timed): the training configuration of each size is
# the preset's reflow config (net, train.batch_size, regularizer.batch_size); d = 64 (the flat
# digits) has no preset and takes the defaults.
STEP_CASES = (("d2", "toy", (2,), ("exact", "trace", "hutchinson")),
              ("d64", None, (64,), ("trace", "hutchinson")),
              ("d784", "mnist", (1, 28, 28), ("hutchinson",)))


def _reg_parts(cfg: dict, v, teacher, ends, repeats: int) -> dict:
    """Seconds of the regularizer term's forward alone (the surrogate: the student's pass with
    its tangents or VJPs, and the teacher's score) and of the teacher's score alone, at the
    alignment batch: with the step times, the share of the extra cost in each part."""
    from reflowma import objectives

    ctx = objectives.Context(ends, cfg["K"], torch.device("cpu"), teacher, cfg["train"]["steps"])
    term = next(t for t in objectives.build(cfg, ctx).terms if t.key == "reg")
    gen = torch.Generator().manual_seed(0)
    n = cfg["regularizer"]["batch_size"]
    y, tk = ends[:n, 1], torch.full((n,), 1.0 / cfg["K"])

    def forward():
        term.loss(v, gen)

    def score():
        with torch.no_grad():
            term.score(y, tk)

    t = interleaved({"forward": forward, "score": score}, repeats, warmup=2)
    return {k: 1e3 * x["median"] for k, x in t.items()}


def _work_bound(cfg: dict, d: int) -> float:
    """The step-time ratio to the control that the MLP's matrix products alone imply: rows
    through the hidden layers, a backward counted as two forwards. Control: TM and window-start
    batches, ``3 * 2B``; the regularizer adds its batch with its tangents (d for exact and
    trace, one per probe for Hutchinson), forward and backward, ``3 (1 + n) B_reg``, and the
    frozen teacher's score, forward only, ``B_reg``."""
    B, reg = cfg["train"]["batch_size"], cfg["regularizer"]
    n = reg["n_probes"] if reg["logdet"] == "hutchinson" else d
    return 1 + (3 * (1 + n) * reg["batch_size"] + reg["batch_size"]) / (3 * 2 * B)


def saved_mb(step) -> float:
    """MB of the tensors autograd saves for the backward during one call of ``step`` (the
    activations a training step holds at its peak; each save counted, views included)."""
    total = [0]

    def pack(x):
        total[0] += x.numel() * x.element_size()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        step()
    return total[0] / 2**20


def bench_step(args) -> dict:
    import step_time

    from reflowma.infra import config
    from reflowma.models import build

    out = {}
    for tag, preset, shape, modes in STEP_CASES:
        base = config.stage_config("reflow", preset)
        over = {"K": 2}
        if args.quick:
            over.update({"train.batch_size": 32, "regularizer.batch_size": 16})
        torch.manual_seed(0)
        v = build(shape, base["net"])
        teacher = build(shape, base["net"]).requires_grad_(False)
        ends = torch.randn(1024, over["K"] + 1, *shape)
        steps, cfgs = {}, {}
        for arm in ["tm+ws"] + [f"reg_{m}" for m in modes]:
            cfg = config.stage_config("reflow", preset, [
                f"{k}={v_}" for k, v_ in {**over, **step_time.ARMS[arm],
                                          "regularizer.warm_start": 0.0,
                                          "regularizer.exact_max_dim": 10**6}.items()])
            opt = torch.optim.Adam(v.parameters(), lr=1e-5)
            cfgs[arm] = cfg
            steps[arm] = step_time.make_step(cfg, v, teacher, opt, ends,
                                             torch.Generator().manual_seed(0), torch.device("cpu"))
        reps = args.repeats * 2 if shape[-1] < 28 else args.repeats
        # each arm interleaved with the control alone: an arm with far larger tensors (trace at
        # d = 64) in the same rotation slows the next one down (memory handed back and faulted
        # in again), which is not that arm's cost
        key = f"reg_{modes[-1] if tag != 'd2' else 'exact'}"  # the headline arm
        t, ratio, controls = {}, {"tm+ws": 1.0}, {}
        for arm in list(steps)[1:]:
            pair = interleaved({"tm+ws": steps["tm+ws"], arm: steps[arm]}, reps, warmup=2)
            t[arm], controls[arm] = pair[arm], 1e3 * pair["tm+ws"]["median"]
            ratio[arm] = pair[arm]["median"] / pair["tm+ws"]["median"]
            if arm == key:  # the control's own figures: those of the headline arm's pairing
                t["tm+ws"] = pair["tm+ws"]
        ctrl = t["tm+ws"]["median"]
        batch, reg_batch = base["train"]["batch_size"], base["regularizer"]["batch_size"]
        out[tag] = {"dim": math.prod(shape), "preset": preset or "defaults",
                    "net": base["net"]["name"], "batch": cfgs["tm+ws"]["train"]["batch_size"],
                    "reg_batch": cfgs[f"reg_{modes[0]}"]["regularizer"]["batch_size"],
                    "params_batch": batch, "params_reg_batch": reg_batch,
                    "ms": {k: 1e3 * v_["median"] for k, v_ in t.items()},
                    "control_ms_by_pair": controls,
                    "autograd_saved_mb": {k: saved_mb(f) for k, f in steps.items()},
                    "seconds": t, "ratio_to_control": ratio}
        if base["net"]["name"] == "mlp":  # the matrix-product count of each arm (see below)
            out[tag]["work_bound"] = {arm: _work_bound(cfgs[arm], math.prod(shape))
                                      for arm in steps if arm != "tm+ws"}
        out[tag]["parts_ms"] = {"control_step": 1e3 * ctrl, "reg_step": 1e3 * t[key]["median"],
                                "arm": key, **_reg_parts(cfgs[key], v, teacher, ends,
                                                         args.repeats)}
    res = {"by_dim": out}
    r = {tag: o["ratio_to_control"] for tag, o in out.items()}
    res["exact_vs_control_d2"] = r["d2"]["reg_exact"]
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
    from dag_build import dry_run, floor_run, grid_for

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
            # Snakemake alone on a bare Snakefile of as many jobs (dag_build.FLOOR_SNAKEFILE)
            out[f"{key}_snakemake_floor"] = floor_run(tmp / f"floor{n}", jobs)[0]
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
        c = res["couplings"]
        for key, v in (("speedup_vs_torchdiffeq_same_chunks",
                        c["speedup_vs_torchdiffeq_same_chunks"]),
                       ("rk4.speedup_vs_torchdiffeq_equal_nfe",
                        c["rk4"]["speedup_vs_torchdiffeq_equal_nfe"]),
                       ("rk4.speedup_vs_torchdiffeq_equal_error",
                        c["rk4"]["speedup_vs_torchdiffeq_equal_error"]),
                       ("activation_fraction", c["activation_fraction"]),
                       ("net_call_fraction", c["net_call_fraction"])):
            print(f"{'couplings.' + key:<38} {v:>10.3f}")
    if "dag" in only:  # no goal: Snakemake's own share of the 10k-job dry run
        for key in ("jobs_1k_s_snakemake_floor", "jobs_10k_s_snakemake_floor"):
            if key in res["dag"]:
                print(f"{'dag.' + key:<38} {res['dag'][key]:>10.3f}")
    unet = res.get("couplings", {}).get("unet") if "couplings" in only else None
    if unet:  # no goal: reported next to the MLP's
        print(f"{'couplings.unet.speedup_vs_torchdiffeq':<38} "
              f"{unet['speedup_vs_torchdiffeq']:>10.3f}  ({unet['images_per_s']['ours']:.0f} "
              f"images/s, {unet['n_params']:,} params)")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
