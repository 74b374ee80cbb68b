"""The GPU benchmark of the image path (benchmarks/gpu_check.sh runs it; ``--device cpu``: every
section at toy size, to check the script itself).

    python benchmarks/gpu_bench.py --device cuda --out benchmarks/results/gpu_nvidia_h200.json
    python benchmarks/gpu_bench.py --device cpu --out /tmp/gpu_cpu.json      # toy size

Every figure comes from the project's own code: the teacher and student steps are the
stages' (``stages.teacher.run`` / ``stages.reflow.run`` / ``stages.classifier.run``, through
the training loop's ``fit``: its optimizer, EMA, clipping and the ``train.*`` levers), timed
between logged steps (``on_log``: each logged step reads the loss back, so the interval ends
when the device is done); the couplings solve is ``core.solvers.solve`` on the network the
couplings stage wraps (``models.inference.wrap``); the mnist_gpu stages run at that preset's
configuration. Sections run one process each (a section that crashes or overruns its time
loses only its own numbers: its rows are written as they are measured) within a total
budget (``--budget-s``), most important first; the JSON is written whatever happens.

Keys (docs/performance.md, "On a GPU", explains each): ``peak_bf16_tflops``, ``flops``,
``teacher`` (per-lever rows against the plain fp32 eager step, ``images_per_s``, ``mfu``,
``bf16_speedup``), ``reflow`` (``hutchinson_vs_control``), ``couplings`` (``images_per_s``
in network evaluations of one image per second, RMS differences against the fp32 eager
solve), ``cifar10_grid_hours``, ``mnist_gpu`` and ``mnist_gpu_minutes``, ``goals``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_projection as gp  # noqa: E402  (a module of this folder)

# key, goal, "min" (measured >= goal) or "max" (measured <= goal)
GOALS = [("teacher.images_per_s", 6500.0, "min"), ("teacher.bf16_speedup", 1.5, "min"),
         ("reflow.hutchinson_vs_control", 1.8, "max"),
         ("couplings.images_per_s", 3 * 6850.0, "min"), ("cifar10_grid_hours", 15.0, "max"),
         ("mnist_gpu_minutes", 10.0, "max")]

# train fields of the plain step every lever is compared with
PLAIN = {"amp": "none", "compile": "none", "channels_last": False, "data_on_device": False,
         "fused_optimizer": False}
LEVERS = {  # one lever each, on top of PLAIN
    "fused_optimizer": {"fused_optimizer": True},
    "data_on_device": {"data_on_device": True},
    "bf16": {"amp": "bf16"},
    "channels_last": {"channels_last": True},
    "compile": {"compile": "default"},
    "reduce_overhead": {"compile": "reduce-overhead"},
}
# the combination of the levers that need no compilation, and of all of them
EAGER_BEST = {"amp": "bf16", "fused_optimizer": True, "data_on_device": True}
COMBINED = {**EAGER_BEST, "compile": "reduce-overhead"}

TINY_UNET = {"name": "unet", "channels": 8, "channel_mult": [1, 2], "res_blocks": 1,
             "attention_resolutions": [16, 14], "dropout": 0.0, "heads": 2, "norm_groups": 4}
# (attention at 16x16 on 32x32 images and at 14x14 on 28x28: the attention path is timed too)

# sizes per device: CUDA at the presets' nets and batches, the CPU at toy size
SIZES = {
    "cuda": {"log_every": 8, "log_every_compiled": 10, "big_batch": 512, "per_batch": 256,
             "reflow_log_every": 5, "coupling_steps": 2, "rms_n": 64, "rms_steps": None,
             "mnist_log_every": 20, "mnist_reflow_log_every": 5, "mnist_couplings_train": 256,
             "probe_seconds": 3.0, "net": None, "mnist_net": None},
    "cpu": {"log_every": 2, "log_every_compiled": 2, "big_batch": 16, "per_batch": 16,
            "reflow_log_every": 2, "coupling_steps": 1, "rms_n": 4, "rms_steps": 4,
            "mnist_log_every": 2, "mnist_reflow_log_every": 2, "mnist_couplings_train": 16,
            "probe_seconds": 1.0, "net": TINY_UNET, "mnist_net": {**TINY_UNET, "channels": 4},
            "batch": 8, "reflow_batch": 8, "reg_batch": 4, "chunk": 16, "mnist_batch": 8,
            "mnist_n_test": 32, "mnist_n_samples": 32, "mnist_couplings_steps": 2,
            "mnist_nfe": [1, 2],
            "mnist_teacher_steps": 4, "probe_workers": 2},
}


# --- small helpers ------------------------------------------------------------------------

def slug(name: str) -> str:
    """``NVIDIA H200`` -> ``nvidia_h200`` (the JSON's file name)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "device"


def device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def ov(d: dict) -> list:
    """Overrides for ``config.stage_config`` from ``{"a.b": value}``."""
    return [(k.split("."), v) for k, v in d.items()]


def prefixed(prefix: str, d: dict) -> dict:
    return {f"{prefix}.{k}": v for k, v in d.items()}


class Recorder:
    """A section's results, rewritten to its JSON file after every row (a section killed on
    its time limit keeps what it measured)."""

    def __init__(self, path: Path):
        self.path, self.data = path, {}

    def put(self, key: str, value) -> None:
        node = self.data
        *head, last = key.split(".")
        for k in head:
            node = node.setdefault(k, {})
        node[last] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=float))
        tmp.replace(self.path)


