"""Inception metrics: KID and k-NN precision/recall against brute-force computations, the
uint8 conversion, the worker's interpreter, and the real loading path: torch-fidelity's
InceptionV3 from a randomly initialised weights file of the real format (written here, no
download), FID/KID/PR on small image sets, and our KID/PR against torch-fidelity's own
functions on the same features.

The worker runs under ``stages.inception.inception_python`` (``.venv-inception``, made by ``make
inception-env``, which ``make test`` builds first; or a python where torch_fidelity imports).
Where none is available these tests fail with that instruction: they are never skipped."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from reflowma.evaluation import inception as inc
from reflowma.evaluation.frechet import frechet_from_samples
from reflowma.stages import inception as stage_inception

_WEIGHTS = {}


def inception_python() -> str:
    """The worker's interpreter, checked once per session to import torch_fidelity."""
    if "python" in _WEIGHTS:
        return _WEIGHTS["python"]
    py = stage_inception.inception_python({})
    ok = subprocess.run([py, "-c", "import torch_fidelity"], capture_output=True, text=True,
                        timeout=300)
    assert ok.returncode == 0, (
        f"torch_fidelity does not import under {py}: run `make inception-env` (creates "
        f".venv-inception) or set {stage_inception.INCEPTION_PYTHON_ENV}\n{ok.stderr[-1500:]}")
    _WEIGHTS["python"] = py
    return py


def random_weights(tmp_path_factory) -> str:
    """A randomly initialised torch-fidelity InceptionV3 weights file (once per session)."""
    if "path" not in _WEIGHTS:
        path = tmp_path_factory.mktemp("inception") / "inception-random.pt"
        subprocess.run([inception_python(), str(inc.WORKER), "--write-random-weights",
                        str(path)], check=True, timeout=600)
        _WEIGHTS["path"] = str(path)
    return _WEIGHTS["path"]


# --------------------------------------------------------------- pure functions (main env)

def test_to_uint8():
    x = torch.tensor([-1.0, -2.0, 0.0, 1.0, 3.0]).reshape(1, 1, 1, 5)
    u = inc.to_uint8(x)
    assert u.dtype == np.uint8 and u.shape == (1, 3, 1, 5)
    assert u[0, 0, 0].tolist() == [0, 0, 128, 255, 255]  # 127.5 rounds half to even
    assert (u[:, 0] == u[:, 1]).all() and (u[:, 1] == u[:, 2]).all()
    rgb = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    assert (inc.to_uint8(rgb) == rgb.numpy()).all()
    with pytest.raises(ValueError, match="images must be"):
        inc.to_uint8(torch.zeros(2, 4))


def _mmd2_loops(a, b):
    """Unbiased MMD² by explicit sums over index pairs (i != j within a set)."""
    k = lambda u, v: (float(np.dot(u, v)) / len(u) + 1.0) ** 3  # noqa: E731
    m = len(a)
    xx = sum(k(a[i], a[j]) for i, j in itertools.permutations(range(m), 2))
    yy = sum(k(b[i], b[j]) for i, j in itertools.permutations(range(m), 2))
    xy = sum(k(a[i], b[j]) for i in range(m) for j in range(m))
    return (xx + yy) / (m * (m - 1)) - 2 * xy / m**2


def test_kid_against_explicit_sums():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 5)), rng.normal(0.5, 1.0, size=(9, 5))
    # subsets of the full size of the smaller set: KID of a with every 7-subset of b
    want = _mmd2_loops(a, b[:7])
    got = inc.mmd2_unbiased(inc.poly_kernel(a, a), inc.poly_kernel(a, b[:7]),
                            inc.poly_kernel(b[:7], b[:7]))
    assert got == pytest.approx(want, rel=1e-12)
    # subset_size = n on both sides: every subset is a permutation, so std 0 and the value exact
    mean, std = inc.kid(a, b[:7], subsets=5, subset_size=50, seed=1)
    assert mean == pytest.approx(want, rel=1e-12) and std < 1e-12
    # independent draws: mean over subsets of the explicit value on the same subsets
    r = np.random.default_rng(3)
    vals = [_mmd2_loops(a[r.choice(7, 4, replace=False)], b[r.choice(9, 4, replace=False)])
            for _ in range(6)]
    mean, std = inc.kid(a, b, subsets=6, subset_size=4, seed=3)
    assert mean == pytest.approx(np.mean(vals), rel=1e-12)
    assert std == pytest.approx(np.std(vals), rel=1e-10)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shift():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    same, sd = inc.kid(a, b, subsets=20, subset_size=200)
    shifted, _ = inc.kid(a, b + 1.0, subsets=20, subset_size=200)
    # unbiased: E = 0 for one distribution; here |mean| within 3 std of the subset values
    assert abs(same) < 3 * sd
    assert shifted > 20 * sd


def _pr_brute(fake, real, k):
    d = lambda u, v: np.linalg.norm(u[:, None] - v[None], axis=-1)  # noqa: E731
    r_real = np.sort(d(real, real), axis=1)[:, k]
    r_fake = np.sort(d(fake, fake), axis=1)[:, k]
    precision = np.mean([(d(f[None], real)[0] <= r_real).any() for f in fake])
    recall = np.mean([(d(x[None], fake)[0] <= r_fake).any() for x in real])
    return precision, recall


