"""Finite datasets read from disk: the user's point files and sklearn's bundled digits."""

from __future__ import annotations

import numpy as np

from reflowma.data.base import PointsDataset
from reflowma.data.images import ImageDataset
from reflowma.data.readers import read_points


def file_dataset(cfg: dict) -> PointsDataset:
    """``data.name: file``: the points of ``data.path`` (``data.key`` for HDF5)."""
    return PointsDataset(read_points(cfg.get("path"), cfg.get("key", "data")))


def digits_dataset(cfg: dict | None = None):
    """sklearn's bundled 8x8 digits (no download), scaled to [-1, 1]: flattened to d = 64 by
    default (``data.layout: flat``), ``[1, 8, 8]`` images with ``data.layout: image`` (then
    ``data.hflip`` applies too)."""
    from sklearn.datasets import load_digits  # about 2 s: imported for the digits only

    cfg = cfg or {}
    d = load_digits()
    x = d.data.astype(np.float32) / 8.0 - 1.0  # values 0..16
    labels = d.target.astype(np.int64)
    if (cfg.get("layout") or "flat") == "image":
        return ImageDataset(x.reshape(-1, 1, 8, 8), labels, hflip=cfg.get("hflip", False))
    return PointsDataset(x, value_range=(-1.0, 1.0), labels=labels)
