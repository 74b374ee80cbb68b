"""What a new user meets first on the command line: help that shows the values the chosen preset
gives, --print-config without unrelated paths, one override syntax (``evaluate.audit.enabled``
works as in a params file)."""

from __future__ import annotations

import yaml

from reflowma import cli
from reflowma.infra import config


def test_help_shows_the_presets_values(capsys):
    smoke = config.stage_config("teacher", "smoke")
    try:
        cli.main(["teacher", "--params", "smoke", "--help"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    assert "--params smoke" in out
    width_line = next(ln for ln in out.splitlines() if ln.strip().startswith("net.width "))
    assert width_line.rstrip().endswith(f"[{smoke['net']['width']!r}]"), width_line
    assert smoke["net"]["width"] != config.defaults("teacher")["net"]["width"]


def test_print_config_needs_no_paths(capsys):
    rc = cli.main(["evaluate", "--params", "smoke", "--print-config", "audit.enabled=true"])
    assert rc == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["audit"]["enabled"] is True


def test_paths_still_required_without_print_config(capsys):
    try:
        cli.main(["evaluate", "--params", "smoke", "--out", "x.json"])
        raise AssertionError("expected a usage error")
    except SystemExit as e:
        assert e.code == 2
    assert "--student, --teacher, --couplings" in capsys.readouterr().err


def test_stage_prefixed_override_is_the_same_field():
    short = config.stage_config("evaluate", "smoke", ["audit.enabled=true"])
    long = config.stage_config("evaluate", "smoke", ["evaluate.audit.enabled=true"])
    assert short == long and long["audit"]["enabled"] is True


def test_override_of_another_stage_is_an_error(capsys):
    rc = cli.main(["evaluate", "--params", "smoke", "--print-config", "reflow.K=2"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "reflow.K" in err and "not evaluate" in err


def test_job_log_has_no_sacred_import_warning(tmp_path):
    """A recorded job's log starts with what the job does, not Sacred's pkg_resources warning."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "reflowma", "teacher", "--params", "smoke",
                          "--out", str(tmp_path / "t"), "--runs", str(tmp_path / "runs"),
                          "train.steps=2", "train.log_every=1", "train.checkpoint_every=1"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "pkg_resources" not in res.stderr
    assert "[reflowma]" in res.stderr  # the job's own log is there
