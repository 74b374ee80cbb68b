"""Datasets: a registry (``DATASETS``, keyed by ``data.name``) of factories ``cfg -> Dataset``.

Built in: 2D toys, sklearn's bundled digits, and the user's own point files.
``load(cfg, n, generator)`` returns a tensor ``[n, *shape]``; toys are sampled fresh from the
seeded generator, finite datasets are resampled with replacement. ``dataset(cfg)`` is the
object itself (``shape``, ``value_range``, ``labels``, ``sample``; ``log_prob`` where the
density is exact).
"""

from __future__ import annotations

from reflowma.data.base import Dataset, PointsDataset, exact_log_prob, on_device  # noqa: F401
from reflowma.data.registry import (  # noqa: F401
    DATASETS,
    clear_cache,
    data_shape,
    dataset,
    declared_shape,
    load,
    read_points,
)
from reflowma.data.toys import TOYS, sample_toy  # noqa: F401
