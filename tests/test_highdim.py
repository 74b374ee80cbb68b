"""High-dimensional data (sklearn digits, d = 64) end to end, and the regularizer settings that
only make sense in low dimension failing before any training."""

from __future__ import annotations

import json

import pytest

from reflowma.cli import main

SMOKE = ["--params", "smoke", "data.name=digits"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    d = tmp_path_factory.mktemp("digits")
    assert main(["teacher", *SMOKE, "--out", str(d / "t"), "train.steps=20"]) == 0
    assert main(["couplings", *SMOKE, "--teacher", str(d / "t/teacher.pt"),
                 "--out", str(d / "c.h5")]) == 0
    return d


def test_exact_logdet_refused_above_its_dimension(digits, capsys):
    out = digits / "s_exact"
    rc = main(["reflow", *SMOKE, "--couplings", str(digits / "c.h5"), "--teacher",
               str(digits / "t/teacher.pt"), "--out", str(out), "K=2",
               "regularizer.weight=0.1", "regularizer.logdet=exact"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("reflowma: error: reflow.regularizer.logdet")
    assert "d = 64" in err[-1] and "hutchinson" in err[-1]
    assert not out.exists()  # refused before any training


def test_digits_pipeline_with_hutchinson(digits):
    s = digits / "s_hutch"
    assert main(["reflow", *SMOKE, "--couplings", str(digits / "c.h5"), "--teacher",
                 str(digits / "t/teacher.pt"), "--out", str(s), "K=2",
                 "regularizer.weight=0.1", "regularizer.logdet=hutchinson",
                 "regularizer.warm_start=0.0"]) == 0
    hist = json.loads((s / "metrics.json").read_text())["history"]
    assert any("reg" in row for row in hist)  # the term was on
    ev = digits / "eval.json"
    assert main(["evaluate", *SMOKE, "--student", str(s / "student.pt"), "--teacher",
                 str(digits / "t/teacher.pt"), "--couplings", str(digits / "c.h5"),
                 "--out", str(ev)]) == 0
    res = json.loads(ev.read_text())
    for m in res["nfe"].values():
        assert m["fold_fraction"] is None  # "n/a" above fold_max_dim = 16
        assert m["w2_paired_teacher"] >= 0 and m["w2_data"] > 0


def test_digits_series_student_audit_and_logdet_diagnostics(digits):
    """d = 64: a series-log-det student, then the audit as the digits preset runs it (exact
    change of variables at d = 64, Hutchinson CNF divergence with 2 probes, NFE = K only, no
    local windows) and the log-det diagnostics, whose exact value is that of the reverse-mode
    Jacobian at the first test window starts."""
    import torch

    from reflowma.core.autodiff import batch_jacobian
    from reflowma.infra.storage.couplings import Couplings
    from reflowma.stages.common import load_model
    from reflowma.stages.reflow import load_ends

    s = digits / "s_series"
    assert main(["reflow", *SMOKE, "--couplings", str(digits / "c.h5"), "--teacher",
                 str(digits / "t/teacher.pt"), "--out", str(s), "K=2",
                 "regularizer.weight=0.1", "regularizer.logdet=series",
                 "regularizer.series_order=3", "regularizer.warm_start=0.0"]) == 0
    hist = json.loads((s / "metrics.json").read_text())["history"]
    assert any("reg" in row for row in hist)
    ev = digits / "eval_audit.json"
    assert main(["evaluate", *SMOKE, "--student", str(s / "student.pt"), "--teacher",
                 str(digits / "t/teacher.pt"), "--couplings", str(digits / "c.h5"),
                 "--out", str(ev), "n_samples=64", "nfe=[1,2]", "audit.enabled=true",
                 "audit.max_dim=64", "audit.divergence_max_dim=16", "audit.probes=2",
                 "audit.nfe=[]", "audit.local=false", "audit.logp_steps=4",
                 "logdet.enabled=true", "logdet.n_points=5", "logdet.n_probes=3"]) == 0
    res = json.loads(ev.read_text())
    marg = res["audit"]["marginal"]
    assert set(marg["nfe"]) == {"2"} and marg["divergence"] == "hutchinson"
    assert marg["probes"] == 2 and marg["change_of_variables"]
    row = marg["nfe"]["2"]
    assert row["logp_se"] > 0 and row["kl_exact_logratio"] is not None
    assert "local" not in res["audit"] and "telescoping" not in res["audit"]
    wins = res["logdet"]["windows"]
    assert [w["k"] for w in wins] == [0, 1] and all(w["n_points"] == 5 for w in wins)
    student, _, _ = load_model(s / "student.pt", "student")
    ends = load_ends(Couplings(digits / "c.h5"), "test", 2)[:5].double()
    v = student.double()
    for w in wins:
        x = ends[:, w["k"]].clone().requires_grad_(True)
        J = batch_jacobian(v(x, torch.full((5,), w["k"] / 2, dtype=torch.float64)), x)
        ref = torch.linalg.slogdet(torch.eye(64, dtype=torch.float64) + J / 2)[1].mean()
        assert w["exact"] == pytest.approx(float(ref), rel=1e-4, abs=1e-4)  # float32 J
        e = w["estimators"]
        assert set(e) == {"first_order", "hutchinson", "series2", "series2_hutchinson",
                          "series4", "series4_hutchinson"}
