"""Densities and the marginal audit (reflowma.density, reflowma.audit, evaluate's audit)."""

import json
import math

import numpy as np
import pytest
import torch
from scipy.special import polygamma

from reflowma.core import gmm
from reflowma.evaluation import audit, density
from reflowma.infra import config
from reflowma.stages import couplings, evaluate, reflow, teacher

DT = torch.float64


MU = torch.tensor([1.0, -2.0], dtype=DT)
S = torch.tensor([[2.0, 0.6], [0.6, 0.5]], dtype=DT)
I2 = torch.eye(2, dtype=DT)
LOGP_STEPS = config.stage_config("evaluate")["audit"]["logp_steps"]


def _ct(t):
    return (1 - t) ** 2 * I2 + t**2 * S


def gauss_velocity(x, t):
    """Exact (affine) velocity of N(MU, S) data; t is constant over the batch here."""
    tv = float(t[0])
    B = tv * S - (1 - tv) * I2
    return MU + (x - tv * MU) @ (B @ torch.linalg.inv(_ct(tv))).T


def gauss_logp(x, t):
    return torch.distributions.MultivariateNormal(t * MU, _ct(t)).log_prob(x)


MIX = gmm.eight_gaussians(dtype=DT)
MIX_MEAN = (MIX.weights[:, None] * MIX.means).sum(0)


def mix_velocity(x, t):
    """gmm.velocity, with its t -> 0 limit at t = 0: x_0 = z is independent of x_1, so
    v(x, 0) = E[x_1 - z | z = x] = E[x_1] - x."""
    out = torch.empty_like(x)
    zero = t == 0
    out[zero] = MIX_MEAN - x[zero]
    if (~zero).any():
        out[~zero] = MIX.velocity(x[~zero], t[~zero])
    return out


@pytest.mark.parametrize("t1", [1.0, 0.5])
def test_cnf_logp_gaussian(t1):
    g = torch.Generator().manual_seed(0)
    x = t1 * MU + torch.randn(300, 2, generator=g, dtype=DT) @ torch.linalg.cholesky(_ct(t1)).T
    x = torch.cat([x, t1 * MU + 3 * torch.randn(20, 2, generator=g, dtype=DT)])  # tails too
    err = (density.cnf_logp(gauss_velocity, x, t1, LOGP_STEPS) - gauss_logp(x, t1)).abs().max()
    print(f"cnf_logp Gaussian t1={t1}: max err {float(err):.2e} nats")
    assert err <= 1e-3


@pytest.mark.parametrize("t1", [1.0, 0.5])
def test_cnf_logp_eight_gaussians(t1):
    g = torch.Generator().manual_seed(1)
    x = t1 * MIX.sample(150, g) + (1 - t1) * torch.randn(150, 2, generator=g, dtype=DT)
    err = (density.cnf_logp(mix_velocity, x, t1, LOGP_STEPS) - MIX.log_prob(x, t1)).abs().max()
    print(f"cnf_logp 8 Gaussians t1={t1}: max err {float(err):.2e} nats")
    assert err <= 1e-3


def test_cnf_logp_hutchinson_unbiased():
    g = torch.Generator().manual_seed(2)
    x = MU + torch.randn(64, 2, generator=g, dtype=DT) @ torch.linalg.cholesky(S).T
    exact = density.cnf_logp(gauss_velocity, x, 1.0, 20)
    est = torch.stack([density.cnf_logp(gauss_velocity, x, 1.0, 20, exact_max_dim=1,
                                        generator=g) for _ in range(40)])
    mean, se = est.mean(0), est.std(0) / math.sqrt(est.shape[0])
    assert torch.all((mean - exact).abs() < 5 * se + 1e-9)
    assert float(est.std(0).max()) > 0  # it really is stochastic
    assert torch.equal(density.cnf_logp(gauss_velocity, x, 0.0), density.std_normal_logp(x))


def test_cnf_logp_hutchinson_standard_error():
    """With P probes, ``se=True`` gives the same log-densities (bit for bit) and per-sample
    standard errors (the P single-probe integrals' spread over sqrt(P)) that match the spread of
    independent P-probe estimates: their ratio, averaged over samples, is within 25 % of 1
    (60 independent estimates per sample)."""
    g = torch.Generator().manual_seed(5)
    x = MU + torch.randn(64, 2, generator=g, dtype=DT) @ torch.linalg.cholesky(S).T
    kw = {"exact_max_dim": 1, "probes": 4}
    lp = density.cnf_logp_many(gauss_velocity, [x], 1.0, 20,
                               generator=torch.Generator().manual_seed(6), **kw)[0]
    (lp_se,), (se,) = density.cnf_logp_many(gauss_velocity, [x], 1.0, 20, se=True,
                                            generator=torch.Generator().manual_seed(6), **kw)
    assert torch.equal(lp, lp_se)
    est = torch.stack([density.cnf_logp(gauss_velocity, x, 1.0, 20, generator=g, **kw)
                       for _ in range(60)])
    ratio = float((se / est.std(0)).mean())
    print(f"Hutchinson log p: predicted / observed standard error {ratio:.3f}")
    assert 0.75 < ratio < 1.25
    _, none = density.cnf_logp_many(gauss_velocity, [x], 1.0, 20, se=True)  # exact: no se
    assert none is None