class StepTimer:
    """``on_log`` callback of the stages: seconds per step between the first and the last
    logged step (the first interval holds the warm-up: compilation, CUDA graph capture)."""

    def __init__(self, wait_until: float | None = None):
        self.marks, self.wait_until = [], wait_until

    def __call__(self, row: dict) -> None:
        if not self.marks and self.wait_until is not None:  # concurrency probe: start together
            time.sleep(max(0.0, self.wait_until - time.time()))
        self.marks.append((time.perf_counter(), row["step"]))

    def seconds_per_step(self) -> float:
        (t0, s0), (t1, s1) = self.marks[0], self.marks[-1]
        return (t1 - t0) / (s1 - s0)


def write_cifar_archive(path: Path, per_batch: int) -> Path:
    """A CIFAR-10-format archive of random images (``data_batch_1..5``, ``test_batch``):
    throughput does not depend on the pixels, and the real archive is not shipped."""
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            blob = pickle.dumps({b"data": rng.integers(0, 256, (per_batch, 3072), np.uint8),
                                 b"labels": rng.integers(0, 10, per_batch).tolist()},
                                protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def randomised(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights in the zero-initialised layers too (residual convs, attention output,
    output conv), so that a velocity field of random weights is not zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.abs().sum():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return net


# --- sections ----------------------------------------------------------------------------

class Context:
    def __init__(self, dev: torch.device, work: Path, rec: Recorder, deadline: float):
        self.dev, self.work, self.rec, self.deadline = dev, work, rec, deadline
        self.size = SIZES["cuda" if dev.type == "cuda" else "cpu"]
        self.archive = write_cifar_archive(work / "cifar-10-python.tar.gz",
                                           self.size["per_batch"])

    def left(self) -> float:
        """Seconds before this process's time limit."""
        return self.deadline - time.time()

    def cifar_preset(self) -> dict:
        from reflowma.infra import grid as rgrid

        p = rgrid.load_preset("cifar10")
        p["stages"]["data"] = {**p["stages"]["data"], "path": str(self.archive)}
        if self.size["net"] is not None:
            for st in ("teacher", "reflow"):
                p["stages"][st]["net"] = self.size["net"]
        return p


def section_env(ctx: Context) -> None:
    """Device, versions, the peak bf16 matmul rate, the FLOPs of the nets (meta device)."""
    from torch.utils.flop_counter import FlopCounterMode

    from reflowma import data, models
    from reflowma.infra import config

    dev, rec = ctx.dev, ctx.rec
    rec.put("device", device_name(dev))
    rec.put("torch", torch.__version__)
    n = 8192 if dev.type == "cuda" else 256
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(dev)
    reps = 20 if dev.type == "cuda" else 3
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(dev)
    rec.put("peak_bf16_tflops", 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12)
    rec.put("peak_matmul_size", n)
    p = ctx.cifar_preset()
    nets = {"cifar10": config.stage_config("teacher", p["stages"], check_files=False),
            "mnist_gpu": config.stage_config("teacher", "mnist_gpu")}
    if ctx.size["mnist_net"] is not None:
        nets["mnist_gpu"] = {**nets["mnist_gpu"], "net": ctx.size["mnist_net"]}
    for name, cfg in nets.items():
        shape = data.declared_shape(cfg["data"])
        with torch.device("meta"):
            net = models.build(shape, cfg["net"])
            x, t = torch.randn(2, *shape), torch.rand(2)
        with FlopCounterMode(display=False) as fc:
            net(x, t).sum().backward()
        with FlopCounterMode(display=False) as ff, torch.no_grad():
            net(x, t)
        rec.put(f"flops.{name}", {"params": models.n_params(net), "data_shape": list(shape),
                                  "train_gflop_per_image": fc.get_total_flops() / 2e9,
                                  "forward_gflop_per_image": ff.get_total_flops() / 2e9})


def _teacher_rate(ctx: Context, preset: dict, train: dict, tag: str, log_every: int) -> dict:
    """One teacher stage run of 3 logged intervals; its steady seconds per step."""
    from reflowma.infra import config
    from reflowma.stages import teacher

    over = {**prefixed("train", {**train, "steps": 3 * log_every, "log_every": log_every,
                                 "checkpoint_every": 10**6, "warmup_steps": 0}),
            "eval.n_samples": 16, "eval.batch_size": 16, "device": ctx.dev.type}
    cfg = config.stage_config("teacher", preset, ov(over))
    timer = StepTimer()
    teacher.run(cfg, ctx.work / "teacher" / tag, timer)
    s = timer.seconds_per_step()
    bs = cfg["train"]["batch_size"]
    return {"batch": bs, "seconds_per_step": s, "images_per_s": bs / s,
            "train": {k: cfg["train"].get(k) for k in ("amp", "compile", "channels_last",
                                                       "data_on_device", "fused_optimizer")}}


def _can(dev: torch.device, train: dict) -> str | None:
    """Why a lever cannot run on ``dev`` (None: it can)."""
    if dev.type != "cuda" and train.get("amp", "none") != "none":
        return "bf16 autocast needs CUDA"
    if dev.type != "cuda" and train.get("compile", "none") != "none":
        return "compilation is measured on CUDA only (CPU: toy run of the script)"
    return None


def section_teacher_eager(ctx: Context) -> None:
    """The plain fp32 eager step, each eager lever alone, a larger batch, the eager levers
    together: the cifar10 preset's net and batch."""
    p = ctx.cifar_preset()["stages"]
    if "batch" in ctx.size:
        p["teacher"]["train"]["batch_size"] = ctx.size["batch"]
    L, rec = ctx.size["log_every"], ctx.rec
    plain = _teacher_rate(ctx, p, PLAIN, "plain", L)
    rec.put("teacher.plain", plain)
    rows = [(k, v) for k, v in LEVERS.items() if v.get("compile", "none") == "none"]
    rows += [(f"batch_{ctx.size['big_batch']}", {"batch_size": ctx.size["big_batch"]}),
             ("eager_best", EAGER_BEST)]
    for name, lever in rows:
        why = _can(ctx.dev, lever)
        if why:
            rec.put(f"teacher.levers.{name}", {"skipped": why})
            continue
        r = _teacher_rate(ctx, p, {**PLAIN, **lever}, name, L)
        r["speedup_vs_plain"] = r["images_per_s"] / plain["images_per_s"]
        rec.put(f"teacher.levers.{name}", r)


def section_teacher_compiled(ctx: Context, names) -> None:
    """Compiled configurations: ``combined`` (every lever, bf16) and ``combined_fp32`` first
    (the headline and the bf16 speedup), then ``compile`` and ``reduce_overhead`` alone."""
    p = ctx.cifar_preset()["stages"]
    if "batch" in ctx.size:
        p["teacher"]["train"]["batch_size"] = ctx.size["batch"]
    table = {"combined": COMBINED, "combined_fp32": {**COMBINED, "amp": "none"},
             "compile": LEVERS["compile"], "reduce_overhead": LEVERS["reduce_overhead"]}
    for name in names:
        lever = {**PLAIN, **table[name]}
        why = _can(ctx.dev, lever)
        if why:
            ctx.rec.put(f"teacher.levers.{name}", {"skipped": why})
            continue
        t0 = time.perf_counter()
        r = _teacher_rate(ctx, p, lever, name, ctx.size["log_every_compiled"])
        r["wall_s_with_compile"] = time.perf_counter() - t0
        ctx.rec.put(f"teacher.levers.{name}", r)


def _couplings_file(ctx: Context, preset: dict, teacher_pt: Path, out: Path, n_train: int,
                    extra: dict | None = None) -> dict:
    from reflowma.infra import config
    from reflowma.stages import couplings

    cfg = config.stage_config("couplings", preset, ov({"device": ctx.dev.type,
                                                       "n_train": n_train, **(extra or {})}))
    t0 = time.perf_counter()
    couplings.run(cfg, teacher_pt, out)
    return {"seconds": time.perf_counter() - t0, "pairs": cfg["n_train"] + cfg["n_test"],
            "nfe_per_pair": gp.couplings_nfe(cfg)}


def section_reflow(ctx: Context) -> None:
    """The cifar10 preset's student step (window-start term on, its train settings but no
    compilation): the control (lambda = 0) against the Hutchinson regularizer on from step 0."""
    from reflowma.infra import config
    from reflowma.stages import reflow

    p = ctx.cifar_preset()["stages"]
    teacher_pt = ctx.work / "teacher" / "plain" / "teacher.pt"
    if not teacher_pt.exists():  # the teacher section did not run: a short teacher here
        _teacher_rate(ctx, p, PLAIN, "plain", 1)
    cpl = ctx.work / "reflow_couplings.h5"
    _couplings_file(ctx, p, teacher_pt, cpl, 64, {"n_test": 8, "steps": 2, "chunk_size": 64})
    L = ctx.size["reflow_log_every"]
    base = {"K": 1, "window_start_weight": 1.0, "device": ctx.dev.type,
            **prefixed("train", {"steps": 3 * L, "log_every": L, "checkpoint_every": 10**6,
                                 "warmup_steps": 0, "compile": "none"})}
    if "reflow_batch" in ctx.size:
        base.update({"train.batch_size": ctx.size["reflow_batch"],
                     "regularizer.batch_size": ctx.size["reg_batch"]})
    if ctx.dev.type != "cuda":
        base["train.amp"] = "none"
    arms = {"control": {"regularizer.weight": 0.0},
            "hutchinson": {"regularizer.weight": 0.1, "regularizer.logdet": "hutchinson",
                           "regularizer.warm_start": 0.0}}
    out = {}
    for arm, extra in arms.items():
        cfg = config.stage_config("reflow", p, ov({**base, **extra}))
        timer = StepTimer()
        reflow.run(cfg, cpl, teacher_pt, ctx.work / "reflow" / arm, timer)
        out[arm] = {"seconds_per_step": timer.seconds_per_step(),
                    "batch": cfg["train"]["batch_size"],
                    "regularizer_batch": cfg["regularizer"]["batch_size"],
                    "amp": cfg["train"]["amp"]}
        ctx.rec.put(f"reflow.{arm}", out[arm])
    ctx.rec.put("reflow.hutchinson_vs_control",
                out["hutchinson"]["seconds_per_step"] / out["control"]["seconds_per_step"])


def _solve_rate(v, z, times, steps, dev, reps: int = 2) -> float:
    """Network evaluations of one image per second of an RK4 solve of ``z`` (after one
    warm-up solve): 4 per step and image."""
    from reflowma.core import solvers

    solvers.solve(v, z, times, steps, "rk4")
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(reps):
        solvers.solve(v, z, times, steps, "rk4")
    sync(dev)
    n_steps = sum(gp.step_counts(times, steps))
    return reps * z.shape[0] * 4 * n_steps / (time.perf_counter() - t0)


def _couplings_net(ctx: Context):
    from reflowma import data, models
    from reflowma.infra import config

    cfg = config.stage_config("couplings", ctx.cifar_preset()["stages"])
    tcfg = config.stage_config("teacher", ctx.cifar_preset()["stages"])
    shape = data.declared_shape(tcfg["data"])
    torch.manual_seed(0)
    net = randomised(models.build(shape, tcfg["net"])).to(ctx.dev).eval().requires_grad_(False)
    return cfg, shape, net


def _rms(a: torch.Tensor, b: torch.Tensor) -> dict:
    d = (a.double() - b.double()).pow(2).mean().sqrt().item()
    return {"rms_diff": d, "relative": d / b.double().pow(2).mean().sqrt().item()}


def section_couplings(ctx: Context, variants) -> None:
    """The couplings solve of the cifar10 preset's net (random weights) at its chunk size:
    image-evaluations per second of each variant (``models.inference.wrap`` with
    ``couplings.amp`` / ``couplings.compile``), and the RMS difference of its endpoint after the
    preset's step count against the fp32 eager solve, on the first ``rms_n`` images of the
    chunk (rows are solved independently). Eager variants solve those images alone; a compiled
    one solves the whole chunk (the shape it was compiled for) when the time left allows."""
    from reflowma.core import solvers
    from reflowma.models import inference

    cfg, shape, net = _couplings_net(ctx)
    chunk = ctx.size.get("chunk", cfg["chunk_size"])
    z = torch.randn(chunk, *shape, generator=torch.Generator().manual_seed(1)).to(ctx.dev)
    n = ctx.size["rms_n"]
    ref_path = ctx.work / "couplings_fp32_endpoint.pt"
    rms_steps = ctx.size["rms_steps"] or cfg["steps"]
    nfe = 4 * sum(gp.step_counts([0.0, 1.0], rms_steps))
    table = {"fp32": {}, "bf16": {"amp": "bf16"},
             "bf16_reduce_overhead": {"amp": "bf16", "compile": "reduce-overhead"},
             "fp32_reduce_overhead": {"compile": "reduce-overhead"}}
    for name in variants:
        opts = table[name]
        why = _can(ctx.dev, {"amp": opts.get("amp", "none"),
                             "compile": opts.get("compile", "none")})
        if why:
            ctx.rec.put(f"couplings.variants.{name}", {"skipped": why})
            continue
        t0 = time.perf_counter()
        v = inference.wrap(net, opts)
        rate = _solve_rate(v, z, [0.0, 1.0], ctx.size["coupling_steps"], ctx.dev)
        row = {"images_per_s": rate, "chunk": chunk, "options": opts,
               "rms_steps": rms_steps, "rms_images": n}
        ctx.rec.put(f"couplings.variants.{name}", row)
        compiled = opts.get("compile", "none") != "none"
        need = nfe * (chunk if compiled else n) / rate
        if need > ctx.left() - 10:
            row["rms"] = f"skipped: the solve would take {need:.0f} s"
        else:
            end = solvers.solve(v, z if compiled else z[:n], [0.0, 1.0], rms_steps,
                                cfg["solver"])[-1][:n].cpu()
            if name == "fp32":
                torch.save(end, ref_path)
            elif ref_path.exists():
                row.update(_rms(end, torch.load(ref_path)))
        row["wall_s"] = time.perf_counter() - t0
        ctx.rec.put(f"couplings.variants.{name}", row)


def section_mnist_gpu(ctx: Context) -> None:
    """The mnist_gpu preset's stages, once each, short, on the device: the per-step seconds of
    teacher, classifier and both student arms, the couplings' image-evaluations per second,
    one evaluation at the preset's size, and a job's start-up (a fresh interpreter that imports
    the stages and initialises the device)."""
    from reflowma.infra import config
    from reflowma.stages import classifier, evaluate, reflow, teacher

    S, dev, rec, w = ctx.size, ctx.dev, ctx.rec, ctx.work / "mnist_gpu"
    common = {"device": dev.type}
    net = {"net": S["mnist_net"]} if S["mnist_net"] else {}
    L = S["mnist_log_every"]

    def short(stage, L, extra=None):
        o = {**common, **prefixed("train", {"steps": 3 * L, "log_every": L,
                                            "checkpoint_every": 10**6})}
        if stage in ("teacher", "reflow"):
            o.update(net)
        if "mnist_batch" in S and stage != "evaluate":
            o["train.batch_size"] = S["mnist_batch"]
        return config.stage_config(stage, "mnist_gpu", ov({**o, **(extra or {})}))

    t = StepTimer()
    teacher.run(short("teacher", L, {"eval.n_samples": 64, "eval.batch_size": 64}), w / "t", t)
    rec.put("mnist_gpu.teacher_step_s", t.seconds_per_step())
    t = StepTimer()
    classifier.run(short("classifier", L), w / "cl", t)
    rec.put("mnist_gpu.classifier_step_s", t.seconds_per_step())
    c_over = {**common, "n_train": S["mnist_couplings_train"]}
    if "mnist_n_test" in S:
        c_over.update({"n_test": S["mnist_n_test"], "chunk_size": S["chunk"],
                       "steps": S["mnist_couplings_steps"]})
    ccfg = config.stage_config("couplings", "mnist_gpu", ov(c_over))
    from reflowma.stages import couplings

    t0 = time.perf_counter()
    couplings.run(ccfg, w / "t" / "teacher.pt", w / "c.h5")
    secs = time.perf_counter() - t0
    nfe = (ccfg["n_train"] + ccfg["n_test"]) * gp.couplings_nfe(ccfg)
    rec.put("mnist_gpu.couplings", {"seconds": secs, "image_evaluations": nfe})
    rec.put("mnist_gpu.nfe_per_s", nfe / secs)
    Lr = S["mnist_reflow_log_every"]
    for arm, extra in {"control": {"regularizer.weight": 0.0},
                       "hutchinson": {"regularizer.weight": 0.1,
                                      "regularizer.warm_start": 0.0}}.items():
        cfg = short("reflow", Lr, {"K": 1, "window_start_weight": 1.0, **extra})
        t = StepTimer()
        reflow.run(cfg, w / "c.h5", w / "t" / "teacher.pt", w / arm, t)
        rec.put(f"mnist_gpu.{arm}_step_s", t.seconds_per_step())
    e_over = dict(common)
    if "mnist_n_samples" in S:
        e_over.update({"n_samples": S["mnist_n_samples"], "nfe": S["mnist_nfe"],
                       "teacher_steps": S["mnist_teacher_steps"]})
    ecfg = config.stage_config("evaluate", "mnist_gpu", ov(e_over))
    t0 = time.perf_counter()
    evaluate.run(ecfg, w / "hutchinson" / "student.pt", w / "t" / "teacher.pt", w / "c.h5",
                 w / "eval.json", w / "cl" / "classifier.pt")
    secs = time.perf_counter() - t0
    gpu_s = gp.evaluate_nfe(ecfg, ccfg["n_test"]) / (nfe / rec.data["mnist_gpu"]["couplings"][
        "seconds"])
    rec.put("mnist_gpu.evaluate", {"seconds": secs, "network_s_estimate": gpu_s,
                                   "n_samples": ecfg["n_samples"]})
    # the CPU part of an evaluation at the preset's n_samples: the measured time less its
    # network evaluations at the couplings' rate (toy sizes on the CPU: scaled by n_samples)
    pre = config.stage_config("evaluate", "mnist_gpu")
    cpu_s = max(0.0, secs - gpu_s) * pre["n_samples"] / ecfg["n_samples"]
    rec.put("mnist_gpu.eval_cpu_s", cpu_s)
    code = ("import torch, reflowma.cli; from reflowma.stages import teacher, reflow, "
            f"evaluate; torch.zeros(1, device={dev.type!r}).sum().item()")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    rec.put("mnist_gpu.startup_s", time.perf_counter() - t0)


def probe_worker(dev: str, steps_log: int, start_at: float, out: Path, net: dict | None,
                 batch: int | None) -> None:
    """One process of the concurrency probe: the mnist_gpu teacher stage, its first logged
    step held until ``start_at`` (all workers then train at once)."""
    from reflowma.infra import config
    from reflowma.stages import teacher

    o = {"device": dev, **prefixed("train", {"steps": 3 * steps_log, "log_every": steps_log,
                                             "checkpoint_every": 10**6}),
         "eval.n_samples": 16, "eval.batch_size": 16}
    if net:
        o["net"] = net
    if batch:
        o["train.batch_size"] = batch
    cfg = config.stage_config("teacher", "mnist_gpu", ov(o))
    t = StepTimer(wait_until=start_at)
    teacher.run(cfg, out.parent / out.stem, t)
    out.write_text(json.dumps({"seconds_per_step": t.seconds_per_step()}))


def section_concurrency(ctx: Context, alone_step_s: float | None) -> None:
    """How many mnist_gpu teacher jobs the device serves at full speed each (``saturation``):
    ``workers`` processes (the preset's cores / threads per job) train at once; the aggregate
    rate over one job's rate alone, between 1 and ``workers``."""
    from reflowma.infra import grid as rgrid

    S = ctx.size
    pre = rgrid.load_preset("mnist_gpu")
    workers = S.get("probe_workers") or 16 // int(rgrid.rule_resources(pre, "teacher")[
        "threads"])
    part = ctx.work / "mnist_gpu.json"  # the mnist_gpu section's rate alone
    alone = alone_step_s or (json.loads(part.read_text()).get("mnist_gpu", {}).get(
        "teacher_step_s") if part.exists() else None)
    L = max(2, int(S["probe_seconds"] / 2 / alone)) if alone else S["mnist_log_every"]
    start_at = time.time() + (20.0 if ctx.dev.type == "cuda" else 5.0)
    procs, outs = [], []
    for i in range(workers):
        out = ctx.work / "probe" / f"w{i}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, __file__, "--probe-worker", "--device", ctx.dev.type,
                "--probe-log-every", str(L), "--probe-start-at", str(start_at), "--probe-out",
                str(out)]
        if S["mnist_net"]:
            args += ["--probe-net", json.dumps(S["mnist_net"]), "--probe-batch",
                     str(S["mnist_batch"])]
        procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL))
        outs.append(out)
    for pr in procs:
        pr.wait()
    per = [json.loads(o.read_text())["seconds_per_step"] for o in outs if o.exists()]
    row = {"workers": workers, "finished": len(per), "log_every": L,
           "seconds_per_step": per}
    if per and alone:
        agg = sum(alone / s for s in per)  # jobs' worth of the rate alone
        row.update({"alone_step_s": alone, "aggregate_speedup": agg,
                    "saturation": min(float(workers), max(1.0, agg))})
    ctx.rec.put("concurrency", row)


