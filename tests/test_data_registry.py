"""The data layer as a registry: datasets registered from outside the package, file errors that
name the file, the samples of the built-in datasets unchanged by the rework (stored arrays,
compared to a few float32 ulp), and the exact 8gaussians density owned by the object that
samples it (the audit reads it from there)."""

from __future__ import annotations

import hashlib
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from reflowma import data
from reflowma.data import DATASETS, toys
from reflowma.registry import UnknownName

# The draws of data.load(name, 257, Generator().manual_seed(11)) recorded with the code before
# the registry (commit d231446): the rework must keep the same draws in the same order. Stored
# as arrays (tests/data/pre_registry_draws.npz); DIGESTS are the sha256 prefixes the draws were
# first recorded by, which the stored file's arrays must have.
REFERENCE = Path(__file__).parent / "data" / "pre_registry_draws.npz"
DIGESTS = {"8gaussians": "ed86ff5522c00a5f", "moons": "d0f19c670762cfd7",
           "checkerboard": "36c4c480da22713c", "spirals": "4b28913d87d8de98",
           "digits": "d6f906815399c95a"}
# Not bit for bit: the normal draws (Box-Muller: log, cos, sin) and the moons and spirals curves
# (cos, sin) go through float32 transcendental functions whose last bit depends on the kernel
# the CPU runs (scalar libm or SLEEF's AVX2 / AVX-512 versions, each within about 1 ulp of the
# exact value), so two machines differ by a few ulp of the largest intermediate value (|x| up to
# 5.4; spirals' radius up to 3 pi before the division by 2.5). Measured between
# ATEN_CPU_CAPABILITY=default and avx2: at most 7.2e-7 (8gaussians; 1.5 ulp at 5.4), 0 for
# checkerboard and digits (uniform draws and exact arithmetic only). 16 ulp of the data's scale
# leaves margin and stays 10^4 times below what any other draw moves a point by (0.05 or more:
# the next seed, below).
ULPS = 16


@pytest.fixture(autouse=True)
def _fresh_cache():
    data.clear_cache()
    yield
    data.clear_cache()


def test_the_stored_draws_are_the_recorded_ones():
    """The stored arrays hash to the digests the pre-registry draws were recorded with (the
    bytes of a file, no computation: the same on every machine)."""
    ref = np.load(REFERENCE)
    assert sorted(ref.files) == sorted(DIGESTS)
    for name, digest in DIGESTS.items():
        assert ref[name].dtype == np.float32 and ref[name].shape[0] == 257
        assert hashlib.sha256(ref[name].tobytes()).hexdigest()[:16] == digest, name


@pytest.mark.pinned
@pytest.mark.parametrize("name", sorted(DIGESTS))
def test_samples_match_the_pre_registry_loader(name):
    ref = np.load(REFERENCE)[name]
    x = data.load({"name": name}, 257, torch.Generator().manual_seed(11))
    assert x.dtype == torch.float32 and x.shape == ref.shape
    tol = ULPS * np.finfo(np.float32).eps * float(np.abs(ref).max())
    np.testing.assert_allclose(x.numpy(), ref, rtol=0, atol=tol)
    # the tolerance tells draws apart: those of the next seed are far outside it
    other = data.load({"name": name}, 257, torch.Generator().manual_seed(12)).numpy()
    assert np.abs(other - ref).max() > 0.05 > 1000 * tol


