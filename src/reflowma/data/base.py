"""What a dataset is: an object that samples ``[n, *shape]`` tensors from a seeded generator.

A dataset carries ``shape`` (one sample's shape: ``(2,)`` for the toys, ``(64,)`` for the
flattened digits, ``(1, 28, 28)`` for an image set), ``value_range`` (``(lo, hi)`` or None),
``labels`` (a tensor over the finite set's points, or None) and ``sample(n, generator)``.
One with an exact density also has ``log_prob(x)``; the audit compares against it where it
exists (``exact_log_prob``). Factories registered in ``DATASETS`` may return any object with
these attributes; ``Dataset`` and ``PointsDataset`` are conveniences.

A dataset that can sample on an accelerator also has ``to(device)``: a dataset whose samples
are drawn and made on ``device``, from a generator on that device (``on_device``; the
training loop's ``train.data_on_device``). The built-in ones have it: ``PointsDataset`` keeps
its points there, the toys draw wherever their generator lives. Every draw takes the
generator's device, so on the CPU the two draw exactly the same numbers.
"""

from __future__ import annotations

import copy

import numpy as np
import torch


class Dataset:
    """Base class: subclasses set ``shape`` and implement ``sample``."""

    shape: tuple[int, ...] = ()
    value_range: tuple[float, float] | None = None
    labels: torch.Tensor | None = None

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


class PointsDataset(Dataset):
    """A finite set of points ``[N, *shape]``, resampled with replacement (uniform indices)."""

    def __init__(self, points, value_range=None, labels=None):
        pts = torch.as_tensor(np.asarray(points, dtype=np.float32))
        if pts.dim() < 2 or pts.shape[0] < 1:
            raise ValueError(f"points must be [N >= 1, *shape], got shape {tuple(pts.shape)}")
        self.points = pts
        self.shape = tuple(int(s) for s in pts.shape[1:])
        self.value_range = value_range
        self.labels = None if labels is None else torch.as_tensor(labels)

    def __len__(self) -> int:
        return self.points.shape[0]

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        idx = torch.randint(0, self.points.shape[0], (n,), generator=generator,
                            device=generator.device)
        return self.points[idx]

    def to(self, device) -> PointsDataset:
        """A copy whose points live on ``device`` (labels stay where they are)."""
        out = copy.copy(self)
        out.points = self.points.to(device)
        return out


def exact_log_prob(ds):
    """The dataset's exact log-density ``x [B, *shape] -> [B]``, or None where it has none."""
    lp = getattr(ds, "log_prob", None)
    return lp if callable(lp) else None


def on_device(ds, device: torch.device):
    """``ds.to(device)`` for a dataset that can sample on ``device``; None for one that cannot
    (no ``to``: e.g. a plug-in's that draws on the CPU only)."""
    to = getattr(ds, "to", None)
    return to(torch.device(device)) if callable(to) else None
