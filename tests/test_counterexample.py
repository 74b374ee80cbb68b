"""Closed-form TM counterexample (reflowma.theory.counterexample), checked independently."""

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from reflowma.theory import counterexample as ce

MU = np.array(ce.DEFAULT_MU)
SIGMA = np.array(ce.DEFAULT_SIGMA)
A = ce.sqrtm_psd(SIGMA)


def _rel(x, y):
    return abs(x - y) / max(abs(x), abs(y))


@pytest.mark.parametrize("angle", [5.0, 30.0, 90.0, 150.0])
def test_equal_tm_loss_and_one_step_w2(angle):
    res = ce.counterexample(MU, SIGMA, angle, [1, 2, 4])
    st = res["students"]
    a = 2 * math.sin(math.radians(angle) / 2)
    tm = a**2 * np.trace(SIGMA)
    for kind in ce.STUDENTS:
        assert _rel(st[kind]["tm_loss"], tm) < 1e-9, kind
    assert st["rotation"]["w2"]["1"] < 1e-9
    assert st["rotation"]["kl"]["1"] < 1e-12
    for kind in ("scaling", "translation"):  # the largest W2 the TM loss allows at 1 NFE
        assert _rel(st[kind]["w2"]["1"], math.sqrt(st[kind]["tm_loss"])) < 1e-9, kind
    assert st["scaling"]["w2"]["1"] > 0.1  # same TM loss, different marginal


def test_json_shape_and_inf():
    res = ce.counterexample(MU, SIGMA, 60.0, (1, 2))  # shrink collapses to a point at 1 NFE
    assert list(res) == ["mu", "sigma", "angle_deg", "nfe", "students"]
    assert list(res["students"]) == ["rotation", "scaling", "shrink", "translation"]
    for st in res["students"].values():
        assert list(st) == ["tm_loss", "w2", "kl"]
        assert list(st["w2"]) == list(st["kl"]) == ["1", "2"]
    assert res["students"]["shrink"]["kl"]["1"] == "inf"
    assert res["students"]["shrink"]["w2"]["1"] == pytest.approx(math.sqrt(np.trace(SIGMA)))
    json.dumps(res, allow_nan=False)


def test_validation_names_sigma():
    with pytest.raises(ValueError, match="sigma"):
        ce.counterexample(MU, [[1.0, 0.5], [0.4, 1.0]], 30.0, [1])
    with pytest.raises(ValueError, match="sigma"):
        ce.counterexample(MU, [[1.0, 2.0], [2.0, 1.0]], 30.0, [1])
    with pytest.raises(ValueError, match="sigma"):
        ce.counterexample(MU, np.eye(3), 30.0, [1])
    with pytest.raises(ValueError, match="nfe"):
        ce.counterexample(MU, SIGMA, 30.0, [0])
    with pytest.raises(ValueError, match="kind"):
        ce.student_error("shear", A, 0.3)


def _torch_field(x, t, mu, a, b, c):
    """Independent torch float64 student field: v*(x,t) + B z(x,t) + c."""
    eye = torch.eye(2, dtype=torch.float64)
    m_t = (1 - t)[:, None, None] * eye + t[:, None, None] * a
    z = torch.linalg.solve(m_t, (x - t[:, None] * mu)[..., None])[..., 0]
    return mu + z @ (a - eye).T + z @ b.T + c


@pytest.mark.parametrize("kind", ce.STUDENTS)
def test_tm_loss_monte_carlo(kind):
    theta = math.radians(40.0)
    b, c = ce.student_error(kind, A, theta)
    gen = torch.Generator().manual_seed(1234)
    n = 40_000
    z = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    t = torch.rand(n, generator=gen, dtype=torch.float64)
    mu_t, a_t = torch.from_numpy(MU), torch.from_numpy(A)
    b_t, c_t = torch.from_numpy(b), torch.from_numpy(c)
    x = mu_t + z @ a_t.T  # teacher coupling
    xt = (1 - t)[:, None] * z + t[:, None] * x
    v = _torch_field(xt, t, mu_t, a_t, b_t, c_t)
    per = ((v - (x - z)) ** 2).sum(-1)
    exact = ce.tm_loss(b, c)
    if kind == "translation":  # constant error: no variance to measure
        assert float(per.std()) < 1e-10
        assert _rel(float(per.mean()), exact) < 1e-10
    else:
        se = float(per.std()) / math.sqrt(n)
        assert abs(float(per.mean()) - exact) < 5 * se
    # numpy field == torch field, also off the teacher lines
    xr = torch.randn(64, 2, generator=gen, dtype=torch.float64) * 3
    tr = torch.rand(64, generator=gen, dtype=torch.float64)
    ref = _torch_field(xr, tr, mu_t, a_t, b_t, c_t).numpy()
    got = ce.student_field(xr.numpy(), tr.numpy(), MU, A, b, c)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ce.STUDENTS)