@pytest.mark.parametrize("d", [2, 4])
def test_knn_entropy_gaussian(d):
    g = torch.Generator().manual_seed(3)
    n, k = 4000, 5
    A = torch.randn(d, d, generator=g, dtype=DT) / math.sqrt(d) + torch.eye(d, dtype=DT)
    x = torch.randn(n, d, generator=g, dtype=DT) @ A.T
    H = 0.5 * d * (1 + math.log(2 * math.pi)) + 0.5 * float(torch.logdet(A @ A.T))
    tol = 4 * math.sqrt((float(polygamma(1, k)) + d / 2) / n)  # per-point variance / n
    est = density.knn_entropy(x, k)
    print(f"kNN entropy d={d}: {est:.4f} vs {H:.4f} (tol {tol:.3f})")
    assert abs(est - H) < tol
    dup = torch.cat([x, x[:500]])  # duplicates: finite, close to the distinct points' value
    assert math.isfinite(density.knn_entropy(dup, k))
    assert abs(density.knn_entropy(dup, k) - H) < 0.3


def test_tv_from_logratio_vs_grid():
    q = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=DT), I2)
    p = torch.distributions.MultivariateNormal(torch.tensor([1.0, 0.5], dtype=DT),
                                               torch.diag(torch.tensor([1.5, 0.7], dtype=DT)))
    u = torch.linspace(-9, 9, 1201, dtype=DT)
    G = torch.stack(torch.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)
    cell = float(u[1] - u[0]) ** 2
    tv_grid = 0.5 * float((q.log_prob(G).exp() - p.log_prob(G).exp()).abs().sum()) * cell
    xs = q.sample((200_000,))
    lq, lp = q.log_prob(xs), p.log_prob(xs)
    tv = density.tv_from_logratio(lq, lp)
    se = float(torch.clamp(-torch.expm1(lp - lq), min=0).std()) / math.sqrt(xs.shape[0])
    print(f"TV: MC {tv:.5f} vs grid {tv_grid:.5f} (se {se:.5f})")
    assert abs(tv - tv_grid) < 5 * se


def test_student_logq_affine():
    """Euler steps of an affine field: the change-of-variables density is Gaussian."""
    Wm = torch.tensor([[0.3, -0.4], [0.2, 0.1]], dtype=DT)
    bv = torch.tensor([0.5, -1.0], dtype=DT)

    def v(x, t):
        return x @ Wm.T + bv * (1 + t[:, None])

    grid = [0.0, 0.25, 0.5, 1.0]
    z = torch.randn(100, 2, generator=torch.Generator().manual_seed(4), dtype=DT)
    y, lq, folded = density.student_logq(v, z, grid)
    A, c = I2.clone(), torch.zeros(2, dtype=DT)
    for a, b in zip(grid[:-1], grid[1:], strict=True):
        h = b - a
        A, c = (I2 + h * Wm) @ A, (I2 + h * Wm) @ c + h * bv * (1 + a)
    ref = torch.distributions.MultivariateNormal(c, A @ A.T).log_prob(y)
    assert torch.allclose(y, z @ A.T + c, atol=1e-13)
    assert torch.allclose(lq, ref, atol=1e-12) and not folded.any()
    _, _, folded = density.student_logq(lambda x, t: -3 * x, z, [0.0, 1.0])  # det(1-3)^2 > 0
    assert not folded.any()
    _, _, folded = density.student_logq(lambda x, t: x * torch.tensor([-3.0, 0.0], dtype=DT),
                                        z, [0.0, 1.0])  # det = -2: folded
    assert folded.all()


@pytest.mark.parametrize("variant", ["smoke", "scratch"])
def test_telescoping_bound_trained_student(tmp_path, variant):
    """Tiny teacher + K=4 piecewise student (smoke preset): TV_final <= sum TV_k <= Pinsker.

    ``scratch``: a longer-trained teacher and a student not initialised from it (larger TVs)."""
    over = ["audit.enabled=true", f"audit.logp_steps={LOGP_STEPS}"]
    t_over = ["train.steps=400"] if variant == "scratch" else []
    s_over = ["K=4"] + (["init=scratch"] if variant == "scratch" else [])
    teacher.run(config.stage_config("teacher", "smoke", t_over), tmp_path / "t")
    couplings.run(config.stage_config("couplings", "smoke"), tmp_path / "t" / "teacher.pt",
                  tmp_path / "c.h5")
    reflow.run(config.stage_config("reflow", "smoke", s_over), tmp_path / "c.h5",
               tmp_path / "t" / "teacher.pt", tmp_path / "s")
    res = evaluate.run(config.stage_config("evaluate", "smoke", over + ["nfe=[1,4]"]),
                       tmp_path / "s" / "student.pt", tmp_path / "t" / "teacher.pt",
                       tmp_path / "c.h5", tmp_path / "eval.json")
    json.loads((tmp_path / "eval.json").read_text())  # strict JSON round trip
    a = res["audit"]
    tel = a["telescoping"]
    print("telescoping:", {k: tel[k] for k in ("tv_final", "sum_tv", "pinsker_sum",
                                               "margin_final", "margin_pinsker", "sum_kl",
                                               "kl_final")})
    assert tel["available"] and tel["valid"]
    assert tel["final_le_sum_tv"] and tel["sum_tv_le_pinsker"]
    assert tel["tv_final"] <= tel["sum_tv"] <= tel["pinsker_sum"]
    assert len(a["local"]["windows"]) == 4
    for row in a["marginal"]["nfe"].values():
        assert np.isfinite(row["kl_knn"]) and row["data_kl_knn"] is not None
    se = a["score_error"]
    assert list(se) == [str(t) for t in evaluate.SCORE_ERROR_TS]
    assert all(v > 0 for v in se.values())
    # the telescoping function on its own
    rows = [{"tv": 0.1, "kl": 0.05, "valid": True}, {"tv": 0.2, "kl": 0.1, "valid": True}]
    out = audit.telescoping(0.25, rows, kl_final=0.3)
    assert out["final_le_sum_tv"] and out["sum_tv_le_pinsker"]
    assert out["margin_final"] == pytest.approx(0.05)
    assert not audit.telescoping(None, rows)["available"]
