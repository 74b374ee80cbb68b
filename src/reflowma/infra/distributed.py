"""Data-parallel plumbing for jobs started by ``torchrun`` (NCCL on GPUs, gloo on CPUs).

``init()`` joins the process group when torchrun's ``WORLD_SIZE`` > 1 and is a no-op otherwise,
so a single process runs exactly the code it ran before. Gradients are averaged by one
all-reduce of a flat buffer per step (``average_gradients``) rather than the DDP wrapper: the
objectives call the network several times per step and through ``torch.func``, which DDP's
hooks do not follow. Rank 0 alone writes files (``is_main``).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from reflowma.registry import InputError


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init(device: torch.device | None = None) -> None:
    """Join torchrun's process group (once); nothing happens for a single process."""
    if env_world_size() <= 1 or dist.is_initialized():
        return
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")


def finish() -> None:
    """Leave the process group (if joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` under torchrun on GPUs, else ``device``."""
    if device.type == "cuda" and active():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def barrier() -> None:
    if active():
        dist.barrier()


def _comm_device(t: torch.Tensor) -> torch.Tensor:
    return t.cuda() if dist.get_backend() == "nccl" else t.cpu()


REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX,
              "min": dist.ReduceOp.MIN}


def all_reduce(values: list[float], op: str = "sum") -> list[float]:
    """Reduce a few floats across ranks (``sum``, ``mean``, ``max`` or ``min``)."""
    if not active():
        return list(values)
    t = _comm_device(torch.tensor(values, dtype=torch.float64))
    dist.all_reduce(t, REDUCE_OPS[op])
    if op == "mean":
        t /= world_size()
    return t.cpu().tolist()


def average_gradients(params) -> None:
    """Average the gradients of ``params`` across ranks (one all-reduce of a flat buffer)."""
    if not active():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    buf = _comm_device(flat)
    dist.all_reduce(buf)
    buf = buf.to(flat.device) / world_size()
    off = 0
    for g in grads:
        g.copy_(buf[off: off + g.numel()].view_as(g))
        off += g.numel()


def broadcast_params(module: torch.nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers."""
    if not active():
        return
    for t in [*module.parameters(), *module.buffers()]:
        buf = _comm_device(t.detach().clone())
        dist.broadcast(buf, 0)
        t.data.copy_(buf.to(t.device))


def gather_objects(obj) -> list | None:
    """Every rank's ``obj`` on rank 0 (in rank order); ``None`` on the others."""
    if not active():
        return [obj]
    out = [None] * world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard_batch(batch_size: int, what: str) -> int:
    """The per-rank share of a global batch; it must divide evenly."""
    if batch_size % world_size():
        raise InputError(f"{what} = {batch_size} is not divisible by the world size "
                         f"{world_size()} (torchrun --nproc_per_node)")
    return batch_size // world_size()