SECTIONS = {
    "env": section_env,
    "teacher_eager": section_teacher_eager,
    "reflow": section_reflow,
    "couplings_eager": lambda ctx: section_couplings(ctx, ["fp32", "bf16"]),
    "mnist_gpu": section_mnist_gpu,
    "concurrency": lambda ctx: section_concurrency(ctx, None),
    "teacher_combined": lambda ctx: section_teacher_compiled(ctx, ["combined",
                                                                   "combined_fp32"]),
    "couplings_compiled": lambda ctx: section_couplings(ctx, ["bf16_reduce_overhead"]),
    "teacher_compile_alone": lambda ctx: section_teacher_compiled(ctx, ["compile",
                                                                        "reduce_overhead"]),
    "couplings_compiled_fp32": lambda ctx: section_couplings(ctx, ["fp32_reduce_overhead"]),
}
# process groups, most important first: (sections, seconds allowed on CUDA); the CPU runs
# every group that needs no compiler, and records the others as skipped
GROUPS = [(("env", "teacher_eager", "reflow", "couplings_eager", "mnist_gpu"), 150),
          (("concurrency",), 60),
          (("teacher_combined",), 170),
          (("couplings_compiled",), 80),
          (("teacher_compile_alone",), 110),
          (("couplings_compiled_fp32",), 60)]
