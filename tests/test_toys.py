"""Each 2D toy's mean and covariance from a large sample against the values implied by its
definition (derived below, or integrated by quadrature), within 5 standard errors.

At N = 200k, 5 SE is about 1% of each variance: e.g. the moons' noise term (2% of its
variance) or a 2% change of the 8gaussians radius would be caught."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from reflowma import data

N = 200_000


def _moons():
    # upper (cos a, sin a), lower (1 - cos b, 1/2 - sin b), a, b ~ U(0, pi), half each, plus
    # N(0, 0.1^2) noise, then 2 (x - (1/2, 1/4)). E cos = 0, E sin = 2/pi, E cos^2 = E sin^2
    # = 1/2, E cos sin = 0: within-half covariance diag(1/2, 1/2 - 4/pi^2) in both halves;
    # half means (0, 2/pi) and (1, 1/2 - 2/pi) straddle (1/2, 1/4) by +-delta.
    delta = np.array([-0.5, 2 / math.pi - 0.25])
    cov = np.diag([0.5, 0.5 - 4 / math.pi**2]) + np.outer(delta, delta) + 0.01 * np.eye(2)
    return np.zeros(2), 4 * cov


def _checkerboard():
    # x1 ~ U(-2, 2); x2 = u - 2c + f, u ~ U(0, 1), c ~ Bernoulli(1/2), f = floor(x1) mod 2
    # (1 on [-1, 0) and [1, 2)); then times 2. Var x1 = 16/12, Var x2 = 1/12 + 1 + 1/4,
    # Cov(x1, x2) = E[x1 f] = (1/4)(int_{-1}^0 x dx + int_1^2 x dx) = 1/4.
    return np.zeros(2), 4 * np.array([[4 / 3, 0.25], [0.25, 4 / 3]])


def _spirals():
    # r = sqrt(U) 3 pi (density 2r / R^2 on [0, R]), x = +-r (cos r, sin r) / 2.5 + 0.1 noise
    R = 3 * math.pi

    def e(g):
        return quad(lambda r: g(r) * 2 * r / R**2, 0, R, limit=200)[0]

    cxx = e(lambda r: (r * math.cos(r)) ** 2) / 6.25 + 0.01
    cyy = e(lambda r: (r * math.sin(r)) ** 2) / 6.25 + 0.01
    cxy = e(lambda r: r * r * math.cos(r) * math.sin(r)) / 6.25
    return np.zeros(2), np.array([[cxx, cxy], [cxy, cyy]])


def _8gaussians():
    # 8 equal modes at radius 4 on a circle, std 0.5: E[cos^2] over the angles is 1/2
    return np.zeros(2), (16 / 2 + 0.25) * np.eye(2)


MOMENTS = {"8gaussians": _8gaussians, "moons": _moons, "checkerboard": _checkerboard,
           "spirals": _spirals}


@pytest.mark.parametrize("name", sorted(MOMENTS))
def test_toy_moments_match_their_definition(name):
    mean, cov = MOMENTS[name]()
    x = data.load({"name": name}, N, torch.Generator().manual_seed(123)).double().numpy()
    assert x.shape == (N, 2)
    m = x.mean(0)
    se_m = x.std(0, ddof=1) / math.sqrt(N)
    assert np.all(np.abs(m - mean) < 5 * se_m), (m, mean, se_m)
    c = x - mean  # known mean: each covariance entry is a plain average of products
    for i in range(2):
        for j in range(2):
            prod = c[:, i] * c[:, j]
            se = prod.std(ddof=1) / math.sqrt(N)
            assert abs(prod.mean() - cov[i, j]) < 5 * se, (name, i, j, prod.mean(), cov[i, j])
