"""Helpers shared by the stages: loading models back from their files."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from reflowma import models
from reflowma.infra.storage import checkpoint
from reflowma.infra.storage.atomic import content_sha256, sha256
from reflowma.registry import InputError


def load_model(path, kind: str, device: torch.device | str = "cpu"):
    """(model in eval mode with frozen weights, meta, sha256) from a model file."""
    obj = checkpoint.load_model_file(path, kind)
    meta = obj["meta"]
    model = models.build(tuple(meta["data_shape"]), meta["net"])
    checkpoint.load_weights(model, obj["model"], path)
    model.eval().requires_grad_(False)
    return model.to(device), meta, sha256(path)


def data_sha256(data_cfg: dict) -> str | None:
    """Content hash of the data file (``data.sha256`` when the config carries it, else computed
    from ``data.path``); None for bundled data."""
    if data_cfg.get("sha256"):
        return data_cfg["sha256"]
    path = data_cfg.get("path")
    if not path or data_cfg.get("name") not in ("file", "images", "cifar10"):
        return None
    return content_sha256(path) if Path(path).exists() else None


def check_data_hash(where: str, data_cfg: dict) -> str | None:
    """The data file's content hash; an InputError when the config's ``data.sha256`` (set by
    the workflow from params/datasets.yaml) does not match the file."""
    want = data_cfg.get("sha256")
    if not want:
        return data_sha256(data_cfg)
    got = content_sha256(data_cfg["path"])
    if got != want:
        raise InputError(f"{where}.data.sha256: {data_cfg['path']!r} has sha256 {got[:12]}..., "
                         f"not {want[:12]}... of the config: the file changed after the "
                         "workflow was planned; rerun snakemake")
    return got


def data_key(data_cfg: dict) -> str:
    """Canonical string of a data config (recorded in files, compared on load). It includes
    ``sha256`` when set, so a model trained on other file content is refused downstream."""
    keep = {k: v for k, v in data_cfg.items() if v is not None}
    if keep.get("name") not in ("file", "images"):  # path/key only describe user files
        keep = {k: v for k, v in keep.items() if k not in ("path", "key")}
    return json.dumps(keep, sort_keys=True)


def check_same_data(where: str, cfg_data: dict, recorded: str, source) -> None:
    if data_key(cfg_data) != recorded:
        raise InputError(f"{where}.data: {data_key(cfg_data)} does not match {recorded} "
                         f"recorded in {str(source)!r}")