@pytest.mark.parametrize("batch", [3, 2048])
def test_precision_recall_against_brute_force(batch):
    rng = np.random.default_rng(2)
    real = rng.normal(size=(40, 6)).astype(np.float32)
    fake = (rng.normal(size=(30, 6)) * 0.6 + 0.8).astype(np.float32)
    want = _pr_brute(fake.astype(np.float64), real.astype(np.float64), 3)
    got = inc.precision_recall(fake, real, k=3, batch=batch)
    assert got == pytest.approx(want, abs=1e-12)
    assert 0 < want[0] < 1 and 0 < want[1] < 1  # the check is not trivial
    assert inc.precision_recall(real, real, k=3) == (1.0, 1.0)
    with pytest.raises(ValueError, match="more than 3"):
        inc.knn_radii(real[:3])


def test_reference_scores_share_one_feature_pass():
    calls = []

    def features(x):
        calls.append(1)
        return np.asarray(x, np.float64)

    rng = np.random.default_rng(4)
    ref = rng.normal(size=(50, 3))
    r = inc.InceptionReference(features, ref, ("fid", "kid"), kid_subsets=4, kid_subset_size=20)
    y = rng.normal(size=(50, 3)) + 2.0
    s = r.scores(y)
    assert set(s) == {"fid", "kid", "kid_std"} and r.scores(y) is s and len(calls) == 1
    assert s["fid"] == pytest.approx(frechet_from_samples(y, ref.astype(np.float32)), rel=1e-6)
    assert r.radii is None  # precision/recall off: no k-NN radii computed


def test_worker_interpreter_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv(stage_inception.INCEPTION_PYTHON_ENV, raising=False)
    monkeypatch.setenv("REFLOWMA_ROOT", str(tmp_path))
    assert stage_inception.inception_python({}) == sys.executable  # no .venv-inception there
    venv_py = tmp_path / stage_inception.INCEPTION_VENV / "bin" / "python"
    venv_py.parent.mkdir(parents=True)
    venv_py.touch()
    assert stage_inception.inception_python({}) == str(venv_py)
    monkeypatch.setenv(stage_inception.INCEPTION_PYTHON_ENV, "/env/python")
    assert stage_inception.inception_python({}) == "/env/python"
    assert stage_inception.inception_python({"inception_python": "/cfg/python"}) == "/cfg/python"


def test_a_missing_weights_file_is_an_error_not_a_download(tmp_path):
    with pytest.raises(RuntimeError, match="does not exist"):
        inc.FeatureWorker(inception_python(), tmp_path / "none.pt")


# ------------------------------------------- the real loading path (torch-fidelity worker)

def test_inception_features_fid_kid_pr_from_a_random_weights_file(tmp_path_factory, tmp_path):
    """The worker loads the written file (the format of torch-fidelity's weights: a
    state_dict that FeatureExtractorInceptionV3 loads strictly) and gives 2048-d features;
    FID of a set against itself is 0, against a brightened set > 0; KID and precision/recall
    equal torch-fidelity's own functions on the same features."""
    weights = random_weights(tmp_path_factory)
    sd = torch.load(weights, weights_only=True)
    assert "Mixed_7c.branch_pool.conv.weight" in sd and sd["fc.weight"].shape == (1008, 2048)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 16, 16, generator=g) * 1.2 - 1.0  # values in [-1, 0.2]
    y = inc.to_uint8((x + 0.8).clamp(-1, 1))  # uint8 in: passed through as it is
    w = inc.FeatureWorker(inception_python(), weights, "cpu", batch_size=4)
    try:
        assert w.ready["ready"] and w.ready["torch_fidelity"] == "0.4.0", w.ready
        fx, fy = w(x), w(y)
    finally:
        w.close()
    assert fx.shape == (6, 2048) and fx.dtype == np.float32 and np.isfinite(fx).all()
    scale = float(np.mean(fx.std(0)))
    assert scale > 1e-3  # features vary over images: the random net is not degenerate
    fid_self = frechet_from_samples(fx, fx)
    fid_shift = frechet_from_samples(fx, fy)
    assert fid_self < 1e-6 * fid_shift and fid_shift > 0
    print(f"random-weights Inception: FID(x, x) {fid_self:.3g}, FID(x, x+0.8) {fid_shift:.4g}")
    ours = {"kid": inc.kid(fy, fx, subsets=3, subset_size=6),
            "pr": inc.precision_recall(fy, fx, k=3)}
    np.save(tmp_path / "fx.npy", fx)
    np.save(tmp_path / "fy.npy", fy)
    script = (
        "import json, sys, numpy as np, torch\n"
        "from torch_fidelity.metric_kid import kid_features_to_metric as K\n"
        "from torch_fidelity.metric_prc import prc_features_to_metric as P\n"
        "d = sys.argv[1]\n"
        "fx, fy = (torch.from_numpy(np.load(f'{d}/{n}.npy')) for n in ('fx', 'fy'))\n"
        "k = K(fy, fx, kid_subsets=3, kid_subset_size=6, verbose=False, rng_seed=0)\n"
        "p = P(fy, fx, prc_neighborhood=3, prc_batch_size=10000, save_cpu_ram=False,\n"
        "      verbose=False)\n"
        "print(json.dumps({'kid': k['kernel_inception_distance_mean'],\n"
        "                  'pr': [p['precision'], p['recall']]}))\n")
    out = subprocess.run([inception_python(), "-c", script, str(tmp_path)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    # subsets of the full size: every subset is the whole set, whatever the RNG; theirs sums
    # float32 kernels (ours float64): agreement to float32 round-off
    assert ours["kid"][0] == pytest.approx(theirs["kid"], rel=1e-5)
    # fractions of 6: one point counted differently would differ by 1/6 (theirs: a float32 mean)
    assert list(ours["pr"]) == pytest.approx(theirs["pr"], abs=1e-6)
