"""The sample discrepancies of ``core.discrepancies`` against independent computations (direct
loops, POT) and their gradients against finite differences (gradcheck, float64)."""

import math

import numpy as np
import ot
import pytest
import torch

from reflowma.core import discrepancies as D


def _sets(n=7, m=6, d=2, seed=0, shift=0.5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(m, d, generator=g, dtype=torch.float64) + shift
    return x, y


def test_mmd2_matches_double_loop():
    x, y = _sets()
    bw = [0.5, 1.3]

    def k(a, b):
        return sum(math.exp(-float(((a - b) ** 2).sum()) / (2 * s * s)) for s in bw)

    n, m = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    sxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    assert float(D.mmd2(x, y, bw)) == pytest.approx(sxx + syy - 2 * sxy, rel=1e-12)


def test_median_bandwidths():
    y = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])  # distances 3, 4, 5
    assert D.median_bandwidths(y, (0.5, 1.0)) == pytest.approx([2.0, 4.0])


def test_sliced_w2_1d_matches_pot_emd2():
    x, y = _sets(n=9, m=9, d=1)
    ref = ot.emd2(np.full(9, 1 / 9), np.full(9, 1 / 9), ot.dist(x.numpy(), y.numpy()))
    val = D.sliced_w2(x, y, torch.ones(1, 1, dtype=torch.float64))
    assert float(val) == pytest.approx(ref, rel=1e-10)


def test_sliced_w2_along_known_directions_matches_pot():
    x, y = _sets(n=8, m=8, d=3)
    th = D.random_directions(4, 3, torch.Generator().manual_seed(1), torch.float64)
    a = np.full(8, 1 / 8)
    ref = np.mean([ot.emd2(a, a, ot.dist((x @ t[:, None]).numpy(), (y @ t[:, None]).numpy()))
                   for t in th])
    assert float(D.sliced_w2(x, y, th)) == pytest.approx(ref, rel=1e-10)


def test_sliced_w2_translation_closed_form():
    """y = x + delta: each projection shifts by theta.delta, so SW2² = mean (theta.delta)²,
    which tends to |delta|² / d over uniform directions."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, generator=g, dtype=torch.float64)
    delta = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    th = D.random_directions(20000, 4, g, torch.float64)
    val = float(D.sliced_w2(x, x + delta, th))
    assert val == pytest.approx(float(((th @ delta) ** 2).mean()), rel=1e-9)
    assert val == pytest.approx(float(delta @ delta) / 4, rel=0.03)


def test_entropic_ot_matches_pot():
    x, y = _sets()
    eps = 0.5
    M = ot.dist(x.numpy(), y.numpy())
    a, b = np.full(len(x), 1 / len(x)), np.full(len(y), 1 / len(y))
    P = ot.sinkhorn(a, b, M, eps, method="sinkhorn_log", numItermax=10000, stopThr=1e-14)
    ref = (P * M).sum() + eps * (P * np.log(P / np.outer(a, b))).sum()
    assert float(D.entropic_ot(x, y, eps, 2000, 1e-14)) == pytest.approx(ref, rel=1e-9)
    cost = ot.sinkhorn2(a, b, M, eps, method="sinkhorn_log", numItermax=10000, stopThr=1e-14)
    assert (P * M).sum() == pytest.approx(float(cost), rel=1e-9)  # POT's value is <P, M>


def test_sinkhorn_divergence_limits():
    x, y = _sets(n=6, m=6)
    assert abs(float(D.sinkhorn_divergence(x, x.clone(), 0.3, 2000, 1e-14))) < 1e-7
    w2 = ot.emd2(np.full(6, 1 / 6), np.full(6, 1 / 6), ot.dist(x.numpy(), y.numpy()))
    vals = [float(D.sinkhorn_divergence(x, y, e, 5000, 1e-10)) for e in (1.0, 0.2, 0.05)]
    errs = [abs(v - w2) / w2 for v in vals]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.05
    assert all(v > 0 for v in vals)


@pytest.mark.parametrize("name", ["mmd", "sliced", "sinkhorn"])
def test_gradients(name):
    x, y = _sets(n=5, m=5, d=2)
    x.requires_grad_(True)
    y.requires_grad_(True)
    th = D.random_directions(3, 2, torch.Generator().manual_seed(2), torch.float64)
    fn = {"mmd": lambda a, b: D.mmd2(a, b, [0.7, 1.5]),
          "sliced": lambda a, b: D.sliced_w2(a, b, th),
          "sinkhorn": lambda a, b: D.sinkhorn_divergence(a, b, 1.0, 2000, 1e-13)}[name]
    assert torch.autograd.gradcheck(fn, (x, y), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_self_ot_symmetric_updates_match_general():
    x, _ = _sets(n=8)
    assert float(D.entropic_ot(x, None, 0.2, 5000, 1e-13)) == pytest.approx(
        float(D.entropic_ot(x, x.clone(), 0.2, 5000, 1e-13)), rel=1e-7)
