"""evaluation.metrics against independent computations: W2 by brute-force assignment, POT on a
hand-built cost matrix and the Gaussian closed form; MMD by a double loop; fold fraction on maps
with known folds; straightness of straight and curved fields against closed forms."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.linalg import sqrtm

from reflowma.evaluation import metrics


def test_w2_unpaired_is_the_optimal_assignment_on_small_sets():
    # equal sizes, uniform weights: optimal transport is an optimal permutation (Birkhoff)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) + 1.0
    best = min(sum(((a[i] - b[p[i]]) ** 2).sum() for i in range(6)) / 6
               for p in itertools.permutations(range(6)))
    assert metrics.w2_unpaired(torch.tensor(a), torch.tensor(b)) == pytest.approx(
        math.sqrt(best), rel=1e-9)


def test_w2_unpaired_matches_pot_with_unequal_sizes_and_image_shapes():
    import ot

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(7, 1, 2, 2)), rng.normal(size=(5, 1, 2, 2)) * 2
    A, B = a.reshape(7, -1), b.reshape(5, -1)
    M = ((A[:, None, :] - B[None]) ** 2).sum(-1)  # squared Euclidean, written out
    ref = ot.emd2(np.full(7, 1 / 7), np.full(5, 1 / 5), M)
    assert metrics.w2_unpaired(torch.tensor(a), torch.tensor(b)) == pytest.approx(
        math.sqrt(ref), rel=1e-9)


def test_w2_unpaired_in_one_dimension_is_the_sorted_matching():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(40, 1)), rng.exponential(size=(40, 1))
    ref = math.sqrt(((np.sort(a[:, 0]) - np.sort(b[:, 0])) ** 2).mean())
    assert metrics.w2_unpaired(torch.tensor(a), torch.tensor(b)) == pytest.approx(ref, rel=1e-9)


def test_w2_unpaired_between_gaussians_approaches_the_closed_form():
    m1, m2 = np.array([0.0, 0.0]), np.array([2.0, 1.0])
    S1 = np.array([[1.0, 0.3], [0.3, 0.5]])
    S2 = np.array([[2.0, -0.4], [-0.4, 1.0]])
    r1 = sqrtm(S1)
    dm = m1 - m2
    w2 = math.sqrt(dm @ dm + np.trace(S1 + S2 - 2 * sqrtm(r1 @ S2 @ r1)).real)
    n = 1500
    rng = np.random.default_rng(3)
    a, b = rng.multivariate_normal(m1, S1, n), rng.multivariate_normal(m2, S2, n)
    got = metrics.w2_unpaired(torch.tensor(a), torch.tensor(b))
    # the error is dominated by the sample means: W2^2 moves by 2 dm . (mean errors), whose SD
    # is 2 sqrt(dm' (S1 + S2) dm / n); through W2 = sqrt(W2^2) that is se below (0.04 at
    # n = 1500; measured spread over 8 seeds: 0.05, covariance errors add a little, and the
    # empirical-to-empirical bias is O(log n / n) in 2D). 5 se = 0.2, while dropping the
    # cross term (the most likely mistake) would be off by 0.74.
    se = 2 * math.sqrt(dm @ (S1 + S2) @ dm / n) / (2 * w2)
    assert abs(got - w2) < 5 * se, (got, w2, se)
    assert abs(math.sqrt(dm @ dm + np.trace(S1 + S2)) - w2) > 15 * se


def test_w2_paired_is_the_rms_distance():
    a = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    assert metrics.w2_paired(a, b) == pytest.approx(math.sqrt(25 / 2))


def _mmd_loop(a, b, bandwidths, scale):
    """Unbiased MMD^2 (U-statistic) with pairs written out one by one."""
    n, m = len(a), len(b)

    def k(x, y):
        d2 = float(((x - y) ** 2).sum())
        return sum(math.exp(-d2 / (2 * (h * scale) ** 2)) for h in bandwidths)

    kaa = sum(k(a[i], a[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kbb = sum(k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    if n == m:  # the cross term also leaves out the paired (i, i) terms
        kab = sum(k(a[i], b[j]) for i in range(n) for j in range(m) if i != j) / (n * (n - 1))
    else:
        kab = sum(k(a[i], b[j]) for i in range(n) for j in range(m)) / (n * m)
    return kaa + kbb - 2 * kab


@pytest.mark.parametrize(("n", "m"), [(12, 12), (10, 7)])
def test_mmd_matches_a_double_loop(n, m):
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(n, 3)), rng.normal(size=(m, 3)) * 1.5 + 0.3
    bw = (0.5, 1.0, 2.0)
    got = metrics.mmd(torch.tensor(a), torch.tensor(b), bw, scale=1.3)
    assert got == pytest.approx(_mmd_loop(a, b, bw, 1.3), rel=1e-10)
    # default scale: sqrt of the sum of b's per-dimension (unbiased) variances
    s = math.sqrt(np.var(b, axis=0, ddof=1).sum())
    assert metrics.mmd(torch.tensor(a), torch.tensor(b), bw) == pytest.approx(
        _mmd_loop(a, b, bw, s), rel=1e-10)


def test_mmd_is_near_zero_for_equal_laws_and_positive_for_different_ones():
    g = torch.Generator().manual_seed(5)
    a, b, c = (torch.randn(400, 2, generator=g) for _ in range(3))
    same = metrics.mmd(a, b, (1.0,))
    assert abs(same) < 0.01
    assert metrics.mmd(a, c + 1.0, (1.0,)) > 20 * abs(same)


def test_fold_fraction_of_abs_in_one_coordinate_is_the_negative_half():
    z = torch.randn(1000, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)

    def f(x):  # det df/dz = sign(x_0): folds where x_0 < 0
        return torch.stack([x[:, 0].abs(), x[:, 1]], 1)

    frac = metrics.fold_fraction(f, z, chunk=300)
    assert frac == float((z[:, 0] < 0).double().mean())
    assert 0.4 < frac < 0.6


@pytest.mark.parametrize(("A", "want"), [([[1.0, 2.0], [3.0, 4.0]], 1.0),  # det -2
                                         ([[2.0, 1.0], [1.0, 1.0]], 0.0),  # det 1
                                         ([[0.0, 1.0], [1.0, 0.0]], 1.0)])  # reflection
def test_fold_fraction_of_linear_maps_is_the_sign_of_the_determinant(A, want):
    M = torch.tensor(A, dtype=torch.float64)
    z = torch.randn(50, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert metrics.fold_fraction(lambda x: x @ M.T, z) == want


def test_fold_fraction_is_none_above_max_dim():
    assert metrics.fold_fraction(lambda x: x, torch.zeros(4, 5), max_dim=4) is None


def test_straightness_of_straight_fields_is_zero():
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    grid = [0.0, 0.1, 0.35, 0.6, 1.0]
    # rounding only: x + h v summed over the grid is 2 up to ulps
    assert metrics.straightness(lambda x, t: torch.ones_like(x) * 2.0, z, grid) < 1e-24
    # a field that varies in x and t but whose Euler paths are straight lines to a point
    target = torch.tensor([3.0, -1.0], dtype=torch.float64)

    def to_target(x, t):
        return (target - x) / (1 - t[:, None])

    assert metrics.straightness(to_target, z, grid) < 1e-24


@pytest.mark.parametrize("steps", [1, 2, 4, 10])
def test_straightness_of_a_time_varying_field_matches_the_closed_form(steps):
    # v(x, t) = (0, t): on a uniform grid the displacement is (0, mean t_i), so the
    # straightness is the variance of {0, 1/n, ..., (n-1)/n}, i.e. (n^2 - 1) / (12 n^2)
    z = torch.randn(16, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    grid = [i / steps for i in range(steps + 1)]

    def v(x, t):
        return torch.stack([torch.zeros_like(t), t], 1)

    assert metrics.straightness(v, z, grid) == pytest.approx(
        (steps**2 - 1) / (12 * steps**2), rel=1e-12, abs=1e-15)


def test_straightness_of_a_rotation_matches_a_direct_loop():
    z = torch.randn(32, 2, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    R = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    grid = [0.0, 0.25, 0.5, 1.0]
    zs = z.numpy()
    x, vs, hs = zs.copy(), [], []
    for a, b in zip(grid[:-1], grid[1:], strict=True):
        vi = x @ R.numpy().T
        vs.append(vi)
        hs.append(b - a)
        x = x + (b - a) * vi
    disp = x - zs
    ref = sum(h * ((disp - vi) ** 2).sum(1) for h, vi in zip(hs, vs, strict=True)).mean()
    got = metrics.straightness(lambda x, t: x @ R.T, z, grid)
    assert got == pytest.approx(ref, rel=1e-12)
    assert got > 0.05  # far from 0: the paths curve
