"""Messages a new user meets after the first run: no silent clamp of evaluate.n_samples, a
labelled audit line, one report summary, a hint when nothing has run yet, and a theory command
whose options say what they are and which says where it wrote."""

from __future__ import annotations

import logging

import pytest

from reflowma import cli

TINY = ["train.steps=2", "train.log_every=1", "train.checkpoint_every=1"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A teacher, 16 test couplings and a K=1 student at the smallest sizes (smoke preset)."""
    d = tmp_path_factory.mktemp("chain")
    assert cli.main(["teacher", "--params", "smoke", "--out", str(d / "t"), *TINY]) == 0
    assert cli.main(["couplings", "--params", "smoke", "--teacher", str(d / "t/teacher.pt"),
                     "--out", str(d / "c.h5"), "n_train=64", "n_test=16", "steps=2",
                     "windows=[1]"]) == 0
    assert cli.main(["reflow", "--params", "smoke", "--teacher", str(d / "t/teacher.pt"),
                     "--couplings", str(d / "c.h5"), "--out", str(d / "s"), "K=1", *TINY]) == 0
    return d


def _evaluate(d, *over):
    return cli.main(["evaluate", "--params", "smoke", "--student", str(d / "s/student.pt"),
                     "--teacher", str(d / "t/teacher.pt"), "--couplings", str(d / "c.h5"),
                     "--out", str(d / "e.json"), "nfe=[1]", "teacher_steps=2", *over])


def test_more_samples_than_test_couplings_is_an_error(chain, capsys):
    assert _evaluate(chain, "n_samples=100") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("reflowma: error: evaluate.n_samples: 100 "), err
    assert "16 test couplings" in err[0]


def test_audit_log_line_is_labelled(chain, caplog):
    with caplog.at_level(logging.INFO, logger="reflowma"):
        assert _evaluate(chain, "n_samples=16", "audit.enabled=true", "audit.logp_steps=2") == 0
    line = next(r.getMessage() for r in caplog.records if "audit" in r.getMessage())
    assert "KL(student || teacher), kNN estimate, per NFE: NFE 1: " in line, line


def test_report_before_any_run_says_what_to_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["report", "--preset", "toy"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "snakemake --cores 2 --config preset=toy" in err, err


def test_report_prints_one_summary(tmp_path, capsys, caplog):
    (tmp_path / "runs").mkdir()
    with caplog.at_level(logging.INFO):
        assert cli.main(["report", "--runs", str(tmp_path / "runs"), "--out",
                         str(tmp_path / "r"), "--no-figures"]) == 0
    out = capsys.readouterr()
    lines = [ln for ln in (out.out + out.err).splitlines() if "report:" in ln]
    lines += [r.getMessage() for r in caplog.records if "report:" in r.getMessage()]
    assert len(lines) == 1, lines
    assert " tables (" in lines[0] and "files under tables/)" in lines[0], lines


def test_counterexample_help_and_output(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["theory", "counterexample", "--help"])
    help_text = capsys.readouterr().out
    for opt in ("--mu", "--sigma", "--angle", "--nfe", "--out"):
        line = help_text[help_text.index(f"  {opt}"):].split("\n  -")[0]
        assert "(default:" in line, line
    assert cli.main(["theory", "counterexample", "--out", str(tmp_path / "ce")]) == 0
    assert f"wrote {tmp_path / 'ce' / 'counterexample.json'}" in capsys.readouterr().out