COMPILED = {"teacher_combined", "couplings_compiled", "teacher_compile_alone",
            "couplings_compiled_fp32"}


# --- derived figures, table ----------------------------------------------------------------

def derive(r: dict, archive: Path) -> dict:
    """The headline keys from the sections' rows (None where a row is missing); ``archive``:
    the CIFAR-format file the cifar10 configs point to."""
    t = r.setdefault("teacher", {})
    lev = t.get("levers", {})
    flops = r.get("flops", {}).get("cifar10", {}).get("train_gflop_per_image")
    rates = {k: v["images_per_s"] for k, v in lev.items() if "images_per_s" in v
             and v.get("batch") == t.get("plain", {}).get("batch")}
    if "plain" in t:
        rates["plain"] = t["plain"]["images_per_s"]
    if rates:
        best = max(rates, key=rates.get)
        t["images_per_s"], t["best"] = rates[best], best
        if flops and r.get("peak_bf16_tflops"):
            t["mfu"] = rates[best] * flops * 1e9 / (r["peak_bf16_tflops"] * 1e12)
    # bf16 over fp32 with every other lever the same: the compiled combination, else the
    # eager bf16 lever against the plain step
    for bf, fp in (("combined", "combined_fp32"), ("bf16", "plain")):
        if rates.get(bf) and rates.get(fp):
            t["bf16_speedup"], t["bf16_speedup_of"] = rates[bf] / rates[fp], f"{bf} / {fp}"
            break
    t.setdefault("images_per_s", None)
    t.setdefault("mfu", None)
    t.setdefault("bf16_speedup", None)
    r.setdefault("reflow", {}).setdefault("hutchinson_vs_control", None)
    c = r.setdefault("couplings", {})
    var = {k: v for k, v in c.get("variants", {}).items() if "images_per_s" in v}
    if var:
        best = max(var, key=lambda k: var[k]["images_per_s"])
        c["images_per_s"], c["best"] = var[best]["images_per_s"], best
        c["rms_diff_vs_fp32_eager"] = {k: v.get("rms_diff") for k, v in var.items()
                                       if k != "fp32"}
        c["relative_rms_diff_vs_fp32_eager"] = {k: v.get("relative") for k, v in var.items()
                                                if k != "fp32"}
    c.setdefault("images_per_s", None)
    r["cifar10_grid"] = cifar_projection(r, archive)
    r["cifar10_grid_hours"] = r["cifar10_grid"].get("hours")
    r["mnist_gpu"] = {**r.get("mnist_gpu", {}), **mnist_projection(r)}
    r["mnist_gpu_minutes"] = r["mnist_gpu"].get("minutes")
    r["goals"] = goal_rows(r)
    return r


