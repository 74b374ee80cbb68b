"""Readers of the user's data files, numpy only (no torch): the workflow reads them at parse time
to check a ``params/datasets.yaml`` entry before any job starts; the dataset factories
(``files.py``, ``images.py``) build on them.

* points: ``[N, d]`` float32 from ``.npy``, ``.csv`` (comma-separated, no header) or HDF5
  (dataset ``data.key``).
* images: uint8 ``[N, C, H, W]`` from an ``.npz`` of uint8 ``[N, H, W, C]`` (array
  ``data.key``, or the file's only array) or a folder of PNG files (sorted by name, all one
  size; greyscale when every file is, else RGB).
* labels: an ``.npz``'s integer array ``data.labels_key`` (one per image), or, for a folder,
  its class sub-folders as torchvision's ``ImageFolder`` reads them: the sorted sub-folder
  names are the classes 0..C-1 and each holds that class's PNGs (sorted by path, sub-folders
  included). Labels are the ranks of the sorted distinct values (``[3, 7, 3]`` -> ``[0, 1,
  0]``); at least two classes.

Every error is an ``InputError`` of one line naming the field (``data.path``, ``data.key``,
``data.labels_key``) and the file.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from reflowma.data.catalog import POINT_SUFFIXES, class_folders
from reflowma.registry import InputError


def _read(path: Path, suffix: str, key: str) -> np.ndarray:
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix == ".csv":
        return np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    with h5py.File(path, "r") as f:
        if key not in f:
            raise KeyError(key, sorted(f.keys()))
        return f[key][...]


def read_points(path: str | Path, key: str = "data") -> np.ndarray:
    """Points ``[N, d]`` float32 (see the module docstring); errors name the file
    (``data.path: '<file>': ...``)."""
    if path is None or str(path) == "":
        raise InputError("data.path: is required when data.name is 'file'")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data.path: file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix not in POINT_SUFFIXES:
        raise InputError(f"data.path: unsupported suffix {suffix!r}; allowed: {POINT_SUFFIXES}")
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


def _png_stack(files: list[Path], where: str) -> np.ndarray:
    ims = [Image.open(f) for f in files]
    mode = "L" if all(im.mode in ("L", "1") for im in ims) else "RGB"
    arrs = [np.asarray(im.convert(mode)) for im in ims]
    if len({a.shape for a in arrs}) > 1:
        raise InputError(f"data.path: images in {where} differ in size")
    x = np.stack(arrs)
    return (x[:, None] if mode == "L" else x.transpose(0, 3, 1, 2)).copy()


def _read_folder(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    top = sorted(path.glob("*.png"))
    classes = class_folders(path)
    if top and classes:
        raise InputError(f"data.path: folder {str(path)!r} holds both .png files and "
                         f"sub-folders ({classes[0].name!r}, ...); allowed: .png files only "
                         "(unlabelled) or one sub-folder of .png files per class (labelled)")
    if top:
        return _png_stack(top, repr(str(path))), None
    if not classes:
        raise InputError(f"data.path: folder {str(path)!r} holds no .png files")
    files, labels = [], []
    for i, c in enumerate(classes):
        mine = sorted(c.rglob("*.png"))
        if not mine:
            raise InputError(f"data.path: class folder {str(c)!r} holds no .png files")
        files += mine
        labels += [i] * len(mine)
    if len(classes) < 2:
        raise InputError(f"data.path: folder {str(path)!r} has one class folder "
                         f"({classes[0].name!r}); labels need at least 2 classes")
    return _png_stack(files, repr(str(path))), np.asarray(labels, dtype=np.int64)


def _npz_array(z, path: Path, key: str | None, field: str, others: str) -> tuple[str, np.ndarray]:
    names = list(z.keys())
    k = key if key in names else (names[0] if len(names) == 1 and field == "data.key" else None)
    if k is None:
        raise InputError(f"{field}: {str(path)!r} has no array {key!r} (found: {names}); "
                         f"set {field} to {others}")
    return k, z[k]


def check_labels(labels: np.ndarray, n: int, where: str) -> np.ndarray:
    """Integer labels ``[n]`` with at least two classes, as int64 ranks (module docstring)."""
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != n:
        raise InputError(f"data.labels_key: {where} has shape {list(y.shape)}; needs one label "
                         f"per image: [{n}]")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)):
        raise InputError(f"data.labels_key: {where} has dtype {y.dtype}; needs integer class "
                         "labels")
    classes = np.unique(y)
    if len(classes) < 2:
        raise InputError(f"data.labels_key: {where} holds one class ({classes.tolist()}); "
                         "needs at least 2")
    return np.searchsorted(classes, y).astype(np.int64)


def read_images(path: str | Path, key: str | None = "data",
                labels_key: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(uint8 ``[N, C, H, W]``, int64 labels ``[N]`` or None) of an ``.npz`` or a PNG folder
    (module docstring). ``labels_key`` applies to an ``.npz`` only."""
    path = Path(path)
    if path.is_dir():
        if labels_key:
            raise InputError(f"data.labels_key: {labels_key!r} is set but {str(path)!r} is a "
                             "folder, whose labels are its class sub-folders; allowed: unset")
        return _read_folder(path)
    if path.suffix.lower() != ".npz":
        raise InputError(f"data.path: {str(path)!r} must be a folder of .png or an .npz")
    try:
        with np.load(path, allow_pickle=False) as z:
            k, x = _npz_array(z, path, key, "data.key", "the image array")
            y = None
            if labels_key:
                lk, y = _npz_array(z, path, labels_key, "data.labels_key", "the label array")
    except InputError:
        raise
    except (ValueError, OSError, EOFError) as e:  # not a zip, or an object array
        raise InputError(f"data.path: cannot read {str(path)!r} as an .npz: {e}") from None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise InputError(f"data.key: {str(path)!r}:{k} must be uint8 [N, H, W, C] with C in "
                         f"(1, 3), got {x.dtype} {x.shape}")
    if y is not None:
        y = check_labels(y, len(x), f"{str(path)!r}:{lk}")
    return x.transpose(0, 3, 1, 2).copy(), y


def read_user_file(data: dict) -> tuple[int, ...] | None:
    """Reads the file of a ``file`` or ``images`` data section (labels included) and returns
    one sample's shape (``[C, H, W]`` or, with ``layout: flat``, ``[C*H*W]``); None for other
    datasets. Every check of ``read_points`` / ``read_images`` applies."""
    if data["name"] == "file":
        return read_points(data.get("path"), data.get("key", "data")).shape[1:]
    if data["name"] == "images":
        x, _ = read_images(data["path"], data.get("key", "data"), data.get("labels_key"))
        shape = tuple(int(s) for s in x.shape[1:])
        return (int(np.prod(shape)),) if data.get("layout") == "flat" else shape
    return None
