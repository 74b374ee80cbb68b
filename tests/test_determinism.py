"""Same seed and config -> bit-identical files and metrics on CPU; another seed -> other weights.

The whole smoke pipeline (teacher, couplings, reflow K=2 with the window-start term, evaluate)
runs twice into separate folders. Checked, strongest first: every output file is byte-identical
(model files included: checkpoints are written through a file object so that torch.save's zip
record names do not depend on the random temporary file name), except ``metrics.json``, which
records wall-clock seconds and is equal once those are removed.
"""

import json

import pytest
import torch

from reflowma import cli
from reflowma.infra.storage.atomic import sha256

TIMING = ("seconds", "seconds_per_step", "train_seconds")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one thread is faster and steadier here
    yield
    torch.set_num_threads(n)


def _pipeline(root, seed: int = 0, full: bool = True):
    s = [f"seed={seed}"]
    t = root / "teacher"
    assert cli.main(["teacher", "--params", "smoke", "--out", str(t), *s]) == 0
    if not full:
        return root
    c = root / "couplings.h5"
    assert cli.main(["couplings", "--params", "smoke", "--teacher", str(t / "teacher.pt"),
                     "--out", str(c), *s]) == 0
    assert cli.main(["reflow", "--params", "smoke", "--teacher", str(t / "teacher.pt"),
                     "--couplings", str(c), "--out", str(root / "student"), "K=2",
                     "window_start_weight=1", *s]) == 0
    assert cli.main(["evaluate", "--params", "smoke", "--teacher", str(t / "teacher.pt"),
                     "--couplings", str(c), "--student", str(root / "student" / "student.pt"),
                     "--out", str(root / "eval.json"), *s]) == 0
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory, _one_thread):
    return (_pipeline(tmp_path_factory.mktemp("a")), _pipeline(tmp_path_factory.mktemp("b")),
            _pipeline(tmp_path_factory.mktemp("seed1"), seed=1, full=False))


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("rel", ["teacher/teacher.pt", "student/student.pt"])
def test_model_files_identical(runs, rel):
    a, b, _ = runs
    sa, sb = _state(a / rel), _state(b / rel)
    assert sa["meta"] == sb["meta"]
    assert sa["model"].keys() == sb["model"].keys()
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    assert sha256(a / rel) == sha256(b / rel)  # byte-identical files


def test_couplings_and_eval_files_identical(runs):
    a, b, _ = runs
    assert sha256(a / "couplings.h5") == sha256(b / "couplings.h5")
    assert sha256(a / "eval.json") == sha256(b / "eval.json")
    ev = json.loads((a / "eval.json").read_text())
    assert ev["K"] == 2 and set(ev["nfe"]) == {"1", "2", "4"}


@pytest.mark.parametrize("rel", ["teacher/metrics.json", "student/metrics.json"])
def test_metrics_identical_but_timing(runs, rel):
    a, b, _ = runs
    ma, mb = (json.loads((r / rel).read_text()) for r in (a, b))
    for m in (ma, mb):
        for k in TIMING:
            m["metrics"].pop(k, None)
    assert ma == mb
    assert len(ma["history"]) >= 2  # the logged losses are compared too
    if rel.startswith("student"):
        assert "window_start" in ma["history"][-1]  # the K=2 run used the window-start term


def test_other_seed_other_weights(runs):
    a, _, c = runs
    sa, sc = _state(a / "teacher/teacher.pt"), _state(c / "teacher/teacher.pt")
    assert sa["model"].keys() == sc["model"].keys()
    assert not any(torch.equal(sa["model"][k], sc["model"][k]) for k in sa["model"])
    assert sha256(a / "teacher/teacher.pt") != sha256(c / "teacher/teacher.pt")
