"""Datasets: 2D toys, sklearn's bundled digits, and the user's own point files.

``load(cfg, n, generator)`` returns a float32 tensor ``[n, *shape]``; toys are sampled fresh from
the seeded generator, finite datasets are resampled with replacement.
"""

from __future__ import annotations

from reflowma.data.registry import DATASETS, data_shape, load  # noqa: F401
from reflowma.data.toys import TOYS, sample_toy  # noqa: F401
