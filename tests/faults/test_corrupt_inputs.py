"""Corrupt or mismatching input files are refused before any work: exit 2, one
``reflowma: error:`` line on stderr naming the file and what is wrong, nothing written to the
output path. (Truncated/incomplete couplings files: tests/test_couplings_storage.py; bad params
values: tests/test_params_errors.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import error_lines, run_cli

# (id, stage, {flag: input}, overrides, the file the message names, what it must say)
# inputs: teacher/student/couplings(16) from the `smoke` fixture, "half" a truncated teacher.pt,
# "badtypes" a params file with values of the wrong type
CASES = [
    ("truncated-teacher", "couplings", {"--teacher": "half"}, [], "half",
     ["is unreadable or corrupt (truncated?)"]),
    ("truncated-teacher-to-reflow", "reflow",
     {"--teacher": "half", "--couplings": "couplings"}, [], "half",
     ["is unreadable or corrupt"]),
    ("student-as-teacher", "couplings", {"--teacher": "student"}, [], "student",
     ["is not a teacher model file (kind='student')"]),
    ("teacher-as-student", "evaluate",
     {"--student": "teacher", "--teacher": "teacher", "--couplings": "couplings"}, [], "teacher",
     ["is not a student model file (kind='teacher')"]),
    ("other-architecture-init-teacher", "reflow",
     {"--teacher": "teacher16", "--couplings": "couplings16"}, [], "teacher16",
     ["reflow.net", "'width': 32", "'width': 16", "init: teacher needs the same network"]),
    ("mismatching-couplings-init-scratch", "reflow",
     {"--teacher": "teacher16", "--couplings": "couplings"}, ["init=scratch", "net.width=16"],
     "couplings", ["were made by another teacher", "teacher16"]),
    ("other-teachers-couplings-to-reflow", "reflow",
     {"--teacher": "teacher", "--couplings": "couplings16"}, [], "couplings16",
     ["were made by another teacher"]),
    ("other-teachers-couplings-to-evaluate", "evaluate",
     {"--student": "student", "--teacher": "teacher", "--couplings": "couplings16"}, [],
     "couplings16", ["does not match: teacher_sha256: file has"]),
    ("student-of-other-teacher-to-evaluate", "evaluate",
     {"--student": "student", "--teacher": "teacher16", "--couplings": "couplings16"}, [],
     "student", ["was distilled from another teacher than", "teacher16"]),
    ("K-not-in-couplings", "reflow", {"--teacher": "teacher", "--couplings": "couplings"},
     ["K=3"], "couplings", ["reflow.K = 3", "store window ends for K in"]),
    ("params-wrong-types", "teacher", {}, [], "badtypes",
     ["teacher.", "has the wrong type", "expected"]),
]
OUT = {"teacher": "out", "couplings": "out.h5", "reflow": "out", "evaluate": "out.json"}


@pytest.fixture
def files(tmp_path, smoke) -> dict[str, Path]:
    f = dict(smoke)
    half = tmp_path / "in" / "teacher.pt"
    half.parent.mkdir()
    data = smoke["teacher"].read_bytes()
    half.write_bytes(data[: len(data) // 2])  # cut in half
    f["half"] = half
    f["badtypes"] = tmp_path / "in" / "badtypes.yaml"
    f["badtypes"].write_text("seed: zero\nteacher:\n  train: {steps: many}\n")
    return f


@pytest.mark.parametrize(("stage", "inputs", "overrides", "named", "needles"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_with_one_line(tmp_path, files, capsys, real_stderr, stage, inputs, overrides,
                               named, needles):
    out = tmp_path / "o" / OUT[stage]
    params = str(files["badtypes"]) if named == "badtypes" else "smoke"
    argv = [stage, "--params", params, "--out", out, *overrides]
    for flag, key in inputs.items():
        argv[1:1] = [flag, files[key]]
    rc = run_cli(*argv)
    cap = capsys.readouterr()
    assert rc == 2, cap.err
    lines = error_lines(cap.err)
    assert len(lines) == 1, cap.err  # one line, and nothing logged before it
    line = lines[0]
    assert line.startswith("reflowma: error: "), line
    assert repr(str(files[named])) in line, line  # names the file
    for s in needles:
        assert s in line, (s, line)
    assert cap.out == ""
    assert not (tmp_path / "o").exists()  # nothing written to the output path
    assert not any(p.name.startswith("out") for p in tmp_path.rglob("*"))
