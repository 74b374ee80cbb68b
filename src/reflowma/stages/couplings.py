"""Couplings stage: the teacher ODE maps z -> x; stores states at the window ends t_k = k/K.

The steps of the solve follow ``time_grid`` (``core.time_grids``: uniform, power, or fitted to
a pilot solve of the teacher), every grid stepping onto each window end; ``dopri5`` places its
own. The file records the grid (its settings, checked on resume and read-back, and the step
times of a non-uniform one).

Each chunk has its own generator, so under torchrun the ranks solve chunks round-robin (rank r
the r-th chunk of each round of ``world_size``) and rank 0 alone writes them in order into one
file: the same bytes as a single process.
"""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm

from reflowma.core import interpolant, solvers, time_grids
from reflowma.core.seeding import device, generator
from reflowma.infra import distributed
from reflowma.infra.signals import Interrupted, PreemptionSignals
from reflowma.infra.storage.couplings import SPLITS, Couplings, CouplingsWriter
from reflowma.models import inference
from reflowma.stages.common import check_same_data, load_model

log = logging.getLogger(__name__)


def expected_attrs(cfg: dict, teacher_sha: str, data_key: str) -> dict:
    """The file's provenance: what made it, and the settings of its solve (the grid's own
    parameter only for the grid that reads it, the tolerances only for dopri5)."""
    attrs = {"teacher_sha256": teacher_sha, "solver": cfg["solver"], "steps": cfg["steps"],
             "time_grid": cfg["time_grid"], "seed": cfg["seed"],
             "windows": sorted(set(cfg["windows"])),
             "times": interpolant.union_grid(cfg["windows"]), "n_train": cfg["n_train"],
             "n_test": cfg["n_test"], "chunk_size": cfg["chunk_size"], "data": data_key,
             **inference.options(cfg)}
    if cfg["solver"] == "dopri5":
        attrs.update(rtol=cfg["rtol"], atol=cfg["atol"])
    elif cfg["time_grid"] == "power":
        attrs["rho"] = cfg["rho"]
    elif cfg["time_grid"] == "fitted":
        attrs["pilot_size"] = cfg["pilot_size"]
    return attrs


def step_grid(cfg: dict, teacher, shape, times, dev):
    """The steps of the solve (``time_grids``), or None for the solver's own (uniform; dopri5).
    The fitted grid's pilot: ``pilot_size`` pairs of their own generator, solved on a uniform
    grid of the same steps and method; computed on rank 0 and sent to the others."""
    if cfg["solver"] == "dopri5" or cfg["time_grid"] == "uniform":
        return None
    if cfg["time_grid"] == "power":
        return time_grids.warped(times, cfg["steps"], time_grids.power(cfg["rho"]))
    grid = None
    if distributed.is_main():
        g = generator(cfg["seed"], "couplings", "pilot")
        z = torch.randn((cfg["pilot_size"], *shape), generator=g).to(dev)
        grid = solvers.fitted_grid(teacher, z, times, cfg["steps"], cfg["solver"])
    return distributed.broadcast_object(grid) if distributed.world_size() > 1 else grid


def run(cfg: dict, teacher_path, out_path) -> dict:
    """Generate (or resume) ``out_path`` (HDF5); returns counts and provenance. Under torchrun
    the ranks share the chunks and rank 0 writes (the file of a single process)."""
    dev = device(cfg["device"])
    distributed.init(dev)
    dev, rank = distributed.local_device(dev), distributed.rank()
    world_size = distributed.world_size()
    teacher, meta, sha = load_model(teacher_path, "teacher", dev)
    teacher = inference.wrap(teacher, cfg)  # couplings.amp, couplings.compile
    check_same_data("couplings", cfg["data"], meta["data"], teacher_path)
    shape = tuple(meta["data_shape"])
    attrs = expected_attrs(cfg, sha, meta["data"])
    grid = step_grid(cfg, teacher, shape, attrs["times"], dev)
    if grid is not None:  # the file records where its steps were
        attrs["step_times"] = time_grids.step_times(grid, attrs["times"][-1])
    counts = {"train": cfg["n_train"], "test": cfg["n_test"]}
    writer = (CouplingsWriter(out_path, attrs, counts, shape, cfg["chunk_size"])
              if distributed.is_main() else None)
    plan = {s: (writer.chunks_done(s), writer.n_chunks(s)) for s in SPLITS} if writer else None
    if world_size > 1:
        plan = distributed.broadcast_object(plan)
        log.info("couplings: %d ranks, chunks to do %s", world_size, plan)
    done = sum(d for d, _ in plan.values())
    if done and writer is not None:
        log.info("couplings: resuming %s at chunk %d/%d", writer.tmp, done,
                 sum(n for _, n in plan.values()))
    stepping = (f"rtol {cfg['rtol']:g}, atol {cfg['atol']:g}" if cfg["solver"] == "dopri5"
                else f"{cfg['steps']} steps ({cfg['time_grid']} grid)")
    log.info("couplings: %d train + %d test pairs, %s with %s, times %s",
             cfg["n_train"], cfg["n_test"], cfg["solver"], stepping, attrs["times"])

    def solve_chunk(split: str, c: int):
        n = min(cfg["chunk_size"], counts[split] - c * cfg["chunk_size"])
        z = torch.randn((n, *shape), generator=generator(cfg["seed"], "couplings", split, c))
        states = solvers.solve(teacher, z.to(dev), attrs["times"], cfg["steps"], cfg["solver"],
                               rtol=cfg["rtol"], atol=cfg["atol"], grid=grid)
        return states.transpose(0, 1).cpu().numpy()

    try:
        with PreemptionSignals() as sig, tqdm(
                total=sum(n for _, n in plan.values()), initial=done, desc="couplings",
                mininterval=1.0, disable=writer is None) as bar:
            for split in SPLITS:
                first_todo, total = plan[split]
                for first in range(first_todo, total, world_size):  # one round: a chunk per rank
                    received = sig.received
                    if world_size > 1:  # every rank stops at the same round
                        received = int(distributed.all_reduce([received or 0], "max")[0]) or None
                    if received is not None:
                        raise Interrupted(received, first)
                    c = first + rank
                    mine = solve_chunk(split, c) if c < total else None
                    got = distributed.gather_objects(mine) if world_size > 1 else [mine]
                    if writer is not None:
                        for i, states in enumerate(got):
                            if states is not None:
                                writer.write_chunk(split, first + i, states)
                                bar.update(1)
        path = writer.finish() if writer is not None else None
    finally:
        if writer is not None:
            writer.close()
    if world_size > 1:
        distributed.barrier()  # the others return once the file is complete
    if writer is not None:
        Couplings(path, attrs)  # read back: flag set and provenance as expected
        log.info("couplings: wrote %s", path)
    return {"n_train": cfg["n_train"], "n_test": cfg["n_test"], "times": attrs["times"],
            "teacher_sha256": sha, **({"world_size": world_size} if world_size > 1 else {})}
