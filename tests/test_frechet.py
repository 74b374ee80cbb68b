"""The Fréchet distance is W2² between Gaussians: closed forms, an independent computation,
and its sample version (same distribution -> small, shrinking with n)."""

import numpy as np
import pytest
import scipy.linalg

from reflowma.evaluation.frechet import (
    FrechetReference,
    frechet_distance,
    frechet_from_samples,
    gaussian_stats,
)


def _random_spd(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T + 0.1 * np.eye(d)


def test_diagonal_closed_form():
    rng = np.random.default_rng(0)
    d = 7
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_commuting_closed_form():
    """Covariances with the same eigenvectors (commuting, not diagonal)."""
    rng = np.random.default_rng(1)
    d = 5
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a, b = rng.uniform(0.2, 2.0, d), rng.uniform(0.2, 2.0, d)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu = rng.standard_normal(d)
    want = ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(want, rel=1e-10)


def test_identical_and_symmetric():
    rng = np.random.default_rng(2)
    s1, s2 = _random_spd(rng, 6), _random_spd(rng, 6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-10)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        frechet_distance(mu2, s2, mu1, s1), rel=1e-10)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_non_commuting_against_independent_routes(seed):
    """A random non-commuting pair: against scipy's sqrtm of S1 S2 (the textbook FID formula,
    real part) and POT's Bures-Wasserstein distance (W, squared)."""
    rng = np.random.default_rng(seed)
    d = 8
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    assert not np.allclose(s1 @ s2, s2 @ s1)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    got = frechet_distance(mu1, s1, mu2, s2)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    textbook = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(covmean))
    assert got == pytest.approx(textbook, rel=1e-8)
    ot_gaussian = pytest.importorskip("ot.gaussian")
    w = float(ot_gaussian.bures_wasserstein_distance(mu1, mu2, s1, s2))
    assert got == pytest.approx(w ** 2, rel=1e-8)


def test_singular_covariances():
    """Rank-deficient covariances (fewer samples than features) stay finite and >= 0."""
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((5, 20)), rng.standard_normal((5, 20))
    fd = frechet_from_samples(x, y)
    assert np.isfinite(fd) and fd >= 0


def test_samples_same_distribution_small_and_shrinking():
    rng = np.random.default_rng(7)
    d = 4
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    chol = q @ np.diag([1.0, 0.5, 2.0, 0.3])
    mu = np.array([1.0, -2.0, 0.5, 0.0])

    def draw(n):
        return rng.standard_normal((n, d)) @ chol.T + mu

    def mean_fd(n, reps=20):
        return float(np.mean([frechet_from_samples(draw(n), draw(n)) for _ in range(reps)]))

    small, large = mean_fd(200), mean_fd(3200)
    far = frechet_from_samples(draw(3200), draw(3200) + 1.0)  # shifted: FD ~ d * 1
    assert large < small / 4  # the bias is O(1/n)
    assert large < 0.01 * far
    assert far == pytest.approx(d, rel=0.1)


def test_stats_and_reference():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((500, 3))
    mu, s = gaussian_stats(x)
    assert mu.shape == (3,) and s.shape == (3, 3)
    ref = FrechetReference(lambda a: np.asarray(a) * 2.0, x, {"test_accuracy": 0.9})
    assert ref.distance(x) == pytest.approx(0.0, abs=1e-10)
    assert ref.info == {"test_accuracy": 0.9}
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_stats(x[:1])
