"""The Snakefile and workflow/rules/*.smk are formatted with snakefmt (as `make lint` checks),
with pyproject.toml's ``[tool.snakefmt]`` settings, and the check can fail."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEFMT = Path(sys.executable).with_name("snakefmt")


def snakefmt_check(root: Path, *paths: str) -> subprocess.CompletedProcess:
    assert SNAKEFMT.is_file(), f"{SNAKEFMT} missing: install the test extra (.[test])"
    return subprocess.run([str(SNAKEFMT), "--check", *paths], cwd=root, capture_output=True,
                          text=True, timeout=60)


def test_workflow_files_are_formatted():
    n_files = 1 + len(list((REPO / "workflow").rglob("*.smk")))
    res = snakefmt_check(REPO, "Snakefile", "workflow")
    assert res.returncode == 0, (res.stdout + res.stderr + "\nrun: snakefmt Snakefile workflow/")
    assert f"All {n_files} file(s) would be left unchanged" in res.stderr


def test_unformatted_rule_file_fails(tmp_path):
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    rules = tmp_path / "workflow" / "rules"
    rules.mkdir(parents=True)
    src = (REPO / "workflow/rules/teacher.smk").read_text()
    (rules / "teacher.smk").write_text(src + "\nunformatted = {'a':1}\n")  # black: {"a": 1}
    res = snakefmt_check(tmp_path, "workflow")
    assert res.returncode == 1
    assert "1 file(s) would be changed" in res.stderr


def test_line_length_comes_from_pyproject(tmp_path):
    """A 94-character line passes with the project's line_length (100), not snakefmt's 88."""
    line = "x = [" + ", ".join(f'"{i:02d}"' for i in range(15)) + "]\n"
    assert 88 < len(line.rstrip()) <= 100
    (tmp_path / "a.smk").write_text(line)
    assert snakefmt_check(tmp_path, "a.smk").returncode == 1  # no pyproject: 88
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    assert snakefmt_check(tmp_path, "a.smk").returncode == 0
