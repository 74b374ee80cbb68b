"""No stage moves a model to the CPU to evaluate it: every network stays on the stage's device.

The stages run for real (smoke preset: teacher, couplings, a student with the regularizer,
the evaluation with the marginal audit; a classifier and the Fréchet reference of its
features) while ``nn.Module.cpu`` raises and ``nn.Module.to`` raises on any CPU target other
than the stage's own device object: each stage's ``device(...)`` hands out that one object, so
a model placed on the configured device passes, and a ``.cpu()`` / ``.to("cpu")`` /
``.to(torch.device("cpu"))`` anywhere in the stages fails the test even on a CPU-only machine.
On a GPU, ``tests/test_cuda_sync.py`` runs the same stages on CUDA.
"""

from __future__ import annotations

import json

import pytest
import torch

from reflowma.infra import config
from reflowma.stages import classifier, couplings, evaluate, reflow, teacher

DEV = torch.device("cpu")  # the one device object the stages get
STAGES = (teacher, couplings, reflow, evaluate, classifier)


def _target(args, kwargs):
    a = kwargs.get("device", args[0] if args else None)
    if isinstance(a, torch.Tensor):
        return a.device
    if isinstance(a, str | torch.device):
        return torch.device(a)
    return None  # a dtype or a memory format only


@pytest.fixture
def guarded(monkeypatch):
    moves = []
    real_to = torch.nn.Module.to

    def cpu(self):
        moves.append(("cpu", type(self).__name__))
        raise AssertionError(f"{type(self).__name__}.cpu() in a stage")

    def to(self, *args, **kwargs):
        dev = _target(args, kwargs)
        raw = kwargs.get("device", args[0] if args else None)
        if dev is not None and dev.type == "cpu" and raw is not DEV:
            moves.append(("to", type(self).__name__, raw))
            raise AssertionError(f"{type(self).__name__}.to({raw!r}) in a stage")
        return real_to(self, *args, **kwargs)

    for mod in STAGES:
        monkeypatch.setattr(mod, "device", lambda name: DEV)
    monkeypatch.setattr(torch.nn.Module, "cpu", cpu)
    monkeypatch.setattr(torch.nn.Module, "to", to)
    return moves


def test_the_guard_catches_every_kind_of_move(guarded):
    m = torch.nn.Linear(2, 2)
    for move in (lambda: m.cpu(), lambda: m.to("cpu"), lambda: m.to(torch.device("cpu")),
                 lambda: m.to(torch.zeros(1))):
        with pytest.raises(AssertionError):
            move()
    assert m.to(DEV) is m and m.to(torch.float64) is m
    assert len(guarded) == 4


def test_stages_evaluate_where_the_models_are(guarded, tmp_path):
    t, c, s = tmp_path / "t", tmp_path / "c.h5", tmp_path / "s"
    teacher.run(config.stage_config("teacher", "smoke", ["train.steps=10"]), t)
    couplings.run(config.stage_config("couplings", "smoke", []), t / "teacher.pt", c)
    reflow.run(config.stage_config("reflow", "smoke", [
        "train.steps=6", "regularizer.weight=0.1", "regularizer.warm_start=0.0"]),
        c, t / "teacher.pt", s)
    ev = tmp_path / "eval.json"
    evaluate.run(config.stage_config("evaluate", "smoke", [
        "n_samples=64", "nfe=[1,2]", "audit.enabled=true", "audit.logp_steps=4",
        "teacher_steps=8", "batch_size=24"]), s / "student.pt", t / "teacher.pt", c, ev)
    res = json.loads(ev.read_text())
    assert res["heldout_tm_loss"] > 0 and "marginal" in res["audit"]
    assert "heldout_tm_loss" not in json.loads((s / "metrics.json").read_text())["metrics"]
    assert guarded == []


def test_classifier_and_its_features_stay_on_the_device(guarded, tmp_path):
    data = {"name": "digits", "layout": "image"}
    cfg = config.stage_config("classifier", {"data": data}, ["train.steps=4",
                                                              "eval.batch_size=100"])
    m = classifier.run(cfg, tmp_path)
    assert 0 <= m["test_accuracy"] <= 1
    ref = classifier.frechet_reference(data, tmp_path / "classifier.pt", DEV, batch_size=50)
    assert ref.distance(torch.zeros(30, 1, 8, 8)) > 0
    assert guarded == []
