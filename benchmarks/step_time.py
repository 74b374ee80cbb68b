"""Seconds per reflow training step for each arm of the ablation, as ratios to plain TM.

Run: `.venv/bin/python benchmarks/step_time.py [--device cuda] [--dim 2] [--batch 256]`.
Arms: plain trajectory matching (TM), + window-start term, + marginal regularizer with each
log-det mode (exact / trace / hutchinson), the same sharing the window-start term's forward
(``shared_*``: ``regularizer.share_window_start``), + each sample discrepancy in place of the
reverse KL (mmd / sliced_w2 / sinkhorn, their default settings; ``--arms`` picks a subset).
Each arm's loss is the ``Objective`` that the reflow stage builds from a reflow config (the same
objects training uses), on the same network, all timed in the same run. `make bench`
(benchmarks/run.py, section ``step``) times the control and regularizer arms at d = 2, 64, 784
with ``arm_config`` and ``make_step``; this script is the one for the discrepancy arms, a
device, K, width, steps.
"""

from __future__ import annotations

import argparse
import time

import torch

from reflowma import objectives
from reflowma.infra import config
from reflowma.models import mlp

ARMS = {
    "tm": {},
    "tm+ws": {"window_start_weight": 1.0},
    "reg_exact": {"window_start_weight": 1.0, "regularizer.weight": 0.1,
                  "regularizer.logdet": "exact"},
    "reg_trace": {"window_start_weight": 1.0, "regularizer.weight": 0.1,
                  "regularizer.logdet": "trace"},
    "reg_hutchinson": {"window_start_weight": 1.0, "regularizer.weight": 0.1,
                       "regularizer.logdet": "hutchinson"},
    **{f"shared_{m}": {"window_start_weight": 1.0, "regularizer.weight": 0.1,
                       "regularizer.logdet": m, "regularizer.share_window_start": True}
       for m in ("exact", "trace", "hutchinson")},
    **{f"disc_{d}": {"window_start_weight": 1.0, "regularizer.weight": 1.0,
                     "regularizer.discrepancy": d} for d in ("mmd", "sliced_w2", "sinkhorn")},
}


def arm_config(arm: str, K: int, batch: int, reg_batch: int) -> dict:
    """The reflow config of one arm (defaults + the arm's fields), regularizer on from step 0."""
    over = {"K": K, "train.batch_size": batch, "regularizer.batch_size": reg_batch,
            "regularizer.warm_start": 0.0, "regularizer.exact_max_dim": 10**6, **ARMS[arm]}
    return config.stage_config("reflow", None, [f"{k}={v}" for k, v in over.items()])


def make_step(cfg: dict, v, teacher, opt, ends, gen, dev):
    ctx = objectives.Context(ends, cfg["K"], dev, teacher, cfg["train"]["steps"])
    loss_fn = objectives.build(cfg, ctx)

    def step():
        loss, _ = loss_fn(v, 10**9, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dim", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reg-batch", type=int, default=None, help="regularizer batch [--batch]")
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--K", type=int, default=4)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms [all]")
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    v = mlp.MLPVelocity((args.dim,), args.width, 3).to(dev)
    teacher = mlp.MLPVelocity((args.dim,), args.width, 3).to(dev).requires_grad_(False)
    ends = torch.randn(4096, args.K + 1, args.dim)
    arms = [a for a in args.arms.split(",")
            if args.dim <= 16 or a not in ("reg_exact", "shared_exact")]
    res = {}
    for arm in arms:
        cfg = arm_config(arm, args.K, args.batch, args.reg_batch or args.batch)
        opt = torch.optim.Adam(v.parameters(), lr=1e-4)
        step = make_step(cfg, v, teacher, opt, ends, torch.Generator().manual_seed(0), dev)
        for _ in range(5):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        res[arm] = (time.perf_counter() - t0) / args.steps
    print(f"device={dev} dim={args.dim} batch={args.batch} width={args.width} K={args.K} "
          f"threads={torch.get_num_threads()}")
    print(f"{'arm':>16} {'ms/step':>9} {'x TM':>6}")
    for arm, s in res.items():
        print(f"{arm:>16} {1e3 * s:>9.2f} {s / res['tm']:>6.2f}")


if __name__ == "__main__":
    main()
