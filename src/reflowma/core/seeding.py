"""Seeds: one root seed per job, from which named torch generators are derived."""

from __future__ import annotations

import hashlib
import json

import torch


def derive(seed: int, *names) -> int:
    """A 63-bit seed derived from the root seed and names (stable across runs and hosts)."""
    h = hashlib.sha256(json.dumps([int(seed), *map(str, names)]).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, *names, device: torch.device | str | None = None) -> torch.Generator:
    """The generator of ``derive(seed, *names)`` on ``device`` (the CPU unless given). A CUDA
    generator (Philox) draws another stream than the CPU's (Mersenne Twister) from one seed;
    ``get_state``/``set_state`` save and restore either (the state is a CPU byte tensor)."""
    return torch.Generator(device=device or "cpu").manual_seed(derive(seed, *names))


def fingerprint(cfg: dict, *extra) -> str:
    """Hash of a config (and input hashes): a resume state is only reused for the same one."""
    return hashlib.sha256(json.dumps([cfg, *extra], sort_keys=True).encode()).hexdigest()[:16]


def device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: 'cuda' requested but no CUDA device is available")
    return torch.device(name)