def test_a_dataset_registered_outside_the_package_is_loaded(tmp_path, monkeypatch):
    name = "test-plugin-images"
    (tmp_path / "reflowma_test_plugin_images.py").write_text(
        "import torch\n"
        "from reflowma.data import DATASETS, Dataset\n"
        "class Images(Dataset):\n"
        "    def __init__(self, cfg):\n"
        "        self.shape = (1, 4, int(cfg.get('width', 4)))\n"
        "        self.value_range = (-1.0, 1.0)\n"
        "    def sample(self, n, generator):\n"
        "        return torch.rand((n, *self.shape), generator=generator) * 2 - 1\n"
        f"DATASETS.register({name!r}, Images)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("REFLOWMA_PLUGINS", "reflowma_test_plugin_images")
    try:
        assert name in DATASETS.names()
        cfg = {"name": name, "width": 5}
        x = data.load(cfg, 3, torch.Generator().manual_seed(0))
        assert x.shape == (3, 1, 4, 5)
        assert data.data_shape(cfg) == (1, 4, 5)
        assert data.dataset(cfg) is data.dataset(dict(cfg))  # cached per config
        assert data.dataset(cfg).value_range == (-1.0, 1.0)
    finally:
        DATASETS._items.pop(name, None)
        sys.modules.pop("reflowma_test_plugin_images", None)


def test_a_dataset_whose_samples_contradict_its_shape_is_refused(monkeypatch):
    class Liar(data.Dataset):
        shape = (3,)

        def sample(self, n, generator):
            return torch.zeros(n, 2)

    monkeypatch.setitem(DATASETS._items, "test-liar", lambda cfg: Liar())
    with pytest.raises(ValueError, match=r"'test-liar' sampled shape \(4, 2\).*\(4, 3\)"):
        data.load({"name": "test-liar"}, 4, torch.Generator())


def test_unknown_dataset_names_the_field_and_the_choices():
    with pytest.raises(UnknownName, match=r"data.name: unknown 'nope'; allowed: .*8gaussians"):
        data.load({"name": "nope"}, 3, torch.Generator())


def test_builtin_dataset_objects():
    for name in ("8gaussians", "moons", "checkerboard", "spirals"):
        ds = data.dataset({"name": name})
        assert ds.shape == (2,) and ds.labels is None
    d = data.dataset({"name": "digits"})
    assert d.shape == (64,) and d.value_range == (-1.0, 1.0)
    assert d.points.shape == (1797, 64) and d.labels.shape == (1797,)
    assert float(d.points.min()) == -1.0 and float(d.points.max()) == 1.0
    assert sorted(set(d.labels.tolist())) == list(range(10))
    # only the mixture has an exact density
    assert data.exact_log_prob(data.dataset({"name": "8gaussians"})) is not None
    assert data.exact_log_prob(data.dataset({"name": "moons"})) is None
    assert data.exact_log_prob(d) is None


def test_csv_with_a_header_names_the_file(tmp_path):
    path = tmp_path / "with_header.csv"
    path.write_text("x,y\n1,2\n3,4\n")
    with pytest.raises(ValueError, match="no header") as info:
        data.load({"name": "file", "path": str(path)}, 3, torch.Generator())
    assert str(info.value).startswith("data.path: ")
    assert str(path) in str(info.value)


def test_unreadable_npy_names_the_file(tmp_path):
    path = tmp_path / "garbage.npy"
    path.write_bytes(b"not a numpy file")
    with pytest.raises(ValueError, match="data.path: cannot read") as info:
        data.read_points(path)
    assert str(path) in str(info.value)


# --- the exact density of 8gaussians comes from the object that samples it (issue 16) --------

def _independent_logp(x, radius=4.0, std=0.5):
    """log density of 8 equal isotropic modes on a circle, written out from the definition."""
    ang = 2 * np.pi * np.arange(8) / 8
    means = radius * np.stack([np.cos(ang), np.sin(ang)], 1)
    sq = ((x[:, None, :] - means[None]) ** 2).sum(-1)
    return logsumexp(np.log(1 / 8) - sq / (2 * std**2) - np.log(2 * np.pi * std**2), axis=1)


def test_8gaussians_log_prob_is_the_density_its_samples_come_from():
    ds = data.dataset({"name": "8gaussians"})
    x = data.load({"name": "8gaussians"}, 20_000, torch.Generator().manual_seed(0))
    lp = ds.log_prob(x).numpy()
    xd = x.double().numpy()
    np.testing.assert_allclose(lp, _independent_logp(xd), rtol=0, atol=1e-9)
    # Gibbs: E_p[log p] - E_p[log q] = KL(p || q) > 0, so on samples of p the right parameters
    # beat nearby wrong ones by more than the noise of the paired difference (5 SE). A sampler
    # and a density that disagree on the parameters fail here.
    for radius, std in ((3.8, 0.5), (4.2, 0.5), (4.0, 0.45), (4.0, 0.55)):
        diff = lp - _independent_logp(xd, radius, std)
        assert diff.mean() > 5 * diff.std() / math.sqrt(len(diff)), (radius, std, diff.mean())
    # a density: integrates to 1 on a grid covering the modes
    h = 0.05
    g = np.arange(-7, 7 + h / 2, h)
    pts = torch.from_numpy(np.stack(np.meshgrid(g, g), -1).reshape(-1, 2))
    assert abs(float(ds.log_prob(pts).exp().sum()) * h * h - 1) < 1e-3
    # the score at t = 1 is the gradient of that log density
    y = x[:50].double().requires_grad_(True)
    (grad,) = torch.autograd.grad(ds.log_prob(y).sum(), y)
    torch.testing.assert_close(ds.score(y.detach()), grad)


def _run_audit_section(monkeypatch):
    """audit_section with the audits stubbed out: returns what it handed them."""
    from reflowma.evaluation import audit
    from reflowma.stages import evaluate

    seen = {}

    def marginal(student, teacher, z, K, nfes, a, data_logp=None, **kw):
        seen["data_logp"] = data_logp
        return {"nfe": {str(K): {"tv": None, "kl_exact": None, "kl_knn": 0.0}}}

    def score_error(teacher, gmm, ts, n, generator=None):
        seen["gmm"] = gmm
        return {}

    monkeypatch.setattr(audit, "marginal_audit", marginal)
    monkeypatch.setattr(audit, "local_window_audit", lambda *a, **k: {"windows": []})
    monkeypatch.setattr(audit, "score_error_vs_t", score_error)
    cfg = {"data": {"name": "8gaussians"}, "seed": 0, "nfe": [1], "audit": {
        "logp_steps": 4, "max_dim": 16, "knn_k": 3}}
    evaluate.audit_section(cfg, None, None, torch.zeros(8, 2), None, None, 1)
    return seen


def test_the_audit_uses_the_density_of_the_dataset_object(monkeypatch):
    # default parameters: the audit's density is the independent one
    seen = _run_audit_section(monkeypatch)
    y = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    np.testing.assert_allclose(seen["data_logp"](y).numpy(), _independent_logp(y.numpy()),
                               atol=1e-9)
    # change the toy's parameters: samples, the audit's data density and its score-error
    # mixture all follow (before, the audit kept its own copy of radius 4, std 0.5)
    monkeypatch.setitem(toys.EIGHT_GAUSSIANS, "radius", 2.0)
    monkeypatch.setitem(toys.EIGHT_GAUSSIANS, "std", 0.3)
    data.clear_cache()
    x = data.load({"name": "8gaussians"}, 4000, torch.Generator().manual_seed(2)).double()
    assert abs(float(x.norm(dim=1).mean()) - 2.0) < 0.05
    seen = _run_audit_section(monkeypatch)
    np.testing.assert_allclose(seen["data_logp"](y).numpy(),
                               _independent_logp(y.numpy(), 2.0, 0.3), atol=1e-9)
    assert seen["gmm"].std == 0.3
    np.testing.assert_allclose(seen["gmm"].means.norm(dim=1).numpy(), 2.0)


def test_builtin_dataset_names_declared_in_the_catalog_are_the_registry_s():
    """config checks bundled names in data.catalog (no torch): it and the registry agree."""
    import json
    import os
    import subprocess
    import sys

    from reflowma.data import catalog

    env = {k: v for k, v in os.environ.items() if k != "REFLOWMA_PLUGINS"}
    out = subprocess.run([sys.executable, "-c", "import json; from reflowma.data import DATASETS;"
                          " print(json.dumps(list(DATASETS.names())))"],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert set(json.loads(out)) == set(catalog.DECLARED)
