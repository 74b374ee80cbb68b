"""Finite datasets read from disk: the user's point files and sklearn's bundled digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reflowma.data.base import PointsDataset
from reflowma.registry import InputError

FILE_SUFFIXES = (".npy", ".csv", ".h5", ".hdf5")


def _read(path: Path, suffix: str, key: str) -> np.ndarray:
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix == ".csv":
        return np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    import h5py

    with h5py.File(path, "r") as f:
        if key not in f:
            raise KeyError(key, sorted(f.keys()))
        return f[key][...]


def read_points(path: str | Path, key: str = "data") -> np.ndarray:
    """Points ``[N, d]`` float32 from an ``.npy``, ``.csv`` (comma-separated, no header) or
    HDF5 file (dataset ``key``). Every error names the file (``data.path: '<file>': ...``)."""
    if path is None or str(path) == "":
        raise InputError("data.path: is required when data.name is 'file'")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data.path: file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise InputError(f"data.path: unsupported suffix {suffix!r}; allowed: {FILE_SUFFIXES}")
    try:
        arr = _read(path, suffix, key)
    except KeyError as e:
        raise InputError(f"data.path: {str(path)!r} has no dataset {key!r} "
                         f"(found: {e.args[1]}); set data.key") from None
    except (ValueError, OSError) as e:
        hint = (" (comma-separated numbers only, no header line)" if suffix == ".csv" else "")
        raise InputError(f"data.path: cannot read {str(path)!r}{hint}: {e}") from e
    arr = np.asarray(arr)
    if (arr.ndim != 2 or arr.shape[0] < 2 or not np.issubdtype(arr.dtype, np.number)
            or not np.isfinite(arr).all()):
        raise InputError(f"data.path: {str(path)!r} must hold finite points [N >= 2, d], "
                         f"got shape {arr.shape}")
    return arr.astype(np.float32)


def file_dataset(cfg: dict) -> PointsDataset:
    """``data.name: file``: the points of ``data.path`` (``data.key`` for HDF5)."""
    return PointsDataset(read_points(cfg.get("path"), cfg.get("key", "data")))


def digits_dataset(cfg: dict | None = None):
    """sklearn's bundled 8x8 digits (no download), scaled to [-1, 1]: flattened to d = 64 by
    default (``data.layout: flat``), ``[1, 8, 8]`` images with ``data.layout: image`` (then
    ``data.hflip`` applies too)."""
    from sklearn.datasets import load_digits

    cfg = cfg or {}
    d = load_digits()
    x = d.data.astype(np.float32) / 8.0 - 1.0  # values 0..16
    labels = d.target.astype(np.int64)
    if (cfg.get("layout") or "flat") == "image":
        from reflowma.data.images import ImageDataset

        return ImageDataset(x.reshape(-1, 1, 8, 8), labels, hflip=cfg.get("hflip", False))
    return PointsDataset(x, value_range=(-1.0, 1.0), labels=labels)
