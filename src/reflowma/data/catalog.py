"""What each bundled dataset is, declared here once and read without importing torch or reading
any data: the params checks (``infra.config.validate``) and the workflow's parse (the Snakefile
must not import torch) ask these functions, and ``registry.DATASETS`` holds a factory for every
name (tests/test_data_registry.py checks the two agree).

A dataset declares its default ``layout`` (``flat``: samples ``[n, d]``; ``image``: ``[n, C,
H, W]``; ``data.layout`` switches image sets and ``digits`` between the two), whether it reads
``data.path``, and whether it has class labels: the bundled image sets and ``digits`` always,
the toys and point files never, the user's ``images`` when the file carries them (an ``.npz``
with ``data.labels_key``, or a folder of class sub-folders: ``data/readers.py``). A plug-in's
dataset (registered outside the package) declares nothing here: the functions answer None
and its checks happen when its data are read.

The ``*_problem`` functions say what a ``data`` section asks that its dataset does not do, as
``(key of the data section, message)`` or None; ``infra.config`` names the stage and the params
file around them.
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
    suffixes: tuple = ()  # data.path is a file with one of these suffixes (empty: file or folder)


POINT_SUFFIXES = (".npy", ".csv", ".h5", ".hdf5")  # data.name: file
_TOY = Declared("flat")
DECLARED = {
    "8gaussians": _TOY, "moons": _TOY, "checkerboard": _TOY, "spirals": _TOY,
    "digits": Declared("flat", ("flat", "image"), labels=True),
    "file": Declared("flat", reads_path=True, suffixes=POINT_SUFFIXES),
    "mnist": Declared("image", ("image", "flat"), labels=True),
    "cifar10": Declared("image", ("image", "flat"), reads_path=True, labels=True),
    "images": Declared("image", ("image", "flat"), reads_path=True, labels="file"),
}
TOYS = frozenset(n for n, d in DECLARED.items() if d is _TOY)  # data.toys.TOYS
IMAGE_SETS = frozenset(n for n, d in DECLARED.items() if d.layout == "image")


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


def image_sets_text(last: str = "") -> str:
    """The datasets whose samples can be images ``[C, H, W]``, as messages name them:
    ``cifar10, images, mnist, digits with layout image`` (``last`` before the final one)."""
    switched = [f"{n} with layout image" for n, d in DECLARED.items()
                if d.layout != "image" and "image" in d.layouts]
    return ", ".join([*sorted(IMAGE_SETS), *(f"{last}{n}" for n in switched)])


def labelled_sets_text() -> str:
    """The datasets with class labels, as messages name them: ``mnist, cifar10, digits with
    layout image, images with labels``."""
    names = [n for n, d in DECLARED.items() if d.labels is True and d.layout == "image"]
    names += [f"{n} with layout image" for n, d in DECLARED.items()
              if d.labels is True and d.layout != "image" and "image" in d.layouts]
    return ", ".join(names + [f"{n} with labels" for n, d in DECLARED.items()
                              if d.labels == "file"])


def section_problem(data: dict, check_files: bool = True) -> tuple[str, str] | None:
    """A path where the dataset reads one (and only there; a file with an allowed suffix, or
    any file or folder), a layout it has, ``hflip`` and ``labels_key`` only where they apply.
    ``check_files=False`` skips whether the path exists."""
    name, path = data["name"], data.get("path")
    d = DECLARED.get(name)
    if d is None:
        return None
    if path and not d.reads_path:
        return "path", (f"{path!r} is set but data.name is {name!r}, a bundled dataset that "
                        "never reads it; set data.name to file (points) or images to read the "
                        "file, or drop data.path")
    if d.reads_path:
        if not path:
            return "path", f"is required when data.name is {name!r}"
        if check_files and not (Path(path).is_file() if d.suffixes else Path(path).exists()):
            return "path", f"file {path!r} does not exist"
        if d.suffixes and Path(path).suffix.lower() not in d.suffixes:
            return "path", f"{path!r}: allowed suffixes {', '.join(d.suffixes)}"
    if data.get("layout") and data["layout"] not in d.layouts:
        return "layout", (f"{data['layout']!r} is not a layout of {name!r}; allowed: "
                          f"{', '.join(d.layouts)}")
    if data.get("hflip") and not image_layout(data):
        return "hflip", (f"applies to images [C, H, W] ({image_sets_text()}), not {name!r} "
                         f"with layout {data.get('layout') or d.layout!r}")
    if data.get("labels_key"):
        if d.labels != "file":
            return "labels_key", ("applies to data.name images (an .npz's label array), not "
                                  f"{name!r}")
        if check_files and path and Path(path).is_dir():
            return "labels_key", (f"{data['labels_key']!r} is set but {path!r} is a folder, "
                                  "whose labels are its class sub-folders; allowed: unset")
    return None


def labelled_images_problem(data: dict, what: str,
                            check_files: bool = True) -> tuple[str, str] | None:
    """Whether ``what`` (a job that needs labelled images ``[C, H, W]``: the classifier, and
    so ``fd_classifier``) can use this dataset."""
    if has_labels(data, check_files) is False:
        if DECLARED[data["name"]].labels == "file":
            return "labels_key", (f"images at {data.get('path')!r} have no class labels; "
                                  f"{what} needs them: set data.labels_key to the .npz's label "
                                  "array, or put the PNGs in one sub-folder per class (or set "
                                  "evaluate.fd_classifier: false)")
        return "name", (f"{data['name']!r} has no class labels; {what} needs labelled images: "
                        f"{labelled_sets_text()} (or set evaluate.fd_classifier: false)")
    if image_layout(data) is False:
        return "layout", f"{data.get('layout')!r}: {what} needs images [C, H, W]; allowed: image"
    return None


def images_problem(data: dict, what: str) -> tuple[str, str] | None:
    """Whether ``what`` (a metric of images ``[C, H, W]``) can use this dataset."""
    if image_layout(data) is False:
        d = DECLARED[data["name"]]
        layout = data.get("layout") or d.layout
        if "image" in d.layouts:  # the dataset has images: its layout is what to change
            return "layout", (f"{layout!r}: {what} needs images [C, H, W]; allowed: image")
        return "name", (f"{data['name']!r} (layout {layout!r}): {what} needs "
                        f"images [C, H, W]: {image_sets_text(last='or ')}")
    return None
