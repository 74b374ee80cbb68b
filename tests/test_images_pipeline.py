"""Images end to end: the mnist_smoke workflow (teacher, couplings, students with and without
the regularizer, evaluation, report) on MNIST with a tiny UNet; the pieces it relies on
(Hutchinson log-det on [B, C, H, W], batched evaluation, image grids, the audit skipped in
high dimension, bf16 refused on CPU) and ``reflowma describe``.

The workflow test took 150 s wall on 2 shared cores (load average ~7), so it runs in the
default suite."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from reflowma import cli
from reflowma.infra import config
from reflowma.objectives import marginal
from reflowma.stages import evaluate
from reflowma.training import loop
from tests.test_workflow import snakemake

POINTS = ("K~1/ws~1.0/lam~0.0", "K~1/ws~1.0/lam~0.1")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    d = tmp_path_factory.mktemp("mnist_smoke")
    t0 = time.perf_counter()
    res = snakemake(d, "--cores", "2", "--config", "preset=mnist_smoke", "grid=mnist_smoke",
                    f"results={d}/results", timeout=600)
    wall = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr[-3000:]
    print(f"mnist_smoke workflow: {wall:.0f} s wall")
    return d / "results" / "mnist_smoke"


def test_mnist_smoke_workflow(smoke):
    from PIL import Image

    base = smoke / "eval" / "mnist" / "seed~0"
    for point in POINTS:
        res = json.loads((base / point / "eval.json").read_text())
        assert set(res["nfe"]) == {"1", "2"}
        for m in res["nfe"].values():
            assert m["fold_fraction"] is None and m["w2_data"] > 0
        assert np.load(base / point / "samples.npz")["dim"] == 784  # d > 16: dim only
        for name in ("grid_data", "grid_teacher", "grid_student_nfe1", "grid_student_nfe2",
                     "grid_teacher_euler_nfe2"):
            im = Image.open(base / point / f"{name}.png")
            assert im.size == (8 * 28, 8 * 28) and im.mode == "L"
    hist = json.loads((smoke / "students/mnist/seed~0" / POINTS[1] / "metrics.json")
                      .read_text())["history"]
    assert any(row.get("reg", 0) != 0 for row in hist)  # the Hutchinson term was on
    runs = [json.loads(p.read_text()) for p in (smoke / "runs").glob("*/run.json")]
    arts = {a for r in runs for a in r.get("artifacts", [])}
    assert "evaluate.grid_student_nfe1.png" in arts
    assert (smoke / "report" / "tables" / "all.md").is_file()


def test_fd_classifier_and_its_accuracy_end_to_end(smoke):
    """The classifier job ran once; every evaluation reports fd_classifier per NFE for the
    student, the teacher (Euler, ceiling) and the data floor, next to the classifier's test
    accuracy; the report has both columns and the image-grid figure (not a placeholder)."""
    clf = json.loads((smoke / "classifier/mnist/seed~0/metrics.json").read_text())["metrics"]
    assert clf["n_test"] == 1000 and clf["test_accuracy"] > 0.5, clf
    print(f"mnist_smoke classifier: test accuracy {clf['test_accuracy']:.4f}")
    for point in POINTS:
        res = json.loads((smoke / "eval/mnist/seed~0" / point / "eval.json").read_text())
        assert res["classifier"]["test_accuracy"] == clf["test_accuracy"]
        assert res["classifier"]["sha256"] == clf["sha256"]
        fds = {f"{k} {n}": res[k][n]["fd_classifier"] for k in ("nfe", "teacher_euler")
               for n in ("1", "2")}
        fds["ceiling"] = res["teacher_ceiling"]["fd_classifier"]
        fds["floor"] = res["data_floor"]["fd_classifier"]
        assert all(np.isfinite(v) and v >= 0 for v in fds.values()), fds
        print(point, {k: round(v, 3) for k, v in fds.items()})
    metrics = json.loads((smoke / "report/metrics.json").read_text())
    assert any(k.endswith("/fd_classifier") for k in metrics)
    assert any(k.endswith("/classifier_accuracy") for k in metrics)
    fig = smoke / "report/figures/images_mnist.png"
    assert fig.is_file()
    assert "images_mnist" not in json.loads(
        (smoke / "report/figures/placeholders.json").read_text())


def test_audit_is_skipped_above_its_dimension_with_the_reason(smoke, tmp_path):
    t, c = smoke / "teacher/mnist/seed~0/teacher.pt", smoke / "couplings/mnist/seed~0.h5"
    s = smoke / "students/mnist/seed~0" / POINTS[0] / "student.pt"
    out = tmp_path / "eval.json"
    assert cli.main(["evaluate", "--params", "mnist_smoke", "--student", str(s), "--teacher",
                     str(t), "--couplings", str(c), "--out", str(out), "nfe=[1]",
                     "audit.enabled=true", "fd_classifier=false"]) == 0
    a = json.loads(out.read_text())["audit"]
    assert a == {"skipped": a["skipped"]} and "d = 784 > evaluate.audit.skip_above_dim = 64" \
        in a["skipped"]


def test_trace_and_exact_logdet_are_refused_on_images(smoke, tmp_path, capsys):
    t, c = smoke / "teacher/mnist/seed~0/teacher.pt", smoke / "couplings/mnist/seed~0.h5"
    for mode in ("trace", "exact"):
        rc = cli.main(["reflow", "--params", "mnist_smoke", "--couplings", str(c), "--teacher",
                       str(t), "--out", str(tmp_path / mode), "regularizer.weight=0.1",
                       f"regularizer.logdet={mode}"])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert rc == 2 and f"'{mode}' needs d <= " in err and "d = 784" in err
        assert not (tmp_path / mode).exists()


def test_hutchinson_logdet_on_images_is_exact_for_a_diagonal_map():
    """v(x) = w * x (elementwise, w [C, H, W]): J = diag(w), and a Rademacher probe gives
    eps^T J eps = sum(w) exactly (eps_i^2 = 1), so the estimate is h * sum(w) per sample."""
    w = torch.randn(3, 5, 4, dtype=torch.float64)
    x = torch.randn(6, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    est = marginal.logdet_hutchinson(w * x, x, 0.25, 3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(est, torch.full((6,), 0.25 * float(w.sum()),
                                               dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_hutchinson_logdet_matches_the_trace_of_a_channel_mixing_map():
    """A 1x1 conv with matrix A on [B, C, H, W]: J is A repeated on the H W = 16 positions,
    tr J = 16 tr A. The Rademacher estimator is unbiased with per-probe variance
    sum_{i != j} J_ij (J_ij + J_ji) = 16 sum_{i != j} (A_ij^2 + A_ij A_ji); 4000 probes, 5 sd."""
    torch.manual_seed(0)
    A = torch.randn(3, 3, dtype=torch.float64)
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    v = torch.einsum("ij,bjhw->bihw", A, x)
    est = marginal.logdet_hutchinson(v, x, 1.0, 4000, torch.Generator().manual_seed(1))
    off = (A.pow(2).sum() + (A * A.T).sum() - 2 * A.diagonal().pow(2).sum())
    sd = float((16 * off / 4000).sqrt())
    assert abs(float(est) - 16 * float(A.trace())) < 5 * sd


def test_batched_evaluation_equals_one_call_and_keeps_gradients():
    from reflowma import models

    torch.manual_seed(0)
    net = models.build((1, 8, 8), {"name": "unet", "channels": 4, "channel_mult": [1, 2],
                                   "res_blocks": 1, "attention_resolutions": [], "dropout": 0.0,
                                   "heads": 1, "norm_groups": 4})
    torch.nn.init.normal_(net.out[-1].weight)
    x, t = torch.randn(10, 1, 8, 8), torch.rand(10)
    b = evaluate.Batched(net, torch.device("cpu"), 3)
    torch.testing.assert_close(b(x, t), net(x, t), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b(x, torch.tensor(0.3)), net(x, torch.full((10,), 0.3)),
                               rtol=1e-5, atol=1e-6)
    xg = x.clone().requires_grad_(True)
    g1 = torch.autograd.grad(b(xg, t).sum(), xg)[0]
    g2 = torch.autograd.grad(net(xg, t).sum(), xg)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-6)


def test_image_grid_layout():
    x = torch.linspace(-1, 1, 70)[:, None, None, None].expand(70, 3, 2, 5)
    g = evaluate.image_grid(x)
    assert g.shape == (16, 40, 3) and g.dtype == np.uint8
    u8 = ((x[:, 0, 0, 0] + 1) * 127.5).round().to(torch.uint8)
    for i in (0, 9, 63):  # image i at grid row i // 8, column i % 8
        r, c = divmod(i, 8)
        assert (g[2 * r: 2 * r + 2, 5 * c: 5 * c + 5] == int(u8[i])).all()


def test_bf16_is_refused_on_cpu():
    with pytest.raises(config.ConfigError, match="teacher.train.amp: 'bf16' autocast needs"):
        config.stage_config("teacher", "smoke", ["train.amp=bf16"])
    with pytest.raises(config.InputError, match="train.amp"):
        loop.autocast("bf16", torch.nn.Linear(2, 2))  # device: auto resolved to CPU
    assert loop.autocast("none", torch.nn.Linear(2, 2)) is not None


@pytest.mark.skipif(torch.cuda.is_available(), reason="device: auto must resolve to the CPU")
@pytest.mark.parametrize("stage", ["teacher", "reflow", "classifier"])
def test_refused_amp_creates_nothing(tmp_path, capsys, stage):
    """bf16 under device: auto on a CPU is refused before any output (folder) is created."""
    inputs = {"teacher": [], "classifier": [],
              "reflow": ["--teacher", "/nonexistent/t.pt", "--couplings", "/nonexistent/c.h5"]}
    out = tmp_path / "out"
    assert cli.main([stage, "--params", "mnist_smoke", *inputs[stage], "--out", str(out),
                     "device=auto", "train.amp=bf16"]) == 2
    assert "train.amp: 'bf16' autocast needs a CUDA device" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_describe_takes_an_unqualified_override_where_the_stages_do(capsys):
    """`net.channels=32` is what `reflowma teacher` and `reflowma reflow` accept: describe sets
    it there; the couplings have no net and the classifier's channels are a list, so theirs
    stay; an override that every stage refuses is refused with the first stage's reason."""
    for stage in ("teacher", "reflow"):
        assert cli.main([stage, "--params", "mnist_smoke", "--print-config",
                         "net.channels=32"]) == 0
    capsys.readouterr()
    assert cli.main(["describe", "--params", "mnist_smoke", "net.channels=32"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["teacher"]["config"]["net"]["channels"] == 32
    assert d["reflow"]["config"]["net"]["channels"] == 32
    assert d["classifier"]["config"]["net"]["channels"] == [8, 16]
    assert d["teacher"]["n_params"] == d["reflow"]["n_params"] > 17_341  # the 4-channel UNet
    assert cli.main(["describe", "--params", "mnist_smoke", "net.chanels=32"]) == 2
    assert capsys.readouterr().err.startswith("reflowma: error: teacher.net.chanels: unknown key")


def test_describe_prints_configs_and_parameter_counts(capsys):
    """cifar10's data file is absent here: describe neither needs it nor allocates 36M weights."""
    assert cli.main(["describe", "--params", "cifar10"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert set(d) == set(config.STAGES)
    assert d["teacher"]["n_params"] == d["reflow"]["n_params"] == 35_746_307
    assert d["teacher"]["data_shape"] == [3, 32, 32]
    assert d["couplings"]["config"]["n_train"] >= 100_000
    assert cli.main(["describe", "--params", "mnist", "reflow.K=2"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["teacher"]["n_params"] <= 1_000_000 and d["reflow"]["config"]["K"] == 2


def test_inception_metrics_in_an_evaluation(smoke, tmp_path, tmp_path_factory):
    """fid/kid/precision_recall through the evaluate CLI with a random-weights Inception file
    (tests/test_inception.py writes it; the real loading path, no download): every sample set
    and the data floor get them, eval.json records the weights and reference, and the
    reference statistics are cached (a second opening reads the file)."""
    from reflowma.infra.storage.atomic import content_sha256
    from reflowma.stages import inception as stage_inc
    from tests.test_inception import inception_python, random_weights

    weights = random_weights(tmp_path_factory)
    t, c = smoke / "teacher/mnist/seed~0/teacher.pt", smoke / "couplings/mnist/seed~0.h5"
    s = smoke / "students/mnist/seed~0" / POINTS[0] / "student.pt"
    out, cache = tmp_path / "eval.json", tmp_path / "cache"
    over = ["nfe=[1]", "n_samples=4", "fd_classifier=false", "fid=true", "kid=true",
            "precision_recall=true", f"inception_weights={weights}", "inception_ref_samples=4",
            f"inception_cache={cache}", f"inception_python={inception_python()}",
            "kid_subsets=2"]
    t0 = time.perf_counter()
    assert cli.main(["evaluate", "--params", "mnist_smoke", "--student", str(s), "--teacher",
                     str(t), "--couplings", str(c), "--out", str(out), *over]) == 0
    print(f"evaluate with Inception metrics (20 images): {time.perf_counter() - t0:.0f} s")
    res = json.loads(out.read_text())
    rows = [res["nfe"]["1"], res["teacher_euler"]["1"], res["teacher_ceiling"],
            res["data_floor"]]
    for r in rows:
        assert r["fid"] >= 0 and np.isfinite(r["kid"]) and r["kid_std"] >= 0, r
        assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1, r
    info = res["inception"]
    assert info["weights_sha256"] == content_sha256(weights)
    assert info["reference"]["n"] == 4 and not info["reference"]["cache_hit"]
    assert info["kid"]["subset_size"] == 4 and info["precision_recall"] == {"k": 3}
    cached = list(cache.glob("mnist-*.npz"))
    assert [str(p) for p in cached] == [info["reference"]["cache"]]
    cfg = config.stage_config("evaluate", "mnist_smoke", over)
    again = stage_inc.open_reference(cfg, "cpu")  # starts the worker; no features computed
    try:
        assert again.info["reference"]["cache_hit"] and again.features.calls == 0
        assert again.info["reference"]["key"] == info["reference"]["key"]
    finally:
        again.close()