CIFAR_FORMULA = ("hours = [teacher.steps x s/step(best teacher) + (n_train + n_test) x "
                 "4 x sum(step_counts(times, steps)) / couplings.images_per_s + sum over the "
                 "grid's students of steps x (s/step control, or warm_start x control + "
                 "(1 - warm_start) x Hutchinson) + per evaluation the image-evaluations of "
                 "benchmarks/gpu_projection.evaluate_nfe / couplings.images_per_s + "
                 "classifier.steps x s/step(teacher) x 0] / 3600, one seed, one GPU, jobs one "
                 "after another; start-up and CPU metrics not counted")


def cifar_projection(r: dict, archive: Path) -> dict:
    from reflowma.infra import grid as rgrid

    t, rf, c = r.get("teacher", {}), r.get("reflow", {}), r.get("couplings", {})
    need = [t.get("images_per_s"), rf.get("control"), rf.get("hutchinson"),
            c.get("images_per_s")]
    if any(x is None for x in need):
        return {"hours": None, "missing": "a teacher, reflow or couplings figure",
                "formula": CIFAR_FORMULA}
    batch = t["levers"].get(t["best"], t.get("plain", {})).get("batch", 128)
    rates = gp.Rates(teacher_step_s=batch / t["images_per_s"],
                     control_step_s=rf["control"]["seconds_per_step"],
                     hutchinson_step_s=rf["hutchinson"]["seconds_per_step"],
                     classifier_step_s=0.0, nfe_per_s=c["images_per_s"])
    pre = rgrid.load_preset("cifar10")
    pre["stages"]["data"]["path"] = str(archive)
    g = rgrid.load_grid("cifar10")
    cfgs = rgrid.stage_configs(pre, g, rgrid.expand(g))
    jobs = gp.jobs(cfgs, lambda rule: rgrid.rule_resources(pre, rule), rates)
    by_rule: dict = {}
    for j in jobs:
        by_rule[j.rule] = by_rule.get(j.rule, 0.0) + j.gpu_s / 3600
    return {"hours": gp.cifar_hours(jobs), "hours_by_stage": by_rule,
            "teacher_batch": batch, "formula": CIFAR_FORMULA}


