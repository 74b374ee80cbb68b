"""The Inception metrics of the evaluate stage (``fid``, ``kid``, ``precision_recall``).

``open_reference(cfg, dev)`` starts the feature worker (``evaluation.inception_worker``
under ``inception_python(cfg)``: it loads ``inception_inputs.inception_weights(cfg)``, never a
download) before any other work, and returns an ``InceptionReference`` on the training split:
the first ``inception_ref_samples`` images (no flips). The reference's features, Gaussian
statistics and k-NN radii are computed once per dataset and cached in
``inception_cache`` (default ``$XDG_CACHE_HOME/reflowma/inception``) as
``<dataset>-<key>.npz``, the key hashing the reference images' bytes, the weights file's
sha256 and the feature layer; the file is written atomically (concurrent first evaluations
may each compute it; the last rename wins, with identical content).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from reflowma import data
from reflowma.evaluation import inception
from reflowma.evaluation.frechet import gaussian_stats
from reflowma.evaluation.inception_inputs import INCEPTION_METRICS, inception_weights
from reflowma.infra import config
from reflowma.infra.storage.atomic import atomic_path, content_sha256
from reflowma.registry import InputError
from reflowma.stages.classifier import SPLIT_DATASETS

log = logging.getLogger(__name__)
CACHE_VERSION = 1  # bump when the cached arrays change meaning
DEFAULT_BATCH = 200
INCEPTION_PYTHON_ENV = "REFLOWMA_INCEPTION_PYTHON"
INCEPTION_VENV = ".venv-inception"  # `make inception-env` creates it in the project folder


def inception_python(cfg: dict) -> str:
    """The interpreter of the Inception feature worker: ``inception_python``, else
    ``$REFLOWMA_INCEPTION_PYTHON``, else ``.venv-inception/bin/python`` of the project folder
    (next to ``params/``) where it exists, else this interpreter (a cluster's conda env)."""
    explicit = cfg.get("inception_python") or os.environ.get(INCEPTION_PYTHON_ENV)
    if explicit:
        return str(explicit)
    venv = config.repo_root() / INCEPTION_VENV / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def reference_images(data_cfg: dict, n: int) -> tuple[np.ndarray, str]:
    """(uint8 ``[m, 3, H, W]``, description): the first ``m = min(n, N)`` images of the
    training split (mnist, cifar10), or of the whole set for other image datasets."""
    base = {k: v for k, v in data_cfg.items() if k not in ("split", "hflip")}
    name = data_cfg["name"]
    ds = data.dataset({**base, "split": "train"} if name in SPLIT_DATASETS else base)
    shape = tuple(getattr(ds, "image_shape", ds.shape))
    if len(shape) != 3 or shape[0] not in (1, 3) or not hasattr(ds, "points"):
        raise InputError(f"evaluate.data.name: {name!r} gives samples of shape {shape}; the "
                         "Inception metrics need a finite set of images [1 or 3, H, W]")
    pts = ds.points[:n]
    x = pts.reshape(-1, *shape)
    what = f"{name} {'train split' if name in SPLIT_DATASETS else 'all images'}, first {len(x)}"
    return inception.to_uint8(x), what


def cache_dir(cfg: dict) -> Path:
    if cfg.get("inception_cache"):
        return Path(cfg["inception_cache"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "reflowma" / "inception"


def cached_reference(path: Path, compute, want_radii: bool) -> tuple[dict, bool]:
    """The arrays of ``path`` (``features``, ``mu``, ``sigma``, ``radii``), else ``compute()``
    written there atomically; and whether they came from the file."""
    if path.is_file():
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        if not want_radii or "radii" in arrays:
            return arrays, True
        arrays["radii"] = inception.knn_radii(arrays["features"])
    else:
        arrays = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return arrays, False


def open_reference(cfg: dict, dev) -> inception.InceptionReference | None:
    """The reference of the enabled Inception metrics (None when none is on)."""
    enabled = [m for m in INCEPTION_METRICS if cfg.get(m)]
    if not enabled:
        return None
    weights, python = inception_weights(cfg), inception_python(cfg)
    worker = inception.FeatureWorker(python, weights, str(dev),
                                     cfg.get("batch_size") or DEFAULT_BATCH)
    log.info("evaluate: Inception worker ready: %s", worker.ready)
    try:
        images, what = reference_images(cfg["data"], cfg["inception_ref_samples"])
        wsha = content_sha256(weights)
        key = hashlib.sha256(json.dumps([CACHE_VERSION, hashlib.sha256(images).hexdigest(),
                                         list(images.shape), wsha, worker.ready["feature"]])
                             .encode()).hexdigest()[:20]
        path = cache_dir(cfg) / f"{cfg['data']['name']}-{key}.npz"

        def compute():
            log.info("evaluate: Inception features of the reference (%s)", what)
            f = worker(images)
            mu, sigma = gaussian_stats(f)
            return {"features": f, "mu": mu, "sigma": sigma,
                    "radii": inception.knn_radii(f, device=dev)}

        arrays, hit = cached_reference(path, compute, "precision_recall" in enabled)
    except BaseException:
        worker.close()
        raise
    n_fake = cfg["n_samples"]
    info = {"weights": str(weights), "weights_sha256": wsha, "worker": worker.ready,
            "reference": {"what": what, "n": int(len(images)), "cache": str(path),
                          "cache_hit": hit, "key": key},
            "feature": worker.ready["feature"]}
    if "kid" in enabled:
        info["kid"] = {"subsets": cfg["kid_subsets"], "kernel": "(a.b / d + 1)^3",
                       "subset_size": min(cfg["kid_subset_size"], n_fake, len(images))}
    if "precision_recall" in enabled:
        info["precision_recall"] = {"k": inception.PR_NEIGHBOURS}
    return inception.InceptionReference(
        worker, arrays["features"], enabled, arrays["mu"], arrays["sigma"], arrays.get("radii"),
        cfg["kid_subsets"], cfg["kid_subset_size"], cfg["seed"], dev, info, worker.close)