@pytest.mark.parametrize("nfe", [1, 3, 4])
def test_euler_endpoint_matches_running_euler(kind, nfe):
    b, c = ce.student_error(kind, A, math.radians(30.0))
    m, g = ce.euler_endpoint(MU, A, b, c, nfe)
    z = np.random.default_rng(7).standard_normal((4000, 2))
    x = z.copy()
    for k in range(nfe):
        x = x + ce.student_field(x, k / nfe, MU, A, b, c) / nfe
    np.testing.assert_allclose(x, m + z @ g.T, rtol=1e-11, atol=1e-11)
    se = np.sqrt(np.diag(g @ g.T) / len(z))
    assert np.all(np.abs(x.mean(0) - m) < 5 * se)
    np.testing.assert_allclose(np.cov(x.T), g @ g.T, rtol=0.1, atol=0.05)


def test_teacher_euler_is_exact_and_ode_limit():
    zero_b, zero_c = np.zeros((2, 2)), np.zeros(2)
    for nfe in (1, 2, 5):
        m, g = ce.euler_endpoint(MU, A, zero_b, zero_c, nfe)  # straight lines: Euler is exact
        np.testing.assert_allclose(m, MU, atol=1e-13)
        np.testing.assert_allclose(g, A, atol=1e-13)
    # scaling student, many steps -> exact ODE flow: per eigenvalue l of A,
    # dy/dt = (l(1+a) - 1) / (1 + t(l-1)) y  =>  y(1) = l^((l(1+a)-1)/(l-1)) y(0)
    a = 2 * math.sin(math.radians(30.0) / 2)
    b, c = ce.student_error("scaling", A, math.radians(30.0))
    m, g = ce.euler_endpoint(MU, A, b, c, 4000)
    lam, vec = np.linalg.eigh(A)
    g_ode = (vec * lam ** ((lam * (1 + a) - 1) / (lam - 1))) @ vec.T
    np.testing.assert_allclose(m, MU, atol=1e-12)
    np.testing.assert_allclose(g, g_ode, rtol=2e-3)


def test_gaussian_w2_closed_forms():
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    for _ in range(5):  # commuting: W2^2 = |dm|^2 + |S1^1/2 - S2^1/2|_F^2
        l1, l2 = rng.uniform(0.1, 3.0, 3), rng.uniform(0.1, 3.0, 3)
        s1, s2 = (q * l1) @ q.T, (q * l2) @ q.T
        m1, m2 = rng.standard_normal(3), rng.standard_normal(3)
        want = math.sqrt(np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(l1) - np.sqrt(l2)) ** 2))
        assert _rel(ce.gaussian_w2(m1, s1, m2, s2), want) < 1e-10
    # non-commuting: textbook Bures formula; symmetric; zero on equal inputs
    s1, s2 = SIGMA, np.array([[0.7, -0.3], [-0.3, 1.4]])
    r2 = ce.sqrtm_psd(s2)
    bures = np.trace(s1) + np.trace(s2) - 2 * np.trace(ce.sqrtm_psd(r2 @ s1 @ r2))
    assert _rel(ce.gaussian_w2(MU, s1, -MU, s2) ** 2, 4 * MU @ MU + bures) < 1e-10
    assert _rel(ce.gaussian_w2(MU, s1, -MU, s2), ce.gaussian_w2(-MU, s2, MU, s1)) < 1e-12
    assert ce.gaussian_w2(MU, SIGMA, MU, SIGMA) < 1e-12
    np.testing.assert_allclose(A @ A, SIGMA, atol=1e-14)


def test_gaussian_kl_monte_carlo_and_singular():
    m1, s1 = np.array([0.3, -0.2]), np.array([[1.2, -0.4], [-0.4, 0.6]])
    p, q = stats.multivariate_normal(m1, s1), stats.multivariate_normal(MU, SIGMA)
    x = p.rvs(size=20_000, random_state=np.random.default_rng(5))
    d = p.logpdf(x) - q.logpdf(x)
    kl = ce.gaussian_kl(m1, s1, MU, SIGMA)
    assert abs(d.mean() - kl) < 5 * d.std() / math.sqrt(len(d))
    assert ce.gaussian_kl(MU, SIGMA, MU, SIGMA) < 1e-14
    assert ce.gaussian_kl(MU, np.outer([1.0, 2.0], [1.0, 2.0]), MU, SIGMA) == math.inf


def test_write_counterexample(tmp_path):
    out = tmp_path / "ce"
    res = ce.write_counterexample(out, MU, SIGMA, 30.0, [1, 2], n_samples=300, seed=0)
    on_disk = json.loads((out / "counterexample.json").read_text())
    assert on_disk == res
    assert list(on_disk) == ["mu", "sigma", "angle_deg", "nfe", "students"]
    assert on_disk["nfe"] == [1, 2] and on_disk["angle_deg"] == 30.0
    assert (out / "counterexample.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "counterexample.pdf").read_bytes()[:5] == b"%PDF-"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
