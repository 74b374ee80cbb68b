"""UNet throughput on one device (called by benchmarks/gpu_check.sh; runs on CPU too):
training steps/s of the teacher objective at a batch size in fp32 and (CUDA) bf16 autocast,
peak device memory of each, and Euler generation images/s (couplings-style, no grad).

The network is a preset's teacher UNet (default ``mnist``: 280,177 parameters on 1x28x28);
weights are random (throughput does not depend on them). Prints one JSON object and writes it
to ``--out`` when given.

    python benchmarks/unet_throughput.py --device cuda --batch 128 --steps 50
    python benchmarks/unet_throughput.py --device cpu --batch 4 --steps 2 --gen-batch 8 \
        --gen-steps 2   # smoke
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from reflowma import data, models
from reflowma.core import solvers
from reflowma.infra import config


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def train_rate(net_cfg, shape, dev, batch, steps, warmup, amp) -> dict:
    torch.manual_seed(0)
    model = models.build(shape, net_cfg).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(batch, *shape, device=dev)
    z = torch.randn_like(x)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    ctx = (torch.autocast("cuda", dtype=torch.bfloat16) if amp == "bf16"
           else torch.autocast(dev.type, enabled=False))

    def step():
        t = torch.rand(batch, device=dev)
        tb = t.view(-1, *[1] * len(shape))
        with ctx:
            v = model((1 - tb) * z + tb * x, t)
            loss = ((v.float() - (x - z)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(dev)
    dt = time.perf_counter() - t0
    out = {"amp": amp, "batch": batch, "steps": steps, "steps_per_s": steps / dt,
           "images_per_s": steps * batch / dt}
    if dev.type == "cuda":
        out["peak_mem_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return out


def generation_rate(net_cfg, shape, dev, batch, n_steps) -> dict:
    torch.manual_seed(0)
    model = models.build(shape, net_cfg).to(dev).eval()
    z = torch.randn(batch, *shape, device=dev)
    grid = solvers.sample_grid(n_steps, 1)
    solvers.euler_sample(model, z[: min(batch, 8)], solvers.sample_grid(1, 1))  # warm-up
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    _sync(dev)
    t0 = time.perf_counter()
    solvers.euler_sample(model, z, grid)
    _sync(dev)
    dt = time.perf_counter() - t0
    out = {"batch": batch, "euler_steps": n_steps, "images_per_s": batch / dt,
           "nfe_images_per_s": batch * n_steps / dt}
    if dev.type == "cuda":
        out["peak_mem_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--preset", default="mnist", help="preset whose teacher net is measured")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--gen-batch", type=int, default=1000)
    p.add_argument("--gen-steps", type=int, default=32)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    cfg = config.stage_config("teacher", a.preset, check_files=False)
    shape = data.declared_shape(cfg["data"])
    net = cfg["net"]
    res = {"device": str(dev), "preset": a.preset, "data_shape": list(shape),
           "n_params": models.n_params(models.build(shape, net)),
           "torch": torch.__version__,
           "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
           "train": [train_rate(net, shape, dev, a.batch, a.steps, a.warmup, amp)
                     for amp in (("none", "bf16") if dev.type == "cuda" else ("none",))],
           "generation": generation_rate(net, shape, dev, a.gen_batch, a.gen_steps)}
    if len(res["train"]) == 2:
        res["bf16_speedup"] = res["train"][1]["steps_per_s"] / res["train"][0]["steps_per_s"]
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    return res


if __name__ == "__main__":
    main()