def mnist_rates(m: dict, concurrency: dict) -> gp.Rates | None:
    keys = ("teacher_step_s", "control_step_s", "hutchinson_step_s", "classifier_step_s",
            "nfe_per_s")
    if any(k not in m for k in keys):
        return None
    return gp.Rates(**{k: m[k] for k in keys}, startup_s=m.get("startup_s", 0.0),
                    eval_cpu_s=m.get("eval_cpu_s", 0.0), report_s=gp.ASSUMED["report_s"],
                    saturation=concurrency.get("saturation", gp.ASSUMED["saturation"]))


def mnist_projection(r: dict) -> dict:
    """Projected minutes of ``snakemake --cores 16 --config preset=mnist_gpu grid=mnist_gpu``
    from the measured rates (benchmarks/gpu_projection.py), and of the same study at full
    length (teacher 20,000 steps, students 5,000)."""
    from reflowma.infra import grid as rgrid

    rates = mnist_rates(r.get("mnist_gpu", {}), r.get("concurrency", {}))
    if rates is None:
        return {"minutes": None, "missing": "a mnist_gpu rate"}
    out = {"rates": rates.__dict__,
           "saturation_measured": "saturation" in r.get("concurrency", {})}
    g = rgrid.load_grid("mnist_gpu")
    for tag, steps in (("minutes", None), ("full_length_minutes", (20000, 5000))):
        pre = rgrid.load_preset("mnist_gpu")
        if steps:
            pre["stages"]["teacher"]["train"]["steps"] = steps[0]
            pre["stages"]["reflow"]["train"]["steps"] = steps[1]
        cfgs = rgrid.stage_configs(pre, g, rgrid.expand(g))
        jobs = gp.jobs(cfgs, lambda rule, pre=pre: rgrid.rule_resources(pre, rule), rates)
        out[tag] = gp.makespan(jobs, 16, rates.saturation) / 60
        if not steps:
            out["jobs"] = len(jobs)
            out["critical_path_minutes"] = gp.critical_path(jobs) / 60
    return out


