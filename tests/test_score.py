"""Score from velocity (interpolant.score_from_velocity) on an analytic Gaussian teacher."""

import pytest
import torch

from reflowma.core.interpolant import score_from_velocity
from reflowma.objectives import marginal as regularizer

DT = torch.float64
MU = torch.tensor([1.0, -2.0], dtype=DT)
S = torch.tensor([[2.0, 0.6], [0.6, 0.5]], dtype=DT)


def _ct(t):
    return (1 - t) ** 2 * torch.eye(2, dtype=DT) + t**2 * S


def velocity(x, t):
    """Exact velocity of N(MU, S) data: mu + (t S - (1 - t) I) C_t^{-1} (x - t mu)."""
    out = torch.empty_like(x)
    for tv in torch.unique(t):
        m = t == tv
        Ci = torch.linalg.inv(_ct(tv))
        B = tv * S - (1 - tv) * torch.eye(2, dtype=DT)
        out[m] = MU + (x[m] - tv * MU) @ (B @ Ci).T
    return out


@pytest.mark.parametrize("t", [0.0, 0.1, 0.5, 0.9, 0.95, 0.99])
def test_score_from_velocity_exact(t):
    g = torch.Generator().manual_seed(0)
    n = 256
    tt = torch.full((n,), t, dtype=DT)
    x = t * MU + torch.randn(n, 2, generator=g, dtype=DT) @ torch.linalg.cholesky(_ct(t)).T
    exact = -(x - t * MU) @ torch.linalg.inv(_ct(t)).T
    s = score_from_velocity(velocity(x, tt), x, tt)
    rel = float((s - exact).norm() / exact.norm())
    assert rel < 1e-9, rel
    s2 = regularizer.teacher_score_fn(velocity)(x, tt)
    assert torch.allclose(s2, s, rtol=0, atol=0)


def test_score_singular_at_one():
    x = torch.zeros(3, 2, dtype=DT)
    with pytest.raises(ValueError, match="t < 1"):
        score_from_velocity(x, x, torch.ones(3, dtype=DT))
