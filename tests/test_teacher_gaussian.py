"""A teacher trained on a user's 2D Gaussian point file reaches the analytic velocity field.

For data N(mu, S) and noise N(0, I), ``x_t = (1 - t) z + t x`` is Gaussian with mean ``t mu``
and covariance ``C_t = (1 - t)^2 I + t^2 S``, and ``Cov(x - z, x_t) = t S - (1 - t) I``, so the
exact marginal velocity is affine:
``v*(x, t) = mu + (t S - (1 - t) I) C_t^{-1} (x - t mu)``.
"""

import h5py
import numpy as np
import pytest
import torch

from reflowma import cli
from reflowma.core import gmm
from reflowma.data import registry
from reflowma.infra import config
from reflowma.stages import teacher
from reflowma.stages.common import load_model

MU = np.array([1.0, -0.5])
S = np.array([[1.0, 0.5], [0.5, 0.6]])
L = np.linalg.cholesky(S)


def v_star(x: np.ndarray, t: np.ndarray, mu=MU, S=S) -> np.ndarray:
    eye = np.eye(len(mu))
    C = (1 - t)[:, None, None] ** 2 * eye + t[:, None, None] ** 2 * S       # [B, d, d]
    M = t[:, None, None] * S - (1 - t)[:, None, None] * eye
    y = np.linalg.solve(C, (x - t[:, None] * mu)[..., None])
    return mu + (M @ y)[..., 0]


def samples_pt(n: int, rng: np.random.Generator):
    t = rng.uniform(0.1, 0.9, n)
    x1 = MU + rng.standard_normal((n, 2)) @ L.T
    z = rng.standard_normal((n, 2))
    return (1 - t)[:, None] * z + t[:, None] * x1, t


def test_v_star_matches_isotropic_gmm_and_the_score_route():
    rng = np.random.default_rng(0)
    t = rng.uniform(0.05, 0.95, 200)
    x = rng.standard_normal((200, 2)) * 2
    # S = s^2 I: a one-component IsoGMM
    s = 0.7
    iso = gmm.IsoGMM(torch.tensor(MU[None]), s)
    ref = iso.velocity(torch.tensor(x), torch.tensor(t)).numpy()
    np.testing.assert_allclose(v_star(x, t, MU, s**2 * np.eye(2)), ref, rtol=1e-10, atol=1e-10)
    # anisotropic S: v = (x + (1 - t) score_t(x)) / t with score_t = -C_t^{-1} (x - t mu)
    C = (1 - t)[:, None, None] ** 2 * np.eye(2) + t[:, None, None] ** 2 * S
    score = -np.linalg.solve(C, (x - t[:, None] * MU)[..., None])[..., 0]
    np.testing.assert_allclose(v_star(x, t), (x + (1 - t)[:, None] * score) / t[:, None],
                               rtol=1e-10, atol=1e-10)


def test_teacher_reaches_analytic_velocity(tmp_path):
    rng = np.random.default_rng(0)
    pts = (MU + rng.standard_normal((4000, 2)) @ L.T).astype(np.float32)
    np.save(tmp_path / "gauss.npy", pts)
    cfg = config.stage_config("teacher", "smoke", [
        "data.name=file", f"data.path={tmp_path / 'gauss.npy'}", "net.width=64", "net.depth=2",
        "train.steps=600", "train.batch_size=256", "train.lr=3e-3", "train.warmup_steps=10",
        "train.ema_decay=0.98"])
    metrics = teacher.run(cfg, tmp_path / "teacher")
    assert metrics["steps"] == 600
    model, meta, _ = load_model(tmp_path / "teacher" / "teacher.pt", "teacher")
    assert meta["data_shape"] == [2]
    x, t = samples_pt(4000, np.random.default_rng(1))
    ref = v_star(x, t)
    with torch.no_grad():
        got = model(torch.tensor(x, dtype=torch.float32),
                    torch.tensor(t, dtype=torch.float32)).double().numpy()
    rel = np.sqrt(((got - ref) ** 2).sum() / (ref**2).sum())
    # measured 0.069-0.072 over 3 seeds (600 steps, 4000 points); 0.12 leaves ~1.7x margin
    assert rel < 0.12, rel
    # the tolerance discriminates: the exact field of another Gaussian, N(0, I), is far off
    wrong = v_star(x, t, np.zeros(2), np.eye(2))
    assert np.sqrt(((wrong - ref) ** 2).sum() / (ref**2).sum()) > 0.5


def test_csv_and_h5_loaders_round_trip(tmp_path):
    pts = np.random.default_rng(2).standard_normal((50, 3)).astype(np.float32)
    np.savetxt(tmp_path / "p.csv", pts, delimiter=",", fmt="%.9g")
    np.testing.assert_array_equal(registry.read_points(tmp_path / "p.csv"), pts)
    with h5py.File(tmp_path / "p.h5", "w") as f:
        f["data"] = pts
        f["other"] = pts[:10] * 2
    np.testing.assert_array_equal(registry.read_points(tmp_path / "p.h5"), pts)
    np.testing.assert_array_equal(registry.read_points(tmp_path / "p.h5", key="other"),
                                  pts[:10] * 2)
    np.save(tmp_path / "p.npy", pts.astype(np.float64))
    got = registry.read_points(tmp_path / "p.npy")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, pts)
    # the loader as a stage uses it: shape and resampling with replacement from the file
    cfg = {"name": "file", "path": str(tmp_path / "p.csv")}
    assert registry.data_shape(cfg) == (3,)
    x = registry.load(cfg, 20, torch.Generator().manual_seed(0))
    assert x.shape == (20, 3)
    assert all(any(np.array_equal(r, p) for p in pts) for r in x.numpy())


@pytest.mark.parametrize(("name", "write", "kwargs", "exc", "match"), [
    ("missing.npy", None, {}, FileNotFoundError, "does not exist"),
    ("vec.npy", lambda p: np.save(p, np.zeros(5)), {}, ValueError,
     r"must hold finite points \[N >= 2, d\], got shape \(5,\)"),
    ("nan.csv", lambda p: p.write_text("1,2\nnan,3\n"), {}, ValueError, "finite points"),
    ("one.npy", lambda p: np.save(p, np.zeros((1, 2))), {}, ValueError, "N >= 2"),
    ("nokey.h5", lambda p: h5py.File(p, "w").create_dataset("x", data=np.zeros((3, 2))),
     {}, ValueError, r"has no dataset 'data' \(found: \['x'\]\); set data.key"),
    ("pts.txt", lambda p: p.write_text("1,2\n"), {}, ValueError, "unsupported suffix '.txt'"),
])
def test_bad_point_files_give_clear_errors(tmp_path, name, write, kwargs, exc, match):
    path = tmp_path / name
    if write is not None:
        write(path)
    with pytest.raises(exc, match=match) as info:
        registry.read_points(path, **kwargs)
    assert str(info.value).startswith("data.path: ")
    if exc is not ValueError or "suffix" not in match:
        assert name in str(info.value)  # names the file


def test_bad_point_file_through_the_cli(tmp_path, capsys):
    np.save(tmp_path / "vec.npy", np.zeros(5))
    rc = cli.main(["teacher", "--params", "smoke", "--out", str(tmp_path / "t"),
                   "data.name=file", f"data.path={tmp_path / 'vec.npy'}"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("reflowma: error: data.path: ")
    assert "vec.npy" in err[0] and "shape (5,)" in err[0]
    assert not (tmp_path / "t" / "teacher.pt").exists()