def goal_rows(r: dict) -> list:
    rows = []
    for key, goal, kind in GOALS:
        node = r
        for k in key.split("."):
            node = node.get(k) if isinstance(node, dict) else None
        met = None if node is None else (node >= goal if kind == "min" else node <= goal)
        rows.append({"key": key, "goal": goal, "kind": kind, "measured": node, "met": met})
    return rows


def table(r: dict) -> str:
    lines = [f"GPU check: {r.get('device')} (torch {r.get('torch')}), "
             f"{r.get('seconds', 0):.0f} s",
             f"{'key':34s} {'goal':>12s} {'measured':>12s}  met"]
    for row in r["goals"]:
        op = ">=" if row["kind"] == "min" else "<="
        m = row["measured"]
        lines.append(f"{row['key']:34s} {op + format(row['goal'], 'g'):>12s} "
                     f"{'n/a' if m is None else format(m, '.4g'):>12s}  "
                     f"{'n/a' if row['met'] is None else ('yes' if row['met'] else 'NO')}")
    t = r.get("teacher", {})
    if t.get("plain"):
        lines.append(f"teacher levers (cifar10 net, images/s; plain fp32 eager "
                     f"{t['plain']['images_per_s']:.0f} at batch {t['plain']['batch']}):")
        for name, v in t.get("levers", {}).items():
            if "images_per_s" in v:
                sp = v["images_per_s"] / t["plain"]["images_per_s"]
                lines.append(f"  {name:22s} {v['images_per_s']:10.0f}  x{sp:.2f} "
                             f"(batch {v['batch']})")
            else:
                lines.append(f"  {name:22s} {v.get('skipped') or v.get('error', 'n/a')}")
    if t.get("mfu") is not None:
        lines.append(f"teacher.mfu {t['mfu']:.3f} ({t['best']}; peak bf16 matmul "
                     f"{r['peak_bf16_tflops']:.3g} TFLOP/s)")
    for name, v in r.get("couplings", {}).get("variants", {}).items():
        if "images_per_s" in v:
            extra = (f", RMS vs fp32 eager {v['rms_diff']:.3g} ({v['relative']:.2g} relative)"
                     if "rms_diff" in v else "")
            lines.append(f"couplings {name:22s} {v['images_per_s']:10.0f} image-evals/s{extra}")
    g = r.get("cifar10_grid", {})
    if g.get("hours") is not None:
        lines.append("cifar10 grid, one seed, hours by stage: " + ", ".join(
            f"{k} {v:.2f}" for k, v in g["hours_by_stage"].items()))
    m = r.get("mnist_gpu", {})
    if m.get("minutes") is not None:
        sat = m["rates"]["saturation"]
        lines.append(f"mnist_gpu: {m['minutes']:.1f} min projected (critical path "
                     f"{m['critical_path_minutes']:.1f}; full length "
                     f"{m['full_length_minutes']:.1f} min); {sat:.1f} jobs share the GPU at "
                     f"full speed ({'measured' if m['saturation_measured'] else 'assumed'})")
    for name, s in r.get("sections", {}).items():
        if s.get("status") != "ok":
            lines.append(f"section {name}: {s.get('status')}")
    return "\n".join(lines)


