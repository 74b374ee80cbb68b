"""The classifier stage (fd_classifier's features), its use in the spec, and the validation of
fd_classifier and the Inception metrics."""

import json

import numpy as np
import pytest
import torch

from reflowma import cli
from reflowma.evaluation import inception_inputs, spec
from reflowma.evaluation.frechet import FrechetReference
from reflowma.infra import config
from reflowma.models.classifier import LeNet
from reflowma.stages import classifier
from reflowma.stages import evaluate as ev

DIGITS = ["data.name=digits", "data.layout=image"]


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (3, 32, 32)])
def test_lenet_shapes(shape):
    net = LeNet(shape, 10, (4, 8), 16)
    x = torch.zeros(5, *shape)
    assert net(x).shape == (5, 10) and net.features(x).shape == (5, 16)


@pytest.fixture(scope="module")
def digits_classifier(tmp_path_factory):
    out = tmp_path_factory.mktemp("clf")
    cfg = config.stage_config("classifier", None, [*DIGITS, "train.steps=150",
                                                   "train.log_every=50"])
    metrics = classifier.run(cfg, out)
    return cfg, out, metrics


def test_classifier_stage_trains_and_records(digits_classifier):
    cfg, out, m = digits_classifier
    assert m["test_accuracy"] > 0.8, m  # 8x8 digits, 150 steps
    assert m["n_test"] == 359 and m["n_train"] == 1438  # every 5th of 1797 images
    saved = json.loads((out / "metrics.json").read_text())["metrics"]
    assert saved["test_accuracy"] == m["test_accuracy"]
    model, meta, sha = classifier.load(out / "classifier.pt")
    assert meta["test_accuracy"] == m["test_accuracy"] and sha == m["sha256"]
    assert not (out / "state.pt").exists()


def test_frechet_reference_of_the_classifier(digits_classifier):
    cfg, out, m = digits_classifier
    ref = classifier.frechet_reference(cfg["data"], out / "classifier.pt", "cpu")
    assert ref.info["test_accuracy"] == m["test_accuracy"] and ref.info["n_reference"] == 359
    x_test, _, _ = classifier.labelled_split(cfg["data"], "test")
    x_train, _, _ = classifier.labelled_split(cfg["data"], "train")
    same = ref.distance(x_test)
    near = ref.distance(x_train[:359])
    noise = ref.distance(torch.rand(359, 1, 8, 8) * 2 - 1)
    assert same == pytest.approx(0.0, abs=1e-6)
    assert near < 0.2 * noise, (near, noise)
    with pytest.raises(config.InputError, match="does not match"):
        classifier.frechet_reference({"name": "mnist"}, out / "classifier.pt", "cpu")
    # flips and the split do not change the classifier's data
    classifier.frechet_reference({**cfg["data"], "hflip": True}, out / "classifier.pt", "cpu")


def test_sample_metrics_compute_fd_only_with_a_reference():
    y = torch.randn(50, 4)
    base = dict(y=y, z=y, teacher=y, data=y)
    cfg = {"mmd_bandwidths": [1.0], "fold_max_dim": 16}
    assert "fd_classifier" not in spec.sample_metrics(spec.Samples(**base), cfg)
    ref = FrechetReference(lambda a: np.asarray(a), y.numpy())
    got = spec.sample_metrics(spec.Samples(**base, fd=ref), cfg)
    assert got["fd_classifier"] == pytest.approx(0.0, abs=1e-8)
    res = {"classifier": {"test_accuracy": 0.9}, "nfe": {"1": {"fd_classifier": 2.0}},
           "teacher_euler": {"1": {"fd_classifier": 3.0}},
           "data_floor": {"fd_classifier": 0.5}}
    fd, acc = spec.METRICS.get("fd_classifier"), spec.METRICS.get("classifier_accuracy")
    assert spec.values(res, fd, spec.STUDENT) == [(1, "fd_classifier", 2.0)]
    assert spec.values(res, fd, spec.TEACHER_EULER) == [(1, "fd_classifier", 3.0)]
    assert spec.values(res, fd, spec.DATA_FLOOR) == [(-1, "fd_classifier", 0.5)]
    assert spec.values(res, acc, spec.STUDENT) == [(-1, "classifier_accuracy", 0.9)]
    assert acc.per == "run" and acc.better == "higher" and fd.better == "lower"


