"""Inception image metrics: FID, KID and precision/recall from InceptionV3 pool features.

The features (``[n, 2048]``, torch-fidelity's ``FeatureExtractorInceptionV3``, layer
``2048``, from a local weights file) come from ``inception_worker.py`` run as a separate
process under an interpreter where torch-fidelity imports (``FeatureWorker``); everything
here is numpy/torch in the main environment. Conventions, as in torch-fidelity 0.4.0:

* images: ``[n, C, H, W]`` in [-1, 1] -> uint8 ``round((x + 1) * 127.5)``, clipped; one
  channel is repeated to three (``to_uint8``);
* FID: the Fréchet distance (``frechet.frechet_distance``) of the Gaussians fitted to the two
  feature sets (unbiased covariances, float64);
* KID: the unbiased MMD² with the cubic polynomial kernel ``k(a, b) = (a·b / d + 1)³``,
  averaged over ``subsets`` random subsets of ``subset_size`` from each side (drawn without
  replacement per subset); mean and standard deviation over subsets;
* precision/recall (Kynkäänniemi et al. 2019): the k-NN ball of a feature (radius: the
  distance to its k-th nearest other feature of the same set, k = 3) approximates that set's
  manifold; precision = the fraction of generated features inside some reference ball,
  recall = the fraction of reference features inside some generated ball.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from reflowma.evaluation.frechet import frechet_distance, gaussian_stats

WORKER = Path(__file__).with_name("inception_worker.py")
PR_NEIGHBOURS = 3  # torch-fidelity's prc_neighborhood


def to_uint8(x) -> np.ndarray:
    """uint8 ``[n, 3, H, W]`` of images ``[n, C, H, W]`` in [-1, 1] (C = 1 repeated)."""
    x = torch.as_tensor(x)
    if x.dtype != torch.uint8:
        x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be [n, 1 or 3, H, W], got shape {tuple(x.shape)}")
    return x.expand(-1, 3, -1, -1).contiguous().cpu().numpy()


def poly_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(a b^T / d + 1)^3`` for ``a [n, d]``, ``b [m, d]`` (float64)."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def mmd2_unbiased(kxx: np.ndarray, kxy: np.ndarray, kyy: np.ndarray) -> float:
    """Unbiased MMD² of two sets of the same size m from their kernel matrices: the
    off-diagonal means of ``kxx`` and ``kyy`` minus twice the full mean of ``kxy``."""
    m = kxx.shape[0]
    off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(off - 2.0 * kxy.mean())


def kid(f1, f2, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """(mean, std) over ``subsets`` of the unbiased polynomial-kernel MMD² between
    ``subset_size`` random rows of ``f1 [n1, d]`` and of ``f2 [n2, d]``;
    ``subset_size`` is capped at ``min(n1, n2)``."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    m = min(subset_size, len(f1), len(f2))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per side, got {len(f1)}, {len(f2)}")
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(subsets):
        a = f1[rng.choice(len(f1), m, replace=False)]
        b = f2[rng.choice(len(f2), m, replace=False)]
        vals.append(mmd2_unbiased(poly_kernel(a, a), poly_kernel(a, b), poly_kernel(b, b)))
    return float(np.mean(vals)), float(np.std(vals))


def _dists(a: torch.Tensor, b: torch.Tensor, batch: int):
    """Rows of the Euclidean distance matrix ``|a_i - b_j|``, ``batch`` rows of ``a`` at a
    time (each ``[batch, len(b)]``)."""
    for i in range(0, len(a), batch):
        yield torch.cdist(a[i: i + batch], b)


def knn_radii(f, k: int = PR_NEIGHBOURS, batch: int = 2048, device="cpu") -> np.ndarray:
    """Distance of each row of ``f [n, d]`` to its k-th nearest other row (``[n]``)."""
    t = torch.as_tensor(np.asarray(f), dtype=torch.float32, device=device)
    if len(t) <= k:
        raise ValueError(f"k-NN radii with k = {k} need more than {k} samples, got {len(t)}")
    # the (k+1)-th smallest distance: the smallest is the row itself (0)
    return torch.cat([d.kthvalue(k + 1, dim=1).values.cpu() for d in _dists(t, t, batch)]
                     ).numpy()


def coverage_fraction(f, centres, radii, batch: int = 2048, device="cpu") -> float:
    """Fraction of rows of ``f`` within ``radii[j]`` of some ``centres[j]`` (inclusive)."""
    a = torch.as_tensor(np.asarray(f), dtype=torch.float32, device=device)
    c = torch.as_tensor(np.asarray(centres), dtype=torch.float32, device=device)
    r = torch.as_tensor(np.asarray(radii), dtype=torch.float32, device=device)
    inside = torch.cat([(d <= r).any(dim=1).cpu() for d in _dists(a, c, batch)])
    return int(inside.sum()) / len(inside)


