"""Checkpoints: atomic writes, ``torch.load(weights_only=True)``, identity checks on load.

A model file holds ``{"kind", "model" (state dict), "meta"}``; ``meta`` has the net config and
data shape so that a file from another architecture or stage is refused with a clear message.
"""

from __future__ import annotations

from pathlib import Path

import torch

from reflowma.infra.storage.atomic import atomic_path, sha256


class CheckpointError(ValueError):
    pass


def save(path: str | Path, obj: dict) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        # a file object, not the path: torch.save names the zip records after the (random)
        # temporary file name, which would make identical checkpoints differ byte-wise
        torch.save(obj, f)


def load(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated/corrupt zip, foreign pickle, ...
        text = str(e)
        if "Weights only load failed" in text:  # torch's hint is to retry unsafely: not here
            what = next((ln.strip() for ln in text.splitlines() if "GLOBAL" in ln),
                        "a Python object that is not a tensor or plain data")
            raise CheckpointError(f"checkpoint {str(path)!r} refused: it holds code or objects "
                                  f"that a weights-only load does not allow ({what[:200]}); "
                                  "reflowma checkpoints hold only tensors and plain data"
                                  ) from None
        first = text.splitlines()[0][:200] if text else ""
        raise CheckpointError(f"checkpoint {str(path)!r} is unreadable or corrupt "
                              f"(truncated?): {type(e).__name__}: {first}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} is not a reflowma checkpoint")
    return obj


def load_model_file(path: str | Path, kind: str) -> dict:
    """A model file written by ``save_model``; checks its kind (``teacher``/``student``)."""
    obj = load(path)
    if obj.get("kind") != kind or "model" not in obj or "meta" not in obj:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a {kind} model file "
                              f"(kind={obj.get('kind')!r})")
    return obj


def save_model(path: str | Path, kind: str, state_dict: dict, meta: dict) -> str:
    """Write a model file atomically; returns its sha256."""
    save(path, {"kind": kind, "model": state_dict, "meta": meta})
    return sha256(path)


def cpu_state_dict(module: torch.nn.Module) -> dict:
    """``module.state_dict()`` with every tensor copied to the CPU (the module stays on its
    device): model files do not depend on the device that trained them."""
    state = module.state_dict()  # its _metadata attribute is part of the file: kept
    for k, v in state.items():
        state[k] = v.cpu()
    return state


def load_weights(model: torch.nn.Module, state: dict, path: str | Path) -> None:
    """``load_state_dict`` with a readable message on an architecture mismatch."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit the configured network "
                              f"(different architecture): {' '.join(first[:3])[:300]}") from None
