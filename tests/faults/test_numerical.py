"""A diverging run (train.lr=1e6) stops at the first non-finite loss: exit 3, an error naming the
step, a FAILED run record with the traceback, and no model promoted to the output path."""

from __future__ import annotations

import re

import pytest

from .conftest import records_of, run_cli


@pytest.mark.parametrize("stage", ["teacher", "reflow"])
def test_huge_learning_rate_fails_cleanly(tmp_path, smoke, capsys, real_stderr, stage):
    out, runs = tmp_path / "out", tmp_path / "runs"
    inputs = ([] if stage == "teacher" else
              ["--teacher", smoke["teacher"], "--couplings", smoke["couplings"]])
    rc = run_cli(stage, "--params", "smoke", *inputs, "--out", out, "--runs", runs,
                 "--job", "diverging", "train.lr=1e6")
    err = capsys.readouterr().err
    assert rc == 3, err
    lines = [ln for ln in err.splitlines() if ln.startswith("reflowma: ")]
    assert len(lines) == 1, err
    desc = "teacher" if stage == "teacher" else r"reflow K=1"
    assert re.fullmatch(rf"reflowma: error: {desc}: non-finite loss (nan|inf|-inf) at step \d+ "
                        r"\(lr=[0-9.e+]+\); nothing was promoted", lines[0]), lines[0]
    (rec,) = records_of(runs, "diverging")
    assert rec["run"]["status"] == "FAILED"
    trace = "".join(rec["run"]["fail_trace"])
    assert "Traceback" in trace and "reflowma.training.loop.NonFiniteLoss: " in trace
    assert lines[0].split("error: ", 1)[1] in trace  # the record holds the same message
    model = "teacher.pt" if stage == "teacher" else "student.pt"
    assert not (out / model).exists() and not (out / "metrics.json").exists()
    assert not out.exists() or not list(out.iterdir())  # nothing promoted, no stale state
