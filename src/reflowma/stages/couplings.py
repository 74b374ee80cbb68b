"""Couplings stage: the teacher ODE maps z -> x; stores states at the window ends t_k = k/K.

Each chunk has its own generator, so under torchrun the ranks solve chunks round-robin (rank r
the r-th chunk of each round of ``world_size``) and rank 0 alone writes them in order into one
file: the same bytes as a single process.
"""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm

from reflowma.core import interpolant, solvers
from reflowma.core.seeding import device, generator
from reflowma.infra import distributed as ddp
from reflowma.infra.signals import Interrupted, PreemptionSignals
from reflowma.infra.storage.couplings import SPLITS, Couplings, CouplingsWriter
from reflowma.models import inference
from reflowma.stages.common import check_same_data, load_model

log = logging.getLogger(__name__)


def expected_attrs(cfg: dict, teacher_sha: str, data_key: str) -> dict:
    return {"teacher_sha256": teacher_sha, "solver": cfg["solver"], "steps": cfg["steps"],
            "seed": cfg["seed"], "windows": sorted(set(cfg["windows"])),
            "times": interpolant.union_grid(cfg["windows"]), "n_train": cfg["n_train"],
            "n_test": cfg["n_test"], "chunk_size": cfg["chunk_size"], "data": data_key,
            **inference.options(cfg)}


def run(cfg: dict, teacher_path, out_path) -> dict:
    """Generate (or resume) ``out_path`` (HDF5); returns counts and provenance."""
    dev = device(cfg["device"])
    ddp.init(dev)
    dev, ws = ddp.local_device(dev), ddp.world_size()
    if ws > 1:
        return _run_sharded(cfg, teacher_path, out_path, dev)
    teacher, meta, sha = load_model(teacher_path, "teacher", dev)
    teacher = inference.wrap(teacher, cfg)  # couplings.amp, couplings.compile
    check_same_data("couplings", cfg["data"], meta["data"], teacher_path)
    shape = tuple(meta["data_shape"])
    attrs = expected_attrs(cfg, sha, meta["data"])
    counts = {"train": cfg["n_train"], "test": cfg["n_test"]}
    writer = CouplingsWriter(out_path, attrs, counts, shape, cfg["chunk_size"])
    total = sum(writer.n_chunks(s) for s in SPLITS)
    done = sum(writer.chunks_done(s) for s in SPLITS)
    if done:
        log.info("couplings: resuming %s at chunk %d/%d", writer.tmp, done, total)
    log.info("couplings: %d train + %d test pairs, %s with %d steps, times %s",
             cfg["n_train"], cfg["n_test"], cfg["solver"], cfg["steps"], attrs["times"])
    try:
        with PreemptionSignals() as sig, tqdm(total=total, initial=done, desc="couplings",
                                     mininterval=1.0) as bar:
            for split in SPLITS:
                for c in range(writer.chunks_done(split), writer.n_chunks(split)):
                    if sig.received is not None:
                        raise Interrupted(sig.received, c)
                    n = min(cfg["chunk_size"], counts[split] - c * cfg["chunk_size"])
                    g = generator(cfg["seed"], "couplings", split, c)
                    z = torch.randn((n, *shape), generator=g).to(dev)
                    states = solvers.solve(teacher, z, attrs["times"], cfg["steps"], cfg["solver"])
                    writer.write_chunk(split, c, states.transpose(0, 1).cpu().numpy())
                    bar.update(1)
        path = writer.finish()
    finally:
        writer.close()
    Couplings(path, attrs)  # read back: flag set and provenance as expected
    log.info("couplings: wrote %s", path)
    return {"n_train": cfg["n_train"], "n_test": cfg["n_test"], "times": attrs["times"],
            "teacher_sha256": sha}


def _solve_chunk(cfg, teacher, attrs, shape, counts, split, c, dev):
    n = min(cfg["chunk_size"], counts[split] - c * cfg["chunk_size"])
    g = generator(cfg["seed"], "couplings", split, c)
    z = torch.randn((n, *shape), generator=g).to(dev)
    states = solvers.solve(teacher, z, attrs["times"], cfg["steps"], cfg["solver"])
    return states.transpose(0, 1).cpu().numpy()


def _run_sharded(cfg: dict, teacher_path, out_path, dev) -> dict:
    """``run`` for several ranks: chunks round-robin, rank 0 writes (resumable as before)."""
    teacher, meta, sha = load_model(teacher_path, "teacher", dev)
    teacher = inference.wrap(teacher, cfg)  # couplings.amp, couplings.compile
    check_same_data("couplings", cfg["data"], meta["data"], teacher_path)
    shape = tuple(meta["data_shape"])
    attrs = expected_attrs(cfg, sha, meta["data"])
    counts = {"train": cfg["n_train"], "test": cfg["n_test"]}
    rank, ws = ddp.rank(), ddp.world_size()
    writer = None
    if ddp.is_main():
        writer = CouplingsWriter(out_path, attrs, counts, shape, cfg["chunk_size"])
    plan = ddp.broadcast_object(
        {s: (writer.chunks_done(s), writer.n_chunks(s)) for s in SPLITS} if writer else None)
    log.info("couplings: %d ranks, chunks to do %s", ws, plan)
    try:
        with PreemptionSignals() as sig:
            for split in SPLITS:
                done, total = plan[split]
                for first in range(done, total, ws):
                    stop = int(ddp.all_reduce([sig.received or 0], "max")[0])
                    if stop:
                        raise Interrupted(stop, first)
                    c = first + rank
                    mine = (_solve_chunk(cfg, teacher, attrs, shape, counts, split, c, dev)
                            if c < total else None)
                    got = ddp.gather_objects(mine)
                    if writer is not None:
                        for i, states in enumerate(got):
                            if states is not None:
                                writer.write_chunk(split, first + i, states)
        path = writer.finish() if writer is not None else None
    finally:
        if writer is not None:
            writer.close()
    ddp.barrier()  # the others return once the file is complete
    if writer is not None:
        Couplings(path, attrs)
        log.info("couplings: wrote %s", path)
    return {"n_train": cfg["n_train"], "n_test": cfg["n_test"], "times": attrs["times"],
            "teacher_sha256": sha, "world_size": ws}
