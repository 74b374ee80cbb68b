"""Fréchet distance between sample sets in a feature space (pure functions; numpy/scipy).

The Fréchet distance of two Gaussians N(mu1, S1), N(mu2, S2) is

    FD = |mu1 - mu2|² + tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2}),

which is their squared 2-Wasserstein distance (tr (S1 S2)^{1/2} equals
tr (S1^{1/2} S2 S1^{1/2})^{1/2}: the two matrices are similar). ``frechet_distance`` computes
the trace term from the symmetric form with float64 eigendecompositions (no complex
arithmetic, no imaginary parts to drop; eigenvalues below zero from round-off are clipped).
``fd_classifier`` in the evaluate stage applies it to the means and covariances of a small
classifier's penultimate features (``FrechetReference``); FID is the same number in Inception
features.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (float64)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def gaussian_stats(x) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[d]`` and unbiased covariance ``[d, d]`` (float64) of samples ``x [n, d]``."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {x.shape[0]}")
    return x.mean(0), np.atleast_2d(np.cov(x, rowvar=False))


def frechet_distance(mu1, s1, mu2, s2) -> float:
    """``|mu1 - mu2|² + tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2})`` (= W2² of the two
    Gaussians), float64, clipped at 0 against round-off."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(s1, np.float64)), np.atleast_2d(np.asarray(s2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shapes do not fit: mu {mu1.shape}, {mu2.shape}; "
                         f"S {s1.shape}, {s2.shape}")
    r1 = _sqrt_psd(s1)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0.0, None)).sum()
    fd = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * cross)
    return max(fd, 0.0)


def frechet_from_samples(x, y) -> float:
    """The Fréchet distance of the Gaussians fitted to samples ``x [n, d]`` and ``y [m, d]``."""
    return frechet_distance(*gaussian_stats(x), *gaussian_stats(y))


class FrechetReference:
    """The reference side of ``fd_classifier``: ``features(x) -> [n, d]`` (a classifier's
    penultimate layer, evaluated by the caller's device logic) and the Gaussian statistics of
    ``features(reference)``; ``distance(x)`` is the Fréchet distance of ``x``'s features to
    them. ``info`` is recorded in eval.json next to the numbers (test accuracy, n, ...)."""

    def __init__(self, features: Callable, reference, info: dict | None = None):
        self.features = features
        self.mu, self.sigma = gaussian_stats(features(reference))
        self.info = dict(info or {})

    def distance(self, x) -> float:
        return frechet_distance(*gaussian_stats(self.features(x)), self.mu, self.sigma)