@pytest.mark.parametrize("data,field", [(["data.name=moons"], "evaluate.data.name"),
                                        (["data.name=digits"], "evaluate.data.layout")])
def test_fd_classifier_needs_labelled_images(data, field):
    with pytest.raises(config.ConfigError) as e:
        config.stage_config("evaluate", None, [*data, "fd_classifier=true"])
    assert e.value.field == field


def test_fid_without_weights_fails_at_validation(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv(inception_inputs.INCEPTION_WEIGHTS_ENV, raising=False)
    for metric in ("fid", "kid", "precision_recall"):
        with pytest.raises(config.ConfigError) as e:
            config.stage_config("evaluate", "mnist_smoke", [f"{metric}=true"])
        assert e.value.field == "evaluate.inception_weights" and metric in str(e.value)
    # the CLI: one line naming the field, exit 2, before any work (no input files exist)
    rc = cli.main(["evaluate", "--params", "mnist_smoke", "--student", "s.pt", "--teacher",
                   "t.pt", "--couplings", "c.h5", "--out", str(tmp_path / "e.json"), "fid=true"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "evaluate.inception_weights" in err[0]
    w = tmp_path / "inception.pt"
    w.write_bytes(b"")
    monkeypatch.setenv(inception_inputs.INCEPTION_WEIGHTS_ENV, str(w))
    cfg = config.stage_config("evaluate", "mnist_smoke", ["fid=true"])
    assert inception_inputs.inception_weights(cfg) == str(w)
    with pytest.raises(config.ConfigError) as e:  # Inception metrics need images
        config.stage_config("evaluate", "smoke", ["fid=true"])
    assert e.value.field == "evaluate.data.name"
    # digits are images in their image layout: the layout is named, not the dataset
    with pytest.raises(config.ConfigError) as e:
        config.stage_config("evaluate", "smoke", ["fid=true", "data.name=digits"])
    assert e.value.field == "evaluate.data.layout" and "allowed: image" in str(e.value)
    with pytest.raises(config.ConfigError, match="does not exist"):
        config.stage_config("evaluate", "mnist_smoke", ["fid=true",
                                                        f"inception_weights={tmp_path}/no.pt"])


def test_evaluate_with_fd_classifier_needs_the_classifier_file():
    cfg = config.stage_config("evaluate", "mnist_smoke")
    assert cfg["fd_classifier"] is True
    with pytest.raises(config.InputError, match="--classifier"):
        ev.run(cfg, "s.pt", "t.pt", "c.h5", "e.json", None)


def test_image_grid_figure_from_recorded_pngs(tmp_path, monkeypatch):
    """images_<dataset>: one row per student under the teacher's, from PNG paths only."""
    import pandas as pd
    from PIL import Image

    from reflowma.report import collect, figures, layout

    def png(name, value):
        p = tmp_path / f"evaluate.grid_{name}.png"
        Image.fromarray(np.full((64, 64), value, np.uint8)).save(p)
        return p

    methods = ["K~1/ws~1.0/lam~0.0", "K~1/ws~1.0/lam~0.1"]
    refs = {"data": png("data", 10), "teacher": png("teacher", 50),
            **{f"teacher_euler_nfe{n}": png(f"teacher_euler_nfe{n}", 90) for n in (1, 2)}}
    grids = {"seed": 0, "refs": refs, "missing": [],
             "runs": {m: {n: png(f"student_nfe{n}_{i}", 200) for n in (1, 2)}
                      for i, m in enumerate(methods)}}
    monkeypatch.setattr(collect, "image_grids", lambda runs, ds: grids)
    paths = figures.fig_images(pd.DataFrame(), "mnist", methods, tmp_path / "figs")
    assert {p.name for p in paths} == {"images_mnist.png", "images_mnist.pdf"}
    h = np.asarray(Image.open(tmp_path / "figs/images_mnist.png")).shape[0]
    assert h > 500  # three rows of panels
    monkeypatch.setattr(collect, "image_grids", lambda runs, ds: {
        "seed": None, "refs": {}, "runs": {}, "missing": ["no completed evaluate run"]})
    with pytest.raises(figures.NoData, match="no completed"):
        figures.fig_images(pd.DataFrame(), "mnist", methods, tmp_path / "figs")
    stems = layout.expected_stems([f"evaluate/mnist/seed~0/{m}" for m in methods])
    assert "images_mnist" in stems and "samples_mnist" not in stems
