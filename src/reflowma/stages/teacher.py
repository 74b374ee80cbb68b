"""Teacher stage: flow matching on the data, ``x_t = (1 - t) z + t x``, target ``x - z``."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from reflowma import data, models
from reflowma.core import interpolant, losses, time_samplers
from reflowma.core.seeding import derive, device, fingerprint, generator
from reflowma.infra import distributed as ddp
from reflowma.infra.storage.atomic import write_json
from reflowma.infra.storage.checkpoint import save_model
from reflowma.stages.common import check_data_hash, data_key
from reflowma.training.loop import check_amp, fit

log = logging.getLogger(__name__)


def run(cfg: dict, out_dir, on_log=None) -> dict:
    """Train a teacher; writes ``teacher.pt`` (EMA weights) and ``metrics.json`` in out_dir.

    Under torchrun each rank draws ``batch_size / world_size`` examples per step from its own
    generator; rank 0 alone evaluates and writes.
    """
    dev = device(cfg["device"])
    ddp.init(dev)
    dev, ws = ddp.local_device(dev), ddp.world_size()
    check_amp(cfg["train"].get("amp", "none"), dev)  # before anything is written
    data_sha = check_data_hash("teacher", cfg["data"])
    shape = data.data_shape(cfg["data"])  # reads a data file first: bad data writes nothing
    out = Path(out_dir)
    torch.manual_seed(derive(cfg["seed"], "teacher-init"))
    model = models.build(shape, cfg["net"]).to(dev)
    g = generator(cfg["seed"], "teacher-train", *(("rank", ddp.rank()) if ws > 1 else ()))
    ts = cfg["time_sampler"]
    sample_t = time_samplers.get(ts["name"])
    bs = ddp.shard_batch(cfg["train"]["batch_size"], "teacher.train.batch_size")
    out.mkdir(parents=True, exist_ok=True)  # after the checks: bad inputs write nothing

    def loss_fn(m, step, gen):
        x = data.load(cfg["data"], bs, gen)
        z = torch.randn(x.shape, generator=gen)
        t = sample_t(bs, gen, **ts)
        x, z, t = x.to(dev), z.to(dev), t.to(dev)
        return losses.tm_loss(m, interpolant.interpolate(z, x, t), t, x - z), {}

    log.info("teacher: %s, data shape %s, %d steps", cfg["data"]["name"], shape,
             cfg["train"]["steps"])
    t0 = time.perf_counter()
    fp = fingerprint(cfg, list(shape))
    ema, history = fit(model, loss_fn, cfg["train"], g, out / "state.pt", fp, "teacher", on_log)
    seconds = time.perf_counter() - t0
    scale = {"world_size": ws, "batch_per_rank": bs}
    if not ddp.is_main():
        return scale

    ge = generator(cfg["seed"], "teacher-eval")
    x = data.load(cfg["data"], 4096, ge)
    z = torch.randn(x.shape, generator=ge)
    t = torch.rand(x.shape[0], generator=ge)
    with torch.no_grad():
        eval_loss = float(losses.tm_loss(ema.cpu(), interpolant.interpolate(z, x, t), t, x - z))
    meta = {"net": cfg["net"], "data_shape": list(shape), "data": data_key(cfg["data"]),
            "seed": cfg["seed"], "fingerprint": fp, "data_sha256": data_sha}
    sha = save_model(out / "teacher.pt", "teacher", ema.state_dict(), meta)
    (out / "state.pt").unlink(missing_ok=True)
    metrics = {"final_loss": history[-1]["loss"] if history else None,
               "eval_fm_loss": eval_loss, "steps": cfg["train"]["steps"],
               "seconds": seconds, "sha256": sha, "data_sha256": data_sha, **scale}
    write_json(out / "metrics.json", {"metrics": metrics, "history": history})
    log.info("teacher: eval FM loss %.4f, wrote %s", eval_loss, out / "teacher.pt")
    return metrics
