"""Classifier stage: a small LeNet-like CNN trained on the dataset's labels, whose penultimate
features are the space of ``fd_classifier`` (``evaluation.frechet``).

Data: the ``train`` split for training and the ``test`` split for the reported accuracy and
as the reference sample set of the Fréchet distance, for datasets with fixed splits (``mnist``,
``cifar10``); for other labelled image sets (``digits`` with ``layout: image``, a plug-in's) a
fixed holdout: every 5th image (index % 5 == 4) is the test set. ``data.hflip`` and
``data.split`` of the shared data section do not apply (all images are used as stored).
Writes ``classifier.pt`` (weights, net section, image shape, classes, data key, test accuracy)
and ``metrics.json``; every number ``fd_classifier`` produces is recorded next to this
classifier's test accuracy.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from reflowma import data
from reflowma.core.seeding import derive, device, fingerprint, generator
from reflowma.evaluation.frechet import FrechetReference
from reflowma.infra.storage import checkpoint
from reflowma.infra.storage.atomic import sha256, write_json
from reflowma.models import classifier as lenet
from reflowma.registry import InputError
from reflowma.stages.common import data_key
from reflowma.training.loop import check_amp, check_channels_last, fit, identity, on_accelerator

log = logging.getLogger(__name__)

SPLIT_DATASETS = ("mnist", "cifar10")  # fixed train/test splits (data.split)
HOLDOUT_EVERY = 5  # other labelled sets: index % 5 == 4 is the test set
KIND = "classifier"


def classifier_data_key(data_cfg: dict) -> str:
    """The data of a classifier: the data key without split and flips (it uses both splits,
    as stored)."""
    return data_key({k: v for k, v in data_cfg.items() if k not in ("split", "hflip")})


def labelled_split(data_cfg: dict, split: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(images float ``[N, C, H, W]`` in [-1, 1], labels long ``[N]``, description) of one
    split (see the module docstring)."""
    base = {k: v for k, v in data_cfg.items() if k not in ("split", "hflip")}
    name = data_cfg["name"]
    if name in SPLIT_DATASETS:
        ds = data.dataset({**base, "split": split})
        what = f"{name} {split} split"
    else:
        ds = data.dataset(base)
        what = f"{name}, fixed holdout (index % {HOLDOUT_EVERY} == {HOLDOUT_EVERY - 1})"
    if getattr(ds, "labels", None) is None:
        raise InputError(f"data.name: {name!r} has no labels; the classifier (fd_classifier) "
                         "needs a labelled image dataset (mnist, cifar10, digits with layout "
                         "image)")
    shape = tuple(getattr(ds, "image_shape", ds.shape))
    if len(shape) != 3:
        raise InputError(f"data.layout: the classifier needs images [C, H, W]; {name!r} gives "
                         f"samples of shape {shape} (set data.layout: image)")
    pts = torch.as_tensor(ds.points)
    x = pts.float() / 127.5 - 1.0 if pts.dtype == torch.uint8 else pts.float()
    x, y = x.reshape(-1, *shape), torch.as_tensor(ds.labels).long()
    if name not in SPLIT_DATASETS:
        test = torch.arange(len(y)) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
        keep = test if split == "test" else ~test
        x, y = x[keep], y[keep]
    return x, y, what


def predict(model, x: torch.Tensor, dev, batch_size: int | None = 1000, what: str = "logits"):
    """``model(x)`` (or ``model.features(x)``), the model on ``dev``, in chunks of
    ``batch_size`` images moved there (None: all at once), returned on the CPU."""
    batch_size = batch_size or max(1, x.shape[0])
    fn = model.features if what == "features" else model
    with torch.no_grad():
        return torch.cat([fn(x[i: i + batch_size].to(dev)).float().cpu()
                          for i in range(0, x.shape[0], batch_size)])


def accuracy(model, x, y, dev, batch_size: int = 1000) -> float:
    return float((predict(model, x, dev, batch_size).argmax(1) == y).float().mean())


