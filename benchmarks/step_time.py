"""Seconds per reflow training step for each arm of the ablation, as ratios to plain TM.

Run: `.venv/bin/python benchmarks/step_time.py [--device cuda] [--dim 2] [--batch 256]`.
Arms: plain trajectory matching (TM), + window-start term, + marginal regularizer with each
log-det mode (exact / trace / hutchinson). All timed in the same run on the same network.
"""

from __future__ import annotations

import argparse
import time

import torch

from reflowma.core import interpolant, losses
from reflowma.models import mlp
from reflowma.objectives import marginal as regularizer


def make_step(arm: str, v, opt, ends, K, batch, gen, dev):
    score = regularizer.teacher_score_fn(v)  # any frozen field will do for timing
    N = ends.shape[0]

    def step():
        b = torch.randint(0, N, (batch,), generator=gen)
        t = torch.rand(batch, generator=gen)
        xt, tgt = interpolant.piecewise_pair(ends[b], t, K)
        loss = losses.tm_loss(v, xt.to(dev), t.to(dev), tgt.to(dev))
        if arm != "tm":
            k = torch.randint(0, K, (batch,), generator=gen)
            x0, tgt0, tk = interpolant.window_start_pair(ends[b], k, K)
            loss = loss + losses.tm_loss(v, x0.to(dev), tk.to(dev), tgt0.to(dev))
        if arm.startswith("reg_"):
            k = torch.randint(0, K, (batch,), generator=gen)
            r, _ = regularizer.surrogate(v, score, ends[b, k].to(dev), k.to(dev), K,
                                         logdet=arm[4:], generator=gen)
            loss = loss + 0.1 * r
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dim", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--K", type=int, default=4)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    v = mlp.MLPVelocity((args.dim,), args.width, 3).to(dev)
    ends = torch.randn(4096, args.K + 1, args.dim)
    arms = ["tm", "tm+ws", "reg_exact", "reg_trace", "reg_hutchinson"]
    if args.dim > 16:
        arms.remove("reg_exact")
    res = {}
    for arm in arms:
        opt = torch.optim.Adam(v.parameters(), lr=1e-4)
        step = make_step(arm, v, opt, ends, args.K, args.batch, torch.Generator().manual_seed(0),
                         dev)
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
