"""Datasets: a registry (``DATASETS``, keyed by ``data.name``) of factories ``cfg -> Dataset``.

Built in: 2D toys, sklearn's bundled digits, and the user's own point files and images.
``load(cfg, n, generator)`` returns a tensor ``[n, *shape]``; toys are sampled fresh from the
seeded generator, finite datasets are resampled with replacement. ``dataset(cfg)`` is the
object itself (``shape``, ``value_range``, ``labels``, ``sample``; ``log_prob`` where the
density is exact). ``catalog`` declares what each bundled dataset is (layout, path, labels)
and ``readers`` reads the user's files: neither imports torch, so the names below are
imported on first use (the workflow's parse reads those two modules and must stay torch-free).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Dataset": "base", "PointsDataset": "base", "exact_log_prob": "base", "on_device": "base",
    "DATASETS": "registry", "clear_cache": "registry", "data_shape": "registry",
    "dataset": "registry", "declared_shape": "registry", "load": "registry",
    "read_points": "readers", "TOYS": "toys", "sample_toy": "toys",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
