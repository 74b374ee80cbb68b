"""Bad input is refused with exit 2 and one line; a bug keeps its traceback (exit 1); values
that strict JSON readers refuse are never written; one repository per run record."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from reflowma.infra import config
from reflowma.infra.storage.atomic import write_json

from .conftest import REPO, env, error_lines, records, run_cli

BUG = ("import sys\nimport reflowma.stages.teacher as t\n"
       "def run(*a, **k):\n    raise ValueError('a bug, not an input problem')\n"
       "t.run = run\nfrom reflowma import cli\nsys.exit(cli.main(sys.argv[1:]))\n")


def test_a_bug_keeps_its_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-c", BUG, "teacher", "--params", "smoke", "--out",
                        tmp_path / "t"], env=env(), cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode not in (0, 2), p.stderr
    assert "Traceback (most recent call last)" in p.stderr
    assert "ValueError: a bug, not an input problem" in p.stderr


def test_a_bug_in_process_is_not_swallowed(tmp_path, monkeypatch):
    import reflowma.stages.teacher as teacher

    def run(*a, **k):
        raise ValueError("a bug")

    monkeypatch.setattr(teacher, "run", run)
    with pytest.raises(ValueError, match="a bug"):
        run_cli("teacher", "--params", "smoke", "--out", tmp_path / "t")


def test_bad_input_found_by_a_stage_is_one_line(tmp_path, capsys, real_stderr):
    pts = tmp_path / "one.npy"
    np.save(pts, np.zeros((1, 2)))  # one point: the file loader refuses it (N >= 2)
    rc = run_cli("teacher", "--params", "smoke", "--out", tmp_path / "t", "data.name=file",
                 f"data.path={pts}", "train.steps=2")
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("reflowma: error: data.path:"), err
    assert issubclass(config.ConfigError, config.InputError)


@pytest.mark.parametrize(("stage", "field"), [("evaluate", "n_samples"), ("couplings", "n_test")])
def test_sample_sizes_that_leave_a_metric_undefined(tmp_path, capsys, real_stderr, stage,
                                                     field):
    inputs = {"evaluate": ["--student", "s", "--teacher", "t", "--couplings", "c"],
              "couplings": ["--teacher", "t"]}[stage]
    rc = run_cli(stage, "--params", "smoke", *inputs, "--out", tmp_path / "o", f"{field}=1")
    err = capsys.readouterr().err
    assert rc == 2, err
    assert error_lines(err) == [f"reflowma: error: {stage}.{field}: 1 is out of range; "
                                "must be >= 2"]


def test_write_json_refuses_nan_and_names_the_key(tmp_path):
    path = tmp_path / "eval.json"
    obj = {"nfe": {"1": {"mmd_data": float("nan"), "w2": 0.5}}, "xs": [1.0, float("inf")]}
    with pytest.raises(ValueError) as e:
        write_json(path, obj)
    msg = str(e.value)
    assert str(path) in msg and "nfe.1.mmd_data" in msg and "xs.1" in msg
    assert not path.exists() and not list(tmp_path.iterdir())
    write_json(path, {"a": None, "b": 1.5})
    assert json.loads(path.read_text()) == {"a": None, "b": 1.5}


def test_run_record_lists_the_repository_once(tmp_path):
    runs = tmp_path / "runs"
    assert run_cli("teacher", "--params", "smoke", "--runs", runs, "--out", tmp_path / "t",
                   "train.steps=3") == 0
    (rec,) = records(runs)
    exp = rec["run"]["experiment"]
    repos = exp["repositories"]
    in_git = subprocess.run(["git", "-C", str(REPO), "rev-parse"], capture_output=True
                            ).returncode == 0
    assert len(repos) == (1 if in_git else 0), repos
    if repos:
        assert len(repos[0]["commit"]) == 40 and isinstance(repos[0]["dirty"], bool)
    sources = {s[0] for s in exp["sources"]}
    assert {"stages/teacher.py", "infra/tracking.py", "core/interpolant.py"} <= sources
    assert rec["info"]["params_dir"] == str(config.params_dir())
    assert "params_dir" not in rec["config"]
