"""Dataset registry: toys, ``digits`` (sklearn, 8x8 scaled to [-1, 1]) and ``file`` (npy/csv/h5)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from reflowma.data.toys import TOYS, sample_toy
from reflowma.registry import InputError

DATASETS = tuple(TOYS) + ("digits", "file")
FILE_SUFFIXES = (".npy", ".csv", ".h5", ".hdf5")


def read_points(path: str | Path, key: str = "data") -> np.ndarray:
    """Points ``[N, d]`` from an ``.npy``, ``.csv`` (comma-separated, no header) or HDF5 file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data.path: file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
    elif suffix == ".csv":
        arr = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    elif suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "r") as f:
            if key not in f:
                raise InputError(f"data.path: {str(path)!r} has no dataset {key!r} "
                                 f"(found: {sorted(f.keys())}); set data.key")
            arr = f[key][...]
    else:
        raise InputError(f"data.path: unsupported suffix {suffix!r}; allowed: {FILE_SUFFIXES}")
    if arr.ndim != 2 or arr.shape[0] < 2 or not np.isfinite(arr).all():
        raise InputError(f"data.path: {str(path)!r} must hold finite points [N >= 2, d], "
                         f"got shape {arr.shape}")
    return arr.astype(np.float32)


def _finite(cfg) -> np.ndarray:
    return _finite_cached(cfg["name"], cfg.get("path"), cfg.get("key", "data"))


@lru_cache(maxsize=8)
def _finite_cached(name: str, path: str | None, key: str) -> np.ndarray:
    if name == "digits":
        from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

        x = load_digits().data.astype(np.float32)  # values 0..16
        return x / 8.0 - 1.0
    return read_points(path, key)


def data_shape(cfg) -> tuple[int, ...]:
    if cfg["name"] in TOYS:
        return (2,)
    return (_finite(cfg).shape[1],)


def load(cfg: dict, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` samples ``[n, d]`` of the dataset named in ``cfg['name']``."""
    name = cfg["name"]
    if name in TOYS:
        return sample_toy(name, n, generator)
    if name not in DATASETS:
        raise InputError(f"data.name: unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    pts = torch.from_numpy(_finite(cfg))
    idx = torch.randint(0, pts.shape[0], (n,), generator=generator)
    return pts[idx]
