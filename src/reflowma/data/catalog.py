"""What each bundled dataset is, declared here once and read without importing torch or reading
any data: the params checks (``infra.config``) and the workflow's parse (the Snakefile must not
import torch) ask these functions, and ``registry.DATASETS`` holds a factory for every name
(tests/test_data_registry.py checks the two agree).

A dataset declares its default ``layout`` (``flat``: samples ``[n, d]``; ``image``: ``[n, C,
H, W]``; ``data.layout`` switches image sets and ``digits`` between the two), whether it reads
``data.path``, and whether it has class labels: the bundled image sets and ``digits`` always,
the toys and point files never, the user's ``images`` when the file carries them (an ``.npz``
with ``data.labels_key``, or a folder of class sub-folders: ``data/readers.py``). A plug-in's
dataset (registered outside the package) declares nothing here: the functions answer None
and its checks happen when its data are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Declared:
    layout: str  # default layout: "flat" or "image"
    layouts: tuple = ("flat",)  # the layouts data.layout may pick
    reads_path: bool = False  # data.path is required (and read)
    labels: bool | str = False  # True, False, or "file": the file's own (images)


_TOY = Declared("flat")
DECLARED = {
    "8gaussians": _TOY, "moons": _TOY, "checkerboard": _TOY, "spirals": _TOY,
    "digits": Declared("flat", ("flat", "image"), labels=True),
    "file": Declared("flat", reads_path=True),
    "mnist": Declared("image", ("image", "flat"), labels=True),
    "cifar10": Declared("image", ("image", "flat"), reads_path=True, labels=True),
    "images": Declared("image", ("image", "flat"), reads_path=True, labels="file"),
}
TOYS = frozenset(n for n, d in DECLARED.items() if d is _TOY)  # data.toys.TOYS
IMAGE_SETS = frozenset(n for n, d in DECLARED.items() if d.layout == "image")
POINT_SUFFIXES = (".npy", ".csv", ".h5", ".hdf5")  # data.name: file


def declared(name: str) -> Declared | None:
    """The declaration of a bundled dataset; None for a plug-in's."""
    return DECLARED.get(name)


def image_layout(data: dict) -> bool | None:
    """Whether samples are images ``[C, H, W]`` under this ``data`` section (None: a plug-in's,
    unknown here)."""
    d = DECLARED.get(data["name"])
    if d is None:
        return None
    return (data.get("layout") or d.layout) == "image" and "image" in d.layouts


def class_folders(path: str | Path) -> list[Path]:
    """The class sub-folders of an image folder (sorted by name; hidden ones skipped)."""
    return sorted(p for p in Path(path).iterdir() if p.is_dir() and not p.name.startswith("."))


def has_labels(data: dict, check_files: bool = True) -> bool | None:
    """Whether the dataset of this ``data`` section has class labels (None: unknown here, a
    plug-in's, or a folder not looked at with ``check_files=False``)."""
    d = DECLARED.get(data["name"])
    if d is None:
        return None
    if d.labels != "file":
        return d.labels
    if data.get("labels_key"):
        return True
    path = data.get("path")
    if path and Path(path).is_dir():
        return bool(class_folders(path)) if check_files else None
    return False
