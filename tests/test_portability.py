"""Tests that compare with numbers recorded earlier (marker ``pinned``, stored arrays under
tests/data/) must pass on any CPU, not only on the one that recorded them.

The last bit of float32 transcendental functions (sin, cos, log, exp, and the normal draws made
from them) depends on the vector unit ATen dispatches to. The run that collects this module
runs the pinned tests with the machine's own kernels; here they run again in a subprocess under
each lower capability (``ATEN_CPU_CAPABILITY=default``: scalar kernels; ``avx2`` on an AVX-512
machine), so a test that holds only with this machine's kernels fails here and not on a user's
machine. Which tests pin numbers: every module with ``pytest.mark.pinned``; a module that reads
tests/data/ or holds a hex digest must be one of them (below).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
# ATen's x86 capabilities, lowest first (torch.backends.cpu.get_cpu_capability() names)
LEVELS = ["DEFAULT", "AVX2", "AVX512"]
OWN = torch.backends.cpu.get_cpu_capability()
# float32 sin on 100,001 points: the vectorised kernels and the scalar one differ in the last
# bit somewhere (3,000-odd points between AVX2 and DEFAULT here)
PROBE = ("import hashlib, torch; x = torch.linspace(-10, 10, 100001); "
         "print(torch.backends.cpu.get_cpu_capability(), "
         "hashlib.sha256(torch.sin(x).numpy().tobytes()).hexdigest())")


def _modules(pattern: str) -> list[Path]:
    rx = re.compile(pattern)
    return sorted(p for p in TESTS.rglob("test_*.py") if rx.search(p.read_text()))


def pinned_modules() -> list[Path]:
    return [p for p in _modules(r"pytest\.mark\.pinned") if p != Path(__file__)]


def _env(capability: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["ATEN_CPU_CAPABILITY"] = capability
    return env


def lower_capabilities() -> list[str]:
    """The capabilities below this machine's own that ATen can be told to use."""
    if OWN in LEVELS:
        return [c.lower() for c in LEVELS[:LEVELS.index(OWN)]]
    return [] if OWN == "DEFAULT" else ["default"]  # another architecture: its scalar kernels


def test_the_capability_variable_changes_the_kernels():
    """ATEN_CPU_CAPABILITY=default really selects other kernels: torch reports it, and their
    float32 sin differs in the last bit from the machine's own on some points."""
    own = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, env=_env(OWN.lower())).stdout.split()
    here = hashlib.sha256(torch.sin(torch.linspace(-10, 10, 100001)).numpy().tobytes())
    assert own == [OWN, here.hexdigest()]  # the variable set to the machine's own: no change
    scalar = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                            check=True, env=_env("default")).stdout.split()
    assert scalar[0] == "DEFAULT"
    if OWN == "DEFAULT":
        pytest.skip("this machine runs the scalar kernels already")
    assert scalar[1] != own[1], "the scalar sin equals the vectorised one bit for bit"


def test_modules_that_pin_numbers_are_marked():
    """A test module that reads stored numbers (tests/data/) or holds a hex digest (a pinned
    sha256) marks its pinned tests, so that the guard below reruns them."""
    marked = set(pinned_modules())
    assert marked, "no module marks pinned tests: the guard below would check nothing"
    readers = _modules(r"""tests/data\b|__file__\)\.parent / "data"|["'][0-9a-f]{16,}["']""")
    unmarked = [str(p.relative_to(REPO)) for p in readers
                if p not in marked and p != Path(__file__)]
    assert not unmarked, f"pin numbers but mark no test pytest.mark.pinned: {unmarked}"


@pytest.mark.parametrize("capability", [c.lower() for c in LEVELS[:-1]])
def test_pinned_tests_pass_under_a_lower_capability(capability, tmp_path):
    """Every pinned test passes with the scalar kernels (and AVX2 where the machine has
    AVX-512): run in a subprocess, its results read from a JUnit XML report."""
    if capability not in lower_capabilities():
        pytest.skip(f"{capability!r} is not below this machine's {OWN} (the run itself is)")
    files = pinned_modules()
    report = tmp_path / "pinned.xml"
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         "-m", "pinned", f"--junitxml={report}", *map(str, files)],
        cwd=REPO, capture_output=True, text=True, env=_env(capability), timeout=600)
    out = res.stdout[-3000:] + res.stderr[-2000:]
    assert res.returncode == 0, f"pinned tests fail under ATEN_CPU_CAPABILITY={capability}:\n{out}"
    stems, ran = {p.stem for p in files}, {}
    for case in ET.parse(report).getroot().iter("testcase"):
        bad = [c.tag for c in case if c.tag in ("failure", "error", "skipped")]
        assert not bad, f"{case.get('name')}: {bad}\n{out}"
        (module,) = stems & set(case.get("classname").split("."))
        ran.setdefault(module, []).append(case.get("name"))
    assert sorted(ran) == sorted(stems), (ran, out)  # every module ran tests
    print(f"ATEN_CPU_CAPABILITY={capability}: {sum(map(len, ran.values()))} pinned tests "
          f"passed in {', '.join(sorted(ran))}")