def precision_recall(fake, real, k: int = PR_NEIGHBOURS, real_radii=None, batch: int = 2048,
                     device="cpu") -> tuple[float, float]:
    """(precision, recall) of generated features ``fake`` against reference ``real``."""
    real_radii = knn_radii(real, k, batch, device) if real_radii is None else real_radii
    precision = coverage_fraction(fake, real, real_radii, batch, device)
    recall = coverage_fraction(real, fake, knn_radii(fake, k, batch, device), batch, device)
    return precision, recall


class InceptionReference:
    """The reference side of the Inception metrics: ``features(images) -> [n, 2048]`` and the
    reference set's features ``ref`` with their Gaussian statistics (``mu``, ``sigma``) and
    k-NN radii (computed here unless given, e.g. from a cache). ``scores(x)`` gives the
    enabled metrics of images ``x`` (``fid``; ``kid``, ``kid_std``; ``precision``,
    ``recall``), remembering the last ``x`` so that the metrics of one sample set share one
    feature pass. ``info`` goes into eval.json next to the numbers; ``close`` (optional) is
    called by ``close()``."""

    def __init__(self, features, ref, enabled=("fid", "kid", "precision_recall"),
                 mu=None, sigma=None, radii=None, kid_subsets: int = 100,
                 kid_subset_size: int = 1000, seed: int = 0, device="cpu", info=None,
                 close=None):
        self.features, self.ref = features, np.asarray(ref, np.float32)
        self.enabled, self.device = tuple(enabled), device
        if mu is None or sigma is None:
            mu, sigma = gaussian_stats(self.ref)
        self.mu, self.sigma = mu, sigma
        self.radii = (knn_radii(self.ref, device=device)
                      if radii is None and "precision_recall" in self.enabled else radii)
        self.kid_subsets, self.kid_subset_size, self.seed = kid_subsets, kid_subset_size, seed
        self.info = dict(info or {})
        self._last, self._close = None, close

    def close(self) -> None:
        """Ends what ``features`` holds open (the worker process), if anything."""
        if self._close is not None:
            self._close()

    def scores_of_features(self, f) -> dict:
        out = {}
        if "fid" in self.enabled:
            out["fid"] = frechet_distance(*gaussian_stats(f), self.mu, self.sigma)
        if "kid" in self.enabled:
            out["kid"], out["kid_std"] = kid(f, self.ref, self.kid_subsets,
                                             self.kid_subset_size, self.seed)
        if "precision_recall" in self.enabled:
            out["precision"], out["recall"] = precision_recall(
                f, self.ref, real_radii=self.radii, device=self.device)
        return out

    def scores(self, x) -> dict:
        if self._last is None or self._last[0] is not x:
            self._last = (x, self.scores_of_features(self.features(x)))
        return self._last[1]


class FeatureWorker:
    """``inception_worker.py`` in a child process of interpreter ``python``:
    ``worker(images)`` -> float32 ``[n, 2048]`` features of images in [-1, 1] (or uint8).
    Starting it loads the weights (a failure raises ``RuntimeError`` with the worker's
    stderr); ``ready`` holds its first line (versions, device). Arrays pass through .npy
    files in a temporary folder; ``close()`` ends the child (so does the end of its stdin
    when this process exits)."""

    def __init__(self, python: str, weights: str, device: str = "cpu", batch_size: int = 200):
        self.tmp = tempfile.TemporaryDirectory(prefix="reflowma-inception-")
        self._err = open(Path(self.tmp.name) / "stderr.txt", "w+")
        cmd = [str(python), str(WORKER), "--weights", str(weights), "--device", str(device),
               "--batch-size", str(batch_size)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._err, text=True)
        self.ready = self._reply("start")
        self.calls = 0

    def _reply(self, what: str) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self._err.seek(0)
            tail = self._err.read()[-2000:].strip()
            raise RuntimeError(f"the Inception feature worker ({self.proc.args[0]}) failed at "
                               f"{what} (exit {self.proc.returncode}; its interpreter must "
                               "import torch_fidelity: `make inception-env`, or set "
                               f"evaluate.inception_python): {tail}")
        return json.loads(line)

    def __call__(self, images) -> np.ndarray:
        self.calls += 1
        src = Path(self.tmp.name) / f"in{self.calls}.npy"
        dst = Path(self.tmp.name) / f"out{self.calls}.npy"
        np.save(src, to_uint8(images))
        self.proc.stdin.write(json.dumps({"in": str(src), "out": str(dst)}) + "\n")
        self.proc.stdin.flush()
        self._reply(f"request {self.calls}")
        f = np.load(dst)
        src.unlink()
        dst.unlink()
        return f

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        self._err.close()
        self.tmp.cleanup()