# --- orchestration -------------------------------------------------------------------------

def run_group(names, dev: str, work: Path, timeout: float) -> dict:
    """The sections ``names`` in one child process (``--sections``) within ``timeout``
    seconds; returns {section: status} and merges nothing (the caller reads the parts)."""
    args = [sys.executable, __file__, "--sections", ",".join(names), "--device", dev,
            "--work", str(work), "--deadline", str(time.time() + timeout)]
    t0 = time.perf_counter()
    # its own process group: on a timeout the group goes (the probe's workers too)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=timeout)
        status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        status = f"timed out after {timeout:.0f} s"
    tail = (log or "")[-2000:]
    out = {}
    for n in names:
        f = work / f"{n}.status"
        out[n] = (json.loads(f.read_text()) if f.exists() else
                  {"status": status, "seconds": time.perf_counter() - t0})
        if out[n]["status"] != "ok":
            out[n]["log_tail"] = tail
    return out


def merge(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            merge(dst[k], v)
        else:
            dst[k] = v


def orchestrate(dev: str, out: Path, budget: float, work: Path) -> dict:
    t_start = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"device_type": dev, "budget_s": budget, "sections": {},
                    "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    min_share = 0.5  # a group starts only with at least half of its allowance left
    for names, allowance in GROUPS:
        if dev != "cuda" and set(names) <= COMPILED:
            for n in names:
                result["sections"][n] = {"status": "skipped: compilation is measured on "
                                                   "CUDA only"}
            continue
        left = budget - (time.perf_counter() - t_start)
        allow = allowance if dev == "cuda" else budget
        if left < min_share * allow:
            for n in names:
                result["sections"][n] = {"status": f"skipped: {left:.0f} s of the budget "
                                                   "left"}
            continue
        result["sections"].update(run_group(names, dev, work, min(allow, left)))
        for n in names:
            part = work / f"{n}.json"
            if part.exists():
                merge(result, json.loads(part.read_text()))
        write(out, finish(result, work, t_start))
    return finish(result, work, t_start)


def finish(result: dict, work: Path, t_start: float) -> dict:
    r = json.loads(json.dumps(result, default=float))
    r["seconds"] = time.perf_counter() - t_start
    try:
        derive(r, work / "cifar-10-python.tar.gz")
    except Exception as e:  # the figures measured are kept; the derived ones say why
        r["derive_error"] = f"{type(e).__name__}: {e}"
        r.setdefault("goals", goal_rows(r))
    return r


def write(path: Path, r: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(r, indent=2, default=float) + "\n")
    tmp.replace(path)


def run_sections(names, dev: str, work: Path, deadline: float) -> None:
    """Child process: each section writes ``work/<name>.json`` and ``work/<name>.status``."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    d = torch.device(dev)
    for n in names:
        rec = Recorder(work / f"{n}.json")
        t0 = time.perf_counter()
        try:
            SECTIONS[n](Context(d, work, rec, deadline))
            status = "ok"
        except Exception as e:  # the next section still runs
            import traceback

            traceback.print_exc()
            status = f"error: {type(e).__name__}: {e}"[:500]
        (work / f"{n}.status").write_text(json.dumps(
            {"status": status, "seconds": time.perf_counter() - t0}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", help="the JSON to write (default: OUT_DIR/gpu_<device name>.json)")
    ap.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--budget-s", type=float, default=330.0)
    ap.add_argument("--work", help="scratch folder (default: a fresh one under /tmp)")
    ap.add_argument("--sections", help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--probe-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--probe-log-every", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--probe-start-at", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--probe-out", help=argparse.SUPPRESS)
    ap.add_argument("--probe-net", help=argparse.SUPPRESS)
    ap.add_argument("--probe-batch", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.probe_worker:
        os.environ.setdefault("TQDM_DISABLE", "1")
        probe_worker(a.device, a.probe_log_every, a.probe_start_at, Path(a.probe_out),
                     json.loads(a.probe_net) if a.probe_net else None, a.probe_batch)
        return 0
    if a.sections:
        run_sections(a.sections.split(","), a.device, Path(a.work),
                     a.deadline or time.time() + 3600)
        return 0
    import tempfile

    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="gpu_bench_"))
    dev = torch.device(a.device)
    out = Path(a.out) if a.out else Path(a.out_dir) / f"gpu_{slug(device_name(dev))}.json"
    r = orchestrate(dev.type, out, a.budget_s, work)
    write(out, r)
    print(table(r))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
