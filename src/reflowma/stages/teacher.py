"""Teacher stage: flow matching on the data, ``x_t = (1 - t) z + t x``, target ``x - z``.

Every draw of a training step (data indices, flips, noise, times) comes from one generator:
on the device with the data resident there under ``train.data_on_device`` (``auto``: on CUDA,
for datasets that can sample there, ``data.on_device``), else on the CPU with the batch copied
to the device. The final held-out flow-matching loss of the EMA (``eval_fm_loss``) runs on the
device in chunks of ``eval.batch_size`` on ``eval.n_samples`` fresh draws (made on the CPU
generator, so the evaluation set is the same on every device).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from reflowma import data, models
from reflowma.core import interpolant, losses, time_samplers
from reflowma.core.seeding import derive, device, fingerprint, generator
from reflowma.infra import distributed
from reflowma.infra.storage.atomic import write_json
from reflowma.infra.storage.checkpoint import cpu_state_dict, save_model
from reflowma.registry import InputError
from reflowma.stages.common import check_data_hash, data_key
from reflowma.training.loop import check_amp, check_channels_last, fit, identity, on_accelerator

log = logging.getLogger(__name__)


def device_dataset(cfg: dict, dev: torch.device):
    """The dataset resident on ``dev`` when ``train.data_on_device`` asks for it (``auto``:
    on CUDA, where the dataset can sample there), else None (draws on the CPU)."""
    want = cfg["train"].get("data_on_device", "auto")
    if not on_accelerator(want, dev):
        return None
    ds = data.on_device(data.dataset(cfg["data"]), dev)
    if ds is None and want is True:
        raise InputError(f"teacher.train.data_on_device: true needs a dataset that samples on "
                         f"the device (a 'to(device)' method); data.name "
                         f"{cfg['data']['name']!r} has none; allowed here: auto, false")
    if ds is None:
        log.info("teacher: %s samples on the CPU only: batches are copied to %s",
                 cfg["data"]["name"], dev)
    return ds


def fm_loss(v, x: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-sample flow-matching distances ``|v(x_t, t) - (x - z)|^2`` ``[B]``."""
    return losses.distance(v(interpolant.interpolate(z, x, t), t), x - z)


def eval_fm_loss(ema, cfg: dict, dev: torch.device) -> float:
    """Mean flow-matching loss of ``ema`` (on ``dev``) on ``eval.n_samples`` draws of the
    ``teacher-eval`` generator (CPU), in chunks of ``eval.batch_size`` on ``dev``; the
    per-sample distances are averaged once, so the chunking changes no number."""
    ev = cfg["eval"]
    n = ev["n_samples"]
    bs = ev["batch_size"] or n
    ge = generator(cfg["seed"], "teacher-eval")
    x = data.load(cfg["data"], n, ge)
    z = torch.randn(x.shape, generator=ge)
    t = torch.rand(x.shape[0], generator=ge)
    d = []
    with torch.no_grad():
        for lo in tqdm(range(0, n, bs), desc="teacher eval", unit="chunk",
                       disable=n <= bs, mininterval=1.0):
            d.append(fm_loss(ema, *(a[lo: lo + bs].to(dev) for a in (x, z, t))))
    return float(torch.cat(d).mean())


def run(cfg: dict, out_dir, on_log=None) -> dict:
    """Train a teacher; writes ``teacher.pt`` (EMA weights) and ``metrics.json`` in out_dir.

    Under torchrun each rank draws ``batch_size / world_size`` examples per step from its own
    generator; rank 0 alone evaluates and writes.
    """
    dev = device(cfg["device"])
    distributed.init(dev)
    dev, world_size = distributed.local_device(dev), distributed.world_size()
    check_amp(cfg["train"].get("amp", "none"), dev)  # before anything is written
    data_sha = check_data_hash("teacher", cfg["data"])
    shape = data.data_shape(cfg["data"])  # reads a data file first: bad data writes nothing
    check_channels_last(cfg["train"], shape, "teacher")
    resident = device_dataset(cfg, dev)
    out = Path(out_dir)
    torch.manual_seed(derive(cfg["seed"], "teacher-init"))
    model = models.build(shape, cfg["net"]).to(dev)
    ranks = ("rank", distributed.rank()) if world_size > 1 else ()
    g = generator(cfg["seed"], "teacher-train", *ranks,
                  device=dev if resident is not None else None)
    ts = cfg["time_sampler"]
    sample_t = time_samplers.get(ts["name"])
    bs = distributed.shard_batch(cfg["train"]["batch_size"], "teacher.train.batch_size")
    out.mkdir(parents=True, exist_ok=True)  # after the checks: bad inputs write nothing

    def loss_fn(m, step, gen):
        # the same draws in the same order on either path (on the CPU: the same numbers)
        x = data.load(cfg["data"], bs, gen) if resident is None else resident.sample(bs, gen)
        z = torch.randn(x.shape, generator=gen, device=gen.device)
        t = sample_t(bs, gen, **ts)
        return fm_loss(m, x.to(dev), z.to(dev), t.to(dev)).mean(), {}

    log.info("teacher: %s, data shape %s, %d steps, draws on %s", cfg["data"]["name"], shape,
             cfg["train"]["steps"], g.device)
    t0 = time.perf_counter()
    fp = fingerprint(identity(cfg), list(shape))
    ema, history = fit(model, loss_fn, cfg["train"], g, out / "state.pt", fp, "teacher", on_log)
    seconds = time.perf_counter() - t0
    scale = {"world_size": world_size, "batch_per_rank": bs}
    if not distributed.is_main():
        return scale

    eval_loss = eval_fm_loss(ema, cfg, dev)
    meta = {"net": cfg["net"], "data_shape": list(shape), "data": data_key(cfg["data"]),
            "seed": cfg["seed"], "fingerprint": fp, "data_sha256": data_sha}
    sha = save_model(out / "teacher.pt", "teacher", cpu_state_dict(ema), meta)
    (out / "state.pt").unlink(missing_ok=True)
    metrics = {"final_loss": history[-1]["loss"] if history else None,
               "eval_fm_loss": eval_loss, "steps": cfg["train"]["steps"],
               "seconds": seconds, "sha256": sha, "data_sha256": data_sha, **scale}
    write_json(out / "metrics.json", {"metrics": metrics, "history": history})
    log.info("teacher: eval FM loss %.4f, wrote %s", eval_loss, out / "teacher.pt")
    return metrics
