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
