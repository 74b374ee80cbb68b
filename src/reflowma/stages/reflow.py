"""Reflow stage: a student trained on the teacher's couplings.

Vanilla (K = 1) or piecewise (K windows, one network for all): uniform/U-shaped/logit-normal
t, the window's straight target between the teacher states at its ends; optionally the
window-start term (the baseline of every comparison, docs/math.md) and the
marginal-alignment regularizer (``regularizer.weight > 0``).

Under ``train.data_on_device`` (``auto``: on CUDA) the couplings' window ends live on the
device and every draw of a step comes from a generator there. The stage evaluates nothing:
the held-out trajectory-matching loss is the evaluate stage's (``heldout_tm_loss`` in
eval.json).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from pathlib import Path

import torch

from reflowma import models, objectives
from reflowma.core import interpolant
from reflowma.core.seeding import derive, device, fingerprint, generator
from reflowma.infra import distributed
from reflowma.infra.storage.atomic import write_json
from reflowma.infra.storage.checkpoint import cpu_state_dict, save_model
from reflowma.infra.storage.couplings import Couplings
from reflowma.registry import InputError
from reflowma.stages.common import check_same_data, load_model
from reflowma.training.loop import (
    ChannelsLastInputs,
    autocast,
    check_amp,
    check_channels_last,
    fit,
    identity,
    make_optimizer,
    on_accelerator,
    optimizer_step,
)

log = logging.getLogger(__name__)


# An equal-time control plans margin x (budget / its own pace) steps, so that in the usual case
# the time budget, not the step count, ends it (with cosine decay the LR is then at 2 % of its
# peak: 0.5 (1 + cos(pi / 1.1))); one that runs faster than its measured pace ends by steps, and
# its record says so (stopped_by).
EQUAL_TIME_MARGIN = 1.1
PACE_STEPS = 10  # timed steps of the pace measurement, after PACE_WARMUP untimed ones
PACE_WARMUP = 2
PLAN_FILE = "time_plan.json"


def train_seconds(metrics: dict) -> float:
    """Training seconds of a student's ``metrics.json`` (``seconds`` in older records)."""
    m = metrics.get("metrics", metrics)
    return float(m["train_seconds"] if "train_seconds" in m else m["seconds"])


