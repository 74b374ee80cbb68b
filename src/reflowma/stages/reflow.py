"""Reflow stage: a student trained on the teacher's couplings.

Vanilla (K = 1) or piecewise (K windows, one network for all): uniform/U-shaped/logit-normal
t, the window's straight target between the teacher states at its ends; optionally the
window-start term (the baseline of every comparison, docs/math.md) and the
marginal-alignment regularizer (``regularizer.weight > 0``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from reflowma import models
from reflowma.core import interpolant, losses, time_samplers
from reflowma.core.seeding import derive, device, fingerprint, generator
from reflowma.infra.storage.atomic import write_json
from reflowma.infra.storage.checkpoint import save_model
from reflowma.infra.storage.couplings import Couplings
from reflowma.objectives import marginal as regularizer
from reflowma.registry import InputError
from reflowma.stages.common import check_same_data, load_model
from reflowma.training.loop import fit

log = logging.getLogger(__name__)


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
    if reg["weight"] > 0 and reg["logdet"] == "exact" and d > reg["exact_max_dim"]:
        raise InputError(f"reflow.regularizer.logdet: 'exact' needs d <= "
                         f"regularizer.exact_max_dim = {reg['exact_max_dim']}, data has d = {d}; "
                         "allowed here: trace, hutchinson")
    if cfg["init"] == "teacher" and cfg["net"] != meta["net"]:
        raise InputError(f"reflow.net: {cfg['net']} differs from the net {meta['net']} of "
                         f"teacher {str(teacher_path)!r}; init: teacher needs the same network "
                         "(or set init: scratch)")
    return teacher, meta, sha, C


def run(cfg: dict, couplings_path, teacher_path, out_dir, on_log=None) -> dict:
    """Train a student; writes ``student.pt`` (EMA weights) and ``metrics.json`` in out_dir."""
    out = Path(out_dir)
    dev = device(cfg["device"])
    teacher, meta, sha, C = check_inputs(cfg, couplings_path, teacher_path, dev)
    out.mkdir(parents=True, exist_ok=True)  # after the checks: bad inputs write nothing
    K, shape = cfg["K"], tuple(meta["data_shape"])
    ends = load_ends(C, "train", K)
    torch.manual_seed(derive(cfg["seed"], "student-init"))
    student = models.build(shape, cfg["net"]).to(dev)
    if cfg["init"] == "teacher":
        student.load_state_dict(teacher.state_dict())
    student.requires_grad_(True).train()
    g = generator(cfg["seed"], "reflow-train", K)
    ts, tr, reg = cfg["time_sampler"], cfg["train"], cfg["regularizer"]
    sample_t = time_samplers.get(ts["name"])
    score = regularizer.teacher_score_fn(teacher)
    reg_windows = list(range(K)) if reg["windows"] == "all" else list(reg["windows"])
    reg_from = int(reg["warm_start"] * tr["steps"])
    N, bs = ends.shape[0], tr["batch_size"]

    def loss_fn(v, step, gen):
        b = torch.randint(0, N, (bs,), generator=gen)
        t = sample_t(bs, gen, **ts).to(ends.dtype)
        xt, target = interpolant.piecewise_pair(ends[b], t, K)
        loss = losses.tm_loss(v, xt.to(dev), t.to(dev), target.to(dev), cfg["loss"]["name"],
                              cfg["loss"]["huber_c"])
        extras = {"tm": loss.item()}
        if cfg["window_start_weight"] > 0:
            b2 = torch.randint(0, N, (bs,), generator=gen)
            k = torch.randint(0, K, (bs,), generator=gen)
            x0, tgt, tk = interpolant.window_start_pair(ends[b2], k, K)
            ws = losses.tm_loss(v, x0.to(dev), tk.to(dev), tgt.to(dev), cfg["loss"]["name"],
                                cfg["loss"]["huber_c"])
            loss = loss + cfg["window_start_weight"] * ws
            extras["window_start"] = ws.item()
        if reg["weight"] > 0 and step >= reg_from:
            b3 = torch.randint(0, N, (reg["batch_size"],), generator=gen)
            k = torch.tensor(reg_windows)[torch.randint(0, len(reg_windows),
                                                        (reg["batch_size"],), generator=gen)]
            xk = ends[b3, k].to(dev)
            r, stats = regularizer.surrogate(
                v, score, xk, k.to(dev), K, logdet=reg["logdet"], fold_delta=reg["fold_delta"],
                eps=reg["eps"], rescale_end=reg["rescale_end"], n_probes=reg["n_probes"],
                generator=gen)
            loss = loss + reg["weight"] * r
            extras["reg"] = r.item()
            extras.update({f"reg_{k_}": v_ for k_, v_ in stats.items()})
        return loss, extras

    log.info("reflow: K=%d, %d couplings, window-start weight %g, regularizer weight %g (%s)",
             K, N, cfg["window_start_weight"], reg["weight"], reg["logdet"])
    fp = fingerprint(cfg, sha, C.attrs["times"])
    t0 = time.perf_counter()
    ema, history = fit(student, loss_fn, tr, g, out / "state.pt", fp, f"reflow K={K}", on_log)
    seconds = time.perf_counter() - t0
    test_ends = load_ends(C, "test", K)
    heldout = losses.heldout_tm_loss(ema.cpu(), test_ends, K, generator(cfg["seed"], "heldout"))
    smeta = {"net": cfg["net"], "data_shape": list(shape), "data": meta["data"], "K": K,
             "teacher_sha256": sha, "fingerprint": fp}
    ssha = save_model(out / "student.pt", "student", ema.state_dict(), smeta)
    (out / "state.pt").unlink(missing_ok=True)
    metrics = {"heldout_tm_loss": heldout, "final_loss": history[-1]["loss"],
               "steps": tr["steps"], "seconds": seconds,
               "seconds_per_step": seconds / tr["steps"],
               "sha256": ssha}
    write_json(out / "metrics.json", {"metrics": metrics, "history": history})
    log.info("reflow: held-out TM loss %.4f, wrote %s", heldout, out / "student.pt")
    return metrics
