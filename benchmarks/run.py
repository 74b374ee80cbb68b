"""Every benchmark of the harness, one command: `make bench` (= `python benchmarks/run.py`;
arguments through ``make bench BENCH_ARGS="--quick --only evaluate"``).

Writes ``benchmarks/results/latest.json`` and prints a table. Every timing is min/median/max
over ``--repeats`` (>= 5) runs, and every ratio is taken against a reference measured in the
same run, interleaved with it (so load on a shared machine hits both alike):

* ``couplings``: the couplings solve of a trained toy teacher (``couplings_nfe``): error
  against NFE of every solver and step grid (``couplings.time_grid``), the NFE the headline
  option (``HEADLINE``) saves at the error of torchdiffeq's fixed-grid ``rk4`` at the
  default steps, and its wall time against that reference, both solved ``chunk_size`` rows
  at a time as the stage solves; beside them, what bounds a speedup: the equal-NFE and
  whole-batch ratios, the share of the solve spent inside the network's calls, the fraction
  of a network evaluation spent in its matrix products (``torch.mm`` on the same shapes) and
  in its activations, the same toy teacher with a smoother time embedding, and the mnist
  UNet at equal NFE.
* ``step``: ms per training step of each arm (control = TM + window-start term; + the marginal
  regularizer with each log-det mode), built by ``objectives.build`` from the reflow configs
  that training reads (the objects training uses), at their net and batch sizes (alignment
  batch from params): d = 2 (the toy preset: MLP, exact log-det), 64 (the defaults: MLP) and
  784 (the mnist preset: its UNet, Hutchinson), K = 2; ``parts_ms``: the regularizer term's
  forward alone and the teacher's score alone, so the extra cost splits into forward, score
  and backward; ``work_bound`` (MLP): the ratio the matrix products alone imply (the
  regularizer's rows with their tangents against the control's); memory: the MB autograd
  saves for the backward in one step of each arm. ``shared``: the same with
  ``regularizer.share_window_start`` (one forward for the window-start term and the
  regularizer).
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

import couplings_nfe
import step_time
import torch
import yaml
from dag_build import dry_run, floor_run, grid_for

from reflowma import data, objectives
from reflowma.core import interpolant, solvers, time_grids
from reflowma.evaluation import audit, metrics, spec
from reflowma.infra import config
from reflowma.infra.storage import atomic
from reflowma.models import build, mlp
from reflowma.stages import couplings, teacher
from reflowma.stages.common import load_model

REPO = Path(__file__).resolve().parents[1]
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


def _trained_teacher(preset: str, overrides, tmp: Path):
    """The preset's teacher, trained by the teacher stage (``overrides`` on its config) in
    ``tmp``, loaded as the couplings stage loads it."""
    out = tmp / f"teacher_{preset}"
    teacher.run(config.stage_config("teacher", preset, overrides), out)
    return load_model(out / "teacher.pt", "teacher")[0]


def _chunked(fn, z, chunk: int):
    """``fn(rows)`` chunk by chunk, endpoints concatenated: how the couplings stage solves."""
    return lambda: torch.cat([fn(b)[-1] for b in z.split(chunk)])


def _net_call_fraction(net, z, times, steps: int, repeats: int, chunk: int) -> float:
    """Median over ``repeats`` chunked rk38 solves of (seconds inside ``net``) / (solve seconds)."""
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
            solvers.solve(timed, b, times, steps, "rk38")
        fracs.append(sum(calls) / (time.perf_counter() - t0))
    return float(sorted(fracs)[len(fracs) // 2])


def _gemm_parts(net, rows, chunk: int, repeats: int) -> dict:
    """Seconds of the net's matrix products alone (its weights, the shapes one evaluation
    multiplies chunk by chunk: the first layer with its 2 data inputs, the time part folded
    into the bias; preallocated outputs) and of its in-place activations alone."""
    sizes = [b for b in [chunk] * (rows // chunk) + [rows % chunk] if b]
    lins = [m for m in net.net if isinstance(m, torch.nn.Linear)]
    ws = [lins[0].weight[:, :net.dim].t()] + [lin.weight.t() for lin in lins[1:]]
    ins = [[torch.randn(r, w.shape[0]) for w in ws] for r in sizes]
    outs = [[torch.empty(r, w.shape[1]) for w in ws] for r in sizes]

    def gemms():
        for xs, ys in zip(ins, outs, strict=True):
            for x_, w, y_ in zip(xs, ws, ys, strict=True):
                torch.mm(x_, w, out=y_)

    def activations():
        for ys in outs:
            for y_ in ys[:-1]:
                mlp.IN_PLACE[net.activation](y_)

    return interleaved({"gemm": gemms, "activations": activations}, repeats)


def bench_couplings(args) -> dict:
    """The couplings solve on the toy preset's teacher (trained here by the teacher stage), as
    the stage runs it (the defaults' stored times, ``chunk_size`` rows per solve), against
    torchdiffeq's fixed-grid ``rk4`` (Kutta's 3/8 rule) on a uniform grid of the defaults'
    steps, with the same chunks:

    * ``nfe``: error against NFE of every solver and step grid (``couplings_nfe``) on that
      teacher and on the mnist preset's UNet (trained here for a few hundred steps), the
      figure ``couplings_nfe.png`` next to the output file; ``nfe_saving_at_equal_error``: the
      NFE the headline option (``HEADLINE``) saves at the reference's error, toy teacher;
    * ``speedup_vs_torchdiffeq``: wall time of the reference over the headline option at that
      equal error (its pilot included), same chunks;
    * ``equal_nfe_time_ratio``: the reference over the project's ``rk38`` at the same steps
      (the same tableau: equal NFE and equal error), where at most ``1 / net_call_fraction`` is
      possible; ``whole_batch_time_ratio``: torchdiffeq on the whole batch over torchdiffeq in
      chunks (what the chunking alone does); ``gemm_fraction`` / ``activation_fraction``: the
      net's matrix products / in-place activations alone over one network evaluation in the
      solve; ``mlp_fast_path_gain``: the MLP's forward with autograd's general path (per-row
      time, activations out of place) over its inference path, in the solve.
    """
    base = config.stage_config("couplings")
    chunk, ref_steps = base["chunk_size"], base["steps"]
    times = interpolant.union_grid(base["windows"])
    n = 5000 if args.quick else 20000
    reps = args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        net = _trained_teacher("toy", ["train.steps=300"] if args.quick else [], Path(tmp))
        unet = _trained_teacher("mnist", ["train.steps=10", "train.warmup_steps=2"]
                                if args.quick else ["train.steps=300", "train.warmup_steps=50"],
                                Path(tmp))
        torch.manual_seed(0)  # the same teacher but its time embedding's fastest frequency
        (Path(tmp) / "smooth").mkdir()
        smooth = _trained_teacher("toy", [*(["train.steps=300"] if args.quick else []),
                                          f"net.time_max_freq={SMOOTH_TIME_MAX_FREQ}"],
                                  Path(tmp) / "smooth")
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))

    # the curves: one chunk of rows, against a tight RK4 solve
    rows = z[: 512 if args.quick else 4096]
    toy_steps = list(range(8, 2 * ref_steps + 1, 24 if args.quick else 2))
    levels = [2, 3] if args.quick else [x / 2 for x in range(4, 17)]
    smooth_steps = [2, 4, 8, 16] if args.quick else SMOOTH_STEPS
    nfe = {"toy": couplings_nfe.curves(net, rows, None, toy_steps, ref_steps, levels),
           "toy_smooth_time": couplings_nfe.curves(smooth, rows, None, smooth_steps, ref_steps,
                                                   levels)}
    ms = config.stage_config("couplings", "mnist")["steps"]
    zi = torch.randn(4 if args.quick else 64, 1, 28, 28,
                     generator=torch.Generator().manual_seed(1))
    nfe["mnist_unet"] = couplings_nfe.curves(
        unet, zi, "mnist", [1, 2, ms, 2 * ms] if args.quick else list(range(1, 2 * ms + 1)), ms,
        [1, 2] if args.quick else [x / 2 for x in range(2, 11)])
    figure = Path(args.out).with_name("couplings_nfe.png")
    couplings_nfe.figure(
        {"toy teacher (MLP)": nfe["toy"],
         f"toy teacher, time_max_freq {SMOOTH_TIME_MAX_FREQ:g}": nfe["toy_smooth_time"],
         "mnist UNet": nfe["mnist_unet"]}, figure)

    # the headline option at the reference's error, timed against the reference (same chunks)
    head = nfe["toy"]["equal_error"][HEADLINE]
    head_cfg = couplings_nfe.option_config(None, couplings_nfe.OPTIONS[HEADLINE])
    # not reached on the curve: timed at the reference's steps, and no speedup is claimed
    eq_steps = head["steps"] or ref_steps

    def headline():  # as the stage: the grid (with its pilot) once, then chunk by chunk
        cfg = {**head_cfg, "steps": eq_steps}
        grid = couplings.step_grid(cfg, net, (2,), times, torch.device("cpu"))
        return torch.cat([solvers.solve(net, b, times, eq_steps, cfg["solver"], grid=grid)[-1]
                          for b in z.split(chunk)])

    def solve_reference(b):
        return couplings_nfe.solve_reference(net, b, times, ref_steps)[0]

    reference = _chunked(solve_reference, z, chunk)
    ours = _chunked(lambda b: solvers.solve(net, b, times, ref_steps, "rk38"), z, chunk)
    whole = _chunked(solve_reference, z, n)

    def general(x, t):  # the MLP's general path: per-row time, autograd on (no graph: frozen)
        with torch.enable_grad():
            return net(x, t.contiguous())

    general_path = _chunked(lambda b: solvers.solve(general, b, times, ref_steps, "rk38"), z,
                            chunk)
    t = interleaved({"reference": reference, "headline": headline, "rk38": ours,
                     "torchdiffeq_whole_batch": whole, "mlp_general_path": general_path}, reps)
    med = {k: v["median"] for k, v in t.items()}
    evals = 4 * time_grids.n_steps(time_grids.uniform(times, ref_steps))
    per_eval = med["rk38"] / evals
    parts = _gemm_parts(net, n, chunk, reps)
    tight = solvers.solve(net, z, times, 8 * ref_steps, "rk4")
    rms = {k: couplings_nfe.error(torch.stack([f()]), tight[-1:]) for k, f in
           (("reference", reference), ("rk38", ours), ("headline", headline))}
    return {"n": n, "chunk_size": chunk, "times": times, "reference_steps": ref_steps,
            "net": "toy teacher, mlp 128x3", "headline_option": HEADLINE,
            "headline_steps": head["steps"], "seconds": t,
            "samples_per_s": {k: n / v for k, v in med.items()},
            "endpoint_rms_error": rms,
            "speedup_vs_torchdiffeq": (med["reference"] / med["headline"] if head["steps"]
                                       else None),
            "nfe_saving_at_equal_error": head["nfe_saving"],
            "equal_nfe_time_ratio": med["reference"] / med["rk38"],
            "whole_batch_time_ratio": med["torchdiffeq_whole_batch"] / med["reference"],
            "mlp_fast_path_gain": med["mlp_general_path"] / med["rk38"],
            "gemm_fraction": parts["gemm"]["median"] / per_eval,
            "activation_fraction": parts["activations"]["median"] / per_eval,
            # the share of our solve spent inside the network's calls: at equal NFE and equal
            # batching no solver sharing that network can be faster than 1 / this
            "net_call_fraction": _net_call_fraction(net, z, times, ref_steps, reps, chunk),
            "nfe": nfe, "figure": figure.name,
            "time_embedding": _time_embedding(nfe, {"default": net, "smooth": smooth}, times,
                                              ref_steps, 1000 if args.quick else 4000),
            "unet": _couplings_unet(args, unet)}


# the option whose equal-error NFE and time are the couplings headlines (``couplings_nfe``)
HEADLINE = "rk38 fitted"
# the toy teacher again with its time embedding's fastest frequency at 16 radians per unit t
# (1000 by default: a period of 1/160, aliased by every solve on the curves), and its steps
SMOOTH_TIME_MAX_FREQ = 16.0
SMOOTH_STEPS = [2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96, 128]


def _time_embedding(nfe: dict, nets: dict, times, ref_steps: int, n: int) -> dict:
    """What the teacher's time embedding costs the couplings solve: the toy teacher trained
    as the preset trains it, once with the default embedding and once with
    ``net.time_max_freq`` at ``SMOOTH_TIME_MAX_FREQ``. ``reference_nfe_at_default_error``: the
    fewest NFE from which on the reference (torchdiffeq rk4, uniform) keeps the smooth teacher's
    solve at or below the default teacher's equal-error target; the saving is the default
    teacher's NFE at its default steps over that. ``teacher_w2_data``: W2 of each teacher's
    samples (rk38 at the default steps) to as many data draws, beside two data draws' W2 (the
    floor at this n): both teachers fit the data equally, or the saving is no like for like."""
    point = nfe["toy"]["reference_point"]
    smooth_reference = nfe["toy_smooth_time"]["curves"][couplings_nfe.REFERENCE]
    n_smooth = couplings_nfe.robust_nfe(smooth_reference, point["target"])
    dcfg = config.stage_config("teacher")["data"]
    x_data = data.load(dcfg, n, torch.Generator().manual_seed(2))
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(3))
    w2 = {name: metrics.w2_unpaired(solvers.solve(f, z, times, ref_steps, "rk38")[-1], x_data)
          for name, f in nets.items()}
    w2["data_floor"] = metrics.w2_unpaired(data.load(dcfg, n, torch.Generator().manual_seed(4)),
                                           x_data)
    return {"max_freq": {"default": float(nets["default"].embed.freqs.max().round()),
                         "smooth": float(nets["smooth"].embed.freqs.max().round())},
            "error_at_default_steps": {
                "default": point["error"],
                "smooth": nfe["toy_smooth_time"]["reference_point"]["error"]},
            "reference_nfe_at_default_error": n_smooth,
            "nfe_saving_at_equal_error": point["nfe"] / n_smooth if n_smooth else None,
            "teacher_w2_data": w2}


def _couplings_unet(args, net) -> dict:
    """The mnist UNet teacher: images/s of the project's rk38 against torchdiffeq's fixed-grid
    rk4 (the same tableau: equal NFE and error) on the mnist couplings' steps, whole batch."""
    steps = config.stage_config("couplings", "mnist")["steps"]
    n = 16 if args.quick else 128
    z = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    t = interleaved({"ours": lambda: solvers.solve(net, z, [0.0, 1.0], steps, "rk38"),
                     "torchdiffeq": lambda: couplings_nfe.solve_reference(net, z, [0.0, 1.0],
                                                                          steps)},
                    max(3, args.repeats // 2))
    return {"n": n, "steps": steps, "nfe": 4 * steps,
            "n_params": sum(p.numel() for p in net.parameters()),
            "images_per_s": {k: n / v["median"] for k, v in t.items()}, "seconds": t,
            "equal_nfe_time_ratio": t["torchdiffeq"]["median"] / t["ours"]["median"]}


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
    frozen teacher's score, forward only, ``B_reg``; with ``share_window_start`` the
    window-start batch's ``3B`` is absent (its term comes from the regularizer's
    forward)."""
    B, reg = cfg["train"]["batch_size"], cfg["regularizer"]
    n = reg["n_probes"] if reg["logdet"] == "hutchinson" else d
    shared = 3 * B if reg["share_window_start"] else 0
    return 1 + (3 * (1 + n) * reg["batch_size"] + reg["batch_size"] - shared) / (3 * 2 * B)


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
        for arm in ["tm+ws"] + [f"{kind}_{m}" for kind in ("reg", "shared") for m in modes]:
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
    # the same arms with regularizer.share_window_start: true (one forward for both terms)
    res["shared"] = {"exact_vs_control_d2": r["d2"]["shared_exact"],
                     "hutchinson_vs_control_d64": r["d64"]["shared_hutchinson"],
                     "hutchinson_vs_control_d784": r["d784"]["shared_hutchinson"]}
    return res


# --------------------------------------------------------------------------- evaluate


def bench_evaluate(args) -> dict:

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
    """``snakemake -n`` on the workflow for about 1,000 and 10,000 jobs (cold: the resolved
    configs as well; warm once) against the floor, the same on a bare Snakefile of as many jobs
    (``dag_build.FLOOR_SNAKEFILE``), interleaved ``repeats`` times (3 at most: a 10k-job dry
    run takes tens of seconds): medians of the wall time, and of the CPU time, which a loaded
    machine distorts least. ``jobs_10k_vs_floor``: the wall-time ratio (the headline)."""
    out = {}
    reps = 1 if args.quick else min(3, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ref, ref_jobs, _ = dry_run(tmp / "ref", "smoke", "smoke")
        out["reference"] = {"jobs": ref_jobs, "s": ref}
        for n in ([1000] if args.quick else [1000, 10000]):
            g = tmp / f"grid{n}.yaml"
            g.write_text(yaml.safe_dump(grid_for(n)))
            runs = {"ours": [], "floor": []}
            for r in range(reps):
                runs["ours"].append(dry_run(tmp / f"w{n}_{r}", str(g)))
                jobs = runs["ours"][-1][1]
                runs["floor"].append(floor_run(tmp / f"floor{n}_{r}", jobs))
            warm = dry_run(tmp / f"w{n}_0", str(g))[0]
            wall = {k: statistics.median(x[0] for x in v) for k, v in runs.items()}
            cpu = {k: statistics.median(x[2] for x in v) for k, v in runs.items()}
            key = f"jobs_{n // 1000}k"
            out.update({f"{key}_s": wall["ours"], f"{key}_s_warm": warm, f"jobs_{n}": jobs,
                        f"{key}_s_snakemake_floor": wall["floor"],
                        f"{key}_vs_floor": wall["ours"] / wall["floor"],
                        f"{key}_cpu_s": cpu, f"{key}_cpu_vs_floor": cpu["ours"] / cpu["floor"],
                        f"{key}_runs": reps})
    return out


SECTIONS = {"couplings": bench_couplings, "step": bench_step, "evaluate": bench_evaluate,
            "study": bench_study, "dag": bench_dag}
GOALS = {"couplings.speedup_vs_torchdiffeq": (">=", 1.3),
         "couplings.nfe_saving_at_equal_error": (">=", 1.5),
         "couplings.gemm_fraction": (">=", 0.8),
         "step.exact_vs_control_d2": ("<=", 1.6), "step.hutchinson_vs_control_d64": ("<=", 1.5),
         "step.hutchinson_vs_control_d784": ("<=", 1.5),
         "step.shared.exact_vs_control_d2": ("<=", 1.4),
         "step.shared.hutchinson_vs_control_d64": ("<=", 1.3),
         "step.shared.hutchinson_vs_control_d784": ("<=", 1.3),
         "evaluate.audit_s_per_1k": ("<=", 10), "study.toy_s": ("<=", 90),
         "dag.jobs_10k_vs_floor": ("<=", 1.2)}
# printed under the goals, without one: what bounds or explains them
CONTEXT = ("couplings.equal_nfe_time_ratio", "couplings.net_call_fraction",
           "couplings.whole_batch_time_ratio", "couplings.mlp_fast_path_gain",
           "couplings.activation_fraction", "couplings.unet.equal_nfe_time_ratio",
           "couplings.time_embedding.nfe_saving_at_equal_error",
           "dag.jobs_10k_s", "dag.jobs_10k_s_snakemake_floor", "dag.jobs_1k_vs_floor")


def lookup(res: dict, key: str):
    """``res["a"]["b"]["c"]`` for ``"a.b.c"``; None where a part is missing."""
    node = res
    for part in key.split("."):
        if not isinstance(node, dict) or node.get(part) is None:
            return None
        node = node[part]
    return node


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
        t0, load = time.perf_counter(), os.getloadavg()
        res[name] = {**SECTIONS[name](args), "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
                     # the machine's 1-minute load average as the section started and ended
                     "loadavg": [load[0], os.getloadavg()[0]]}
        print(f"[bench] {name}: {time.perf_counter() - t0:.1f} s", flush=True)
        # after each section: a later failure keeps what was measured
        atomic.write_json(out, res, sort_keys=False)
    print(f"\n{'key':<42} {'value':>10} {'goal':>9}  met")
    for key, (op, goal) in GOALS.items():
        v = lookup(res, key)
        if key.split(".")[0] not in only:  # this run's sections only
            continue
        if v is None:  # not reached (e.g. the equal error): a goal not met
            print(f"{key:<42} {'n/a':>10} {op}{goal:>7}  NO")
            continue
        ok = v >= goal if op == ">=" else v <= goal
        print(f"{key:<42} {v:>10.3f} {op}{goal:>7}  {'yes' if ok else 'NO'}")
    for key in CONTEXT:
        v = lookup(res, key)
        if key.split(".")[0] in only and v is not None:
            print(f"{key:<42} {v:>10.3f}")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