def equal_time_of(metrics_path: str) -> dict:
    """``reflow --time-of``: the equal-time control's override, ``train.time_budget_s`` = the
    training seconds of the student whose metrics.json is ``metrics_path``, and what the run
    record keeps of it (``{"overrides": [...], "info": {...}}``)."""
    try:
        budget = train_seconds(json.loads(Path(metrics_path).read_text()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"--time-of: {metrics_path!r} is not a readable student "
                         f"metrics.json with its training seconds ({e!r})") from None
    if not budget > 0:
        raise InputError(f"--time-of: training seconds {budget!r} in {metrics_path!r} are not "
                         "> 0")
    return {"overrides": [(["train", "time_budget_s"], budget)],
            "info": {"time_of": metrics_path, "time_budget_s": budget}}


def planned_steps(budget_s: float, pace_s: float, margin: float = EQUAL_TIME_MARGIN) -> int:
    """Steps a time-budgeted run plans (the span of its LR schedule): ceil(margin * budget /
    seconds per step), at least 1."""
    return max(1, math.ceil(margin * budget_s / pace_s))


def measure_pace(model, loss_fn, tr: dict, seed: int, steps: int = PACE_STEPS,
                 warmup: int = PACE_WARMUP, draws_on: torch.device | None = None) -> float:
    """Seconds per optimizer step of ``loss_fn`` (forward, backward, clipping, Adam) on a
    throwaway copy of ``model`` with a generator of its own on ``draws_on`` (the CPU if None):
    the run's weights and random stream are untouched. The run's optimizer, amp and
    channels-last settings apply (not ``compile``: its compile time is no step's). The first
    ``warmup`` steps (lazy initialisation) are not timed."""
    m = copy.deepcopy(model)
    net = m
    if tr.get("channels_last"):
        net = ChannelsLastInputs(m.to(memory_format=torch.channels_last))
    opt = make_optimizer(m, tr)
    g = generator(seed, "reflow-pace", device=draws_on)
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        with autocast(tr.get("amp", "none"), m):
            loss, _ = loss_fn(net, i, g)
        optimizer_step(m, opt, loss, tr["grad_clip"])
    float(loss.detach())  # waits for the device
    return (time.perf_counter() - t0) / steps


def load_ends(couplings: Couplings, split: str, K: int) -> torch.Tensor:
    """Teacher states at the K + 1 window ends, ``[N, K + 1, *data]``."""
    try:
        idx = interpolant.grid_indices(couplings.times, K)
    except ValueError:
        raise InputError(f"reflow.K = {K}: couplings {str(couplings.path)!r} store window ends "
                         f"for K in {couplings.attrs['windows']} only") from None
    return torch.from_numpy(couplings.states(split, idx))


def check_inputs(cfg, couplings_path, teacher_path, dev):
    """Load teacher and couplings and check they belong together (before any training)."""
    teacher, meta, sha = load_model(teacher_path, "teacher", dev)
    check_same_data("reflow", cfg["data"], meta["data"], teacher_path)
    C = Couplings(couplings_path)
    if C.attrs.get("teacher_sha256") != sha:
        raise InputError(f"couplings {str(couplings_path)!r} were made by another teacher "
                         f"(sha256 {str(C.attrs.get('teacher_sha256'))[:12]}...) than "
                         f"{str(teacher_path)!r} ({sha[:12]}...)")
    reg = cfg["regularizer"]
    d = int(torch.tensor(meta["data_shape"]).prod())
    if (reg["weight"] > 0 and reg["discrepancy"] == "reverse_kl"
            and reg["logdet"] in ("exact", "trace") and d > reg["exact_max_dim"]):
        # both take d vector-Jacobian products per batch (the full Jacobian)
        raise InputError(f"reflow.regularizer.logdet: {reg['logdet']!r} needs d <= "
                         f"regularizer.exact_max_dim = {reg['exact_max_dim']}, data has d = {d}; "
                         "allowed here: hutchinson")
    if cfg["init"] == "teacher" and cfg["net"] != meta["net"]:
        raise InputError(f"reflow.net: {cfg['net']} differs from the net {meta['net']} of "
                         f"teacher {str(teacher_path)!r}; init: teacher needs the same network "
                         "(or set init: scratch)")
    ends = load_ends(C, "train", cfg["K"])  # a K the couplings do not store fails here
    return teacher, meta, sha, C, ends


def time_plan(out: Path, budget_s: float, pace) -> dict:
    """The step plan of a time-budgeted run: ``{"time_budget_s", "pace_s_per_step", "steps",
    "margin"}``, measured once (``pace()``) and kept in ``out/time_plan.json``, so that a
    resumed run keeps its plan (and its resume state's fingerprint)."""
    path = out / PLAN_FILE
    if path.is_file():
        plan = json.loads(path.read_text())
        if plan.get("time_budget_s") == budget_s and plan.get("margin") == EQUAL_TIME_MARGIN:
            return plan
    pace_s = pace()
    if distributed.world_size() > 1:  # every rank plans the same steps
        pace_s = distributed.all_reduce([pace_s], "max")[0]
    plan = {"time_budget_s": budget_s, "pace_s_per_step": pace_s, "margin": EQUAL_TIME_MARGIN,
            "steps": planned_steps(budget_s, pace_s)}
    if distributed.is_main():
        write_json(path, plan)
    log.info("time plan: budget %.3g s at %.3g s/step -> %d steps", budget_s, pace_s,
             plan["steps"])
    return plan


def reflow_identity(cfg: dict) -> dict:
    """``identity`` of a reflow config without ``regularizer.series_order`` where no mode reads
    it (``logdet`` other than ``series``): the field changes no student of the other modes, so
    neither their resume state nor their model file."""
    ident = identity(cfg)
    reg = ident["regularizer"]
    if reg.get("logdet") != "series":
        ident["regularizer"] = {k: v for k, v in reg.items() if k != "series_order"}
    return ident


def run(cfg: dict, couplings_path, teacher_path, out_dir, on_log=None,
        plan_steps: bool = False) -> dict:
    """Train a student; writes ``student.pt`` (EMA weights) and ``metrics.json`` in out_dir.

    ``plan_steps`` with ``train.time_budget_s`` set (an equal-time control): ``train.steps``
    is replaced by ``planned_steps`` of the budget and this job's own measured pace
    (``measure_pace``), recorded as ``metrics.time_plan``."""
    out = Path(out_dir)
    dev = device(cfg["device"])
    distributed.init(dev)
    dev, world_size = distributed.local_device(dev), distributed.world_size()
    check_amp(cfg["train"].get("amp", "none"), dev)  # before anything is written
    teacher, meta, sha, C, ends = check_inputs(cfg, couplings_path, teacher_path, dev)
    K, shape = cfg["K"], tuple(meta["data_shape"])
    check_channels_last(cfg["train"], shape, "reflow")
    torch.manual_seed(derive(cfg["seed"], "student-init"))
    student = models.build(shape, cfg["net"]).to(dev)
    if cfg["init"] == "teacher":
        student.load_state_dict(teacher.state_dict())
    student.requires_grad_(True).train()
    tr, reg = cfg["train"], cfg["regularizer"]
    # the window ends and every draw on the device, or both on the CPU (batches copied over)
    draws_on = dev if on_accelerator(tr.get("data_on_device", "auto"), dev) else None
    if draws_on is not None:
        ends = ends.to(draws_on)
    ranks = ("rank", distributed.rank()) if world_size > 1 else ()
    g = generator(cfg["seed"], "reflow-train", K, *ranks, device=draws_on)
    N = ends.shape[0]
    local = cfg  # the objectives see this rank's share of each batch
    if world_size > 1:
        local = {**cfg, "train": {**tr, "batch_size": distributed.shard_batch(
                     tr["batch_size"], "reflow.train.batch_size")},
                 "regularizer": {**reg, "batch_size": distributed.shard_batch(
                     reg["batch_size"], "reflow.regularizer.batch_size")
                     if reg["weight"] > 0 else reg["batch_size"]}}
    loss_fn = objectives.build(local, objectives.Context(ends, K, dev, teacher, tr["steps"]))
    log.info("reflow: K=%d, %d couplings, window-start weight %g, regularizer weight %g (%s)",
             K, N, cfg["window_start_weight"], reg["weight"],
             reg["logdet"] if reg["discrepancy"] == "reverse_kl" else reg["discrepancy"])
    out.mkdir(parents=True, exist_ok=True)  # after the checks: bad inputs write nothing
    plan = None
    if plan_steps and tr.get("time_budget_s"):
        plan = time_plan(out, tr["time_budget_s"], lambda: measure_pace(
            student, loss_fn, tr, cfg["seed"], draws_on=draws_on))
        tr = {**tr, "steps": plan["steps"]}
        cfg = {**cfg, "train": tr}
        loss_fn = objectives.build(local | {"train": {**local["train"], "steps": tr["steps"]}},
                                   objectives.Context(ends, K, dev, teacher, tr["steps"]))
    fp = fingerprint(reflow_identity(cfg), sha, C.attrs["times"])
    t0 = time.perf_counter()
    info = {}
    ema, history = fit(student, loss_fn, tr, g, out / "state.pt", fp, f"reflow K={K}", on_log,
                       info)
    seconds = time.perf_counter() - t0
    scale = {"world_size": world_size, "batch_per_rank": local["train"]["batch_size"]}
    if not distributed.is_main():
        return scale
    smeta = {"net": cfg["net"], "data_shape": list(shape), "data": meta["data"], "K": K,
             "teacher_sha256": sha, "fingerprint": fp}
    ssha = save_model(out / "student.pt", "student", cpu_state_dict(ema), smeta)
    (out / "state.pt").unlink(missing_ok=True)
    (out / PLAN_FILE).unlink(missing_ok=True)
    # steps: the planned count (the LR schedule's span); steps_done: those trained (fewer when
    # a time budget ended the run); train_seconds: the step loop's time over all resumes
    # (seconds: this process's, fit's set-up included)
    metrics = {"final_loss": history[-1]["loss"] if history else float("nan"),
               "steps": tr["steps"], "steps_done": info["steps_done"],
               "train_seconds": info["train_seconds"], "time_budget_s": info["time_budget_s"],
               "stopped_by": info["stopped_by"], "seconds": seconds,
               "seconds_per_step": info["train_seconds"] / max(info["steps_done"], 1),
               "sha256": ssha, **scale, **({"time_plan": plan} if plan else {})}
    write_json(out / "metrics.json", {"metrics": metrics, "history": history})
    log.info("reflow: final loss %.4g, wrote %s", metrics["final_loss"], out / "student.pt")
    return metrics
