"""Dataset registry: ``DATASETS`` maps ``data.name`` to a factory ``cfg -> Dataset``.

Built in: the 2D toys, ``digits`` (sklearn, 8x8 scaled to [-1, 1], flat or 1x8x8), ``file``
(npy/csv/h5) and the image sets ``mnist``, ``cifar10``, ``images`` (``data/images.py``).
Code outside the package adds datasets with ``DATASETS.register(name, factory)`` (e.g. from a
``$REFLOWMA_PLUGINS`` module). ``dataset(cfg)`` builds (once per config) the dataset object;
``load`` and ``data_shape`` are thin functions over it.
"""

from __future__ import annotations

import torch

from reflowma.data import toys
from reflowma.data.base import Dataset, PointsDataset, exact_log_prob, on_device  # noqa: F401
from reflowma.data.files import digits_dataset, file_dataset
from reflowma.data.readers import read_points  # noqa: F401
from reflowma.registry import Registry

DATASETS = Registry("data.name")
DATASETS.register("8gaussians", lambda cfg: toys.eight_gaussians_dataset())
for _name in ("moons", "checkerboard", "spirals"):
    DATASETS.register(_name, lambda cfg, _s=toys.TOYS[_name]: toys.ToyDataset(_s))
DATASETS.register("digits", digits_dataset)
DATASETS.register("file", file_dataset)
DATASETS.register("mnist", "reflowma.data.images:mnist_dataset")
DATASETS.register("cifar10", "reflowma.data.images:cifar10_dataset")
DATASETS.register("images", "reflowma.data.images:images_dataset")

_CACHE: dict = {}
_CACHE_SIZE = 8


def _freeze(v):
    if isinstance(v, dict):
        return tuple(sorted((str(k), _freeze(x)) for k, x in v.items()))
    if isinstance(v, list | tuple):
        return tuple(_freeze(x) for x in v)
    try:
        hash(v)
    except TypeError:
        return repr(v)
    return v


def dataset(cfg: dict):
    """The dataset object of a ``data`` config section (cached per factory and config)."""
    factory = DATASETS.get(cfg["name"])
    key = (cfg["name"], factory, _freeze(dict(cfg)))
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = factory(cfg)
    return _CACHE[key]


def clear_cache() -> None:
    """Forget built datasets (e.g. after a data file changed on disk)."""
    _CACHE.clear()


def data_shape(cfg) -> tuple[int, ...]:
    """The shape of one sample of the dataset, e.g. ``(2,)``."""
    return tuple(int(s) for s in dataset(cfg).shape)


def declared_shape(cfg) -> tuple[int, ...]:
    """The sample shape without reading the data where the factory declares it
    (``factory.shape_of(cfg)``, e.g. cifar10's ``(3, 32, 32)``); else ``data_shape``."""
    shape_of = getattr(DATASETS.get(cfg["name"]), "shape_of", None)
    return tuple(int(s) for s in shape_of(cfg)) if shape_of else data_shape(cfg)


def load(cfg: dict, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` samples ``[n, *shape]`` of the dataset named in ``cfg['name']``."""
    ds = dataset(cfg)
    x = ds.sample(n, generator)
    want = (n, *(int(s) for s in ds.shape))
    if tuple(x.shape) != want:
        raise ValueError(f"data.name: dataset {cfg['name']!r} sampled shape {tuple(x.shape)}, "
                         f"its shape says {want}")
    return x