def run(cfg: dict, out_dir, on_log=None) -> dict:
    """Train the classifier; writes ``classifier.pt`` and ``metrics.json`` in ``out_dir``."""
    dev = device(cfg["device"])
    check_amp(cfg["train"].get("amp", "none"), dev)  # before anything is written
    x_tr, y_tr, what_tr = labelled_split(cfg["data"], "train")
    x_te, y_te, what_te = labelled_split(cfg["data"], "test")
    classes = sorted(set(y_tr.tolist()) | set(y_te.tolist()))
    if classes != list(range(len(classes))):
        raise InputError(f"data.name: labels of {cfg['data']['name']!r} must be 0..C-1, got "
                         f"{classes[:12]}")
    shape = tuple(x_tr.shape[1:])
    check_channels_last(cfg["train"], shape, "classifier")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)  # after the checks: bad inputs write nothing
    torch.manual_seed(derive(cfg["seed"], "classifier-init"))
    model = lenet.build(shape, len(classes), cfg["net"]).to(dev)
    bs = cfg["train"]["batch_size"]
    # the training images and every draw on the device, or both on the CPU
    draws_on = dev if on_accelerator(cfg["train"].get("data_on_device", "auto"), dev) else None
    xs, ys = (x_tr, y_tr) if draws_on is None else (x_tr.to(dev), y_tr.to(dev))

    def loss_fn(m, step, gen):
        idx = torch.randint(0, xs.shape[0], (bs,), generator=gen, device=gen.device)
        logits = m(xs[idx].to(dev))
        return torch.nn.functional.cross_entropy(logits.float(), ys[idx].to(dev)), {}

    log.info("classifier: %s, images %s, %d classes, %d train / %d test images, %d steps",
             cfg["data"]["name"], shape, len(classes), len(y_tr), len(y_te),
             cfg["train"]["steps"])
    t0 = time.perf_counter()
    fp = fingerprint(identity(cfg), list(shape))
    ema, history = fit(model, loss_fn, cfg["train"],
                       generator(cfg["seed"], "classifier-train", device=draws_on),
                       out / "state.pt", fp, "classifier", on_log)
    seconds = time.perf_counter() - t0
    ema.eval()
    ebs = cfg["eval"]["batch_size"]
    acc, train_acc = accuracy(ema, x_te, y_te, dev, ebs), accuracy(ema, x_tr, y_tr, dev, ebs)
    meta = {"net": cfg["net"], "image_shape": list(shape), "n_classes": len(classes),
            "data": classifier_data_key(cfg["data"]), "seed": cfg["seed"], "fingerprint": fp,
            "test_accuracy": acc, "test_set": what_te, "n_test": len(y_te)}
    sha = checkpoint.save_model(out / "classifier.pt", KIND, checkpoint.cpu_state_dict(ema), meta)
    (out / "state.pt").unlink(missing_ok=True)
    metrics = {"test_accuracy": acc, "train_accuracy": train_acc, "n_test": len(y_te),
               "n_train": len(y_tr), "test_set": what_te, "train_set": what_tr,
               "final_loss": history[-1]["loss"] if history else None,
               "steps": cfg["train"]["steps"], "seconds": seconds, "sha256": sha}
    write_json(out / "metrics.json", {"metrics": metrics, "history": history})
    log.info("classifier: test accuracy %.4f on the %s (%d images), wrote %s", acc, what_te,
             len(y_te), out / "classifier.pt")
    return metrics


def load(path, dev="cpu"):
    """(LeNet in eval mode with frozen weights, meta, sha256) from a ``classifier.pt``."""
    obj = checkpoint.load_model_file(path, KIND)
    meta = obj["meta"]
    model = lenet.build(meta["image_shape"], meta["n_classes"], meta["net"])
    checkpoint.load_weights(model, obj["model"], path)
    return model.eval().requires_grad_(False).to(dev), meta, sha256(path)


def frechet_reference(data_cfg: dict, path, dev, batch_size: int | None = 1000
                      ) -> FrechetReference:
    """The reference of ``fd_classifier``: the classifier of ``path`` (on ``dev``) and the
    Gaussian statistics of its features on the classifier's test set, images in chunks of
    ``batch_size`` (None: all at once); ``info`` (test accuracy, the reference set, the file's
    sha256) goes into eval.json next to the distances."""
    model, meta, sha = load(path, dev)
    if classifier_data_key(data_cfg) != meta["data"]:
        raise InputError(f"evaluate.data: {classifier_data_key(data_cfg)} does not match "
                         f"{meta['data']} recorded in classifier {str(path)!r}")
    x_ref, _, what = labelled_split(data_cfg, "test")

    def features(x):
        x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).float()
        return predict(model, x, dev, batch_size, what="features").double().numpy()

    info = {"test_accuracy": meta["test_accuracy"], "reference": what,
            "n_reference": int(x_ref.shape[0]), "features": int(model.head.in_features),
            "sha256": sha}
    return FrechetReference(features, x_ref, info)
