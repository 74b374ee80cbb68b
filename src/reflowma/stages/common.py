"""Helpers shared by the stages: loading models back from their files."""

from __future__ import annotations

import json

import torch

from reflowma import models
from reflowma.infra.storage import checkpoint
from reflowma.infra.storage.atomic import sha256
from reflowma.registry import InputError


def load_model(path, kind: str, device: torch.device | str = "cpu"):
    """(model in eval mode with frozen weights, meta, sha256) from a model file."""
    obj = checkpoint.load_model_file(path, kind)
    meta = obj["meta"]
    model = models.build(tuple(meta["data_shape"]), meta["net"])
    checkpoint.load_weights(model, obj["model"], path)
    model.eval().requires_grad_(False)
    return model.to(device), meta, sha256(path)


def data_key(data_cfg: dict) -> str:
    """Canonical string of a data config (recorded in files, compared on load)."""
    keep = {k: v for k, v in data_cfg.items() if v is not None}
    if keep.get("name") not in ("file", "images"):  # path/key only describe user files
        keep = {k: v for k, v in keep.items() if k not in ("path", "key")}
    return json.dumps(keep, sort_keys=True)


def check_same_data(where: str, cfg_data: dict, recorded: str, source) -> None:
    if data_key(cfg_data) != recorded:
        raise InputError(f"{where}.data: {data_key(cfg_data)} does not match {recorded} "
                         f"recorded in {str(source)!r}")
