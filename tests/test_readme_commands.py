"""Every command in the README's ```bash blocks is checked at smoke size, so the README cannot
drift from what the project does: snakemake commands as dry runs of the smoke preset (the paper
grid's as is), make targets with `make -n`, dvc commands by `dvc dag` (repro) or their help, and the
preset and grid lists against params/."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
README = (REPO / "README.md").read_text()


def readme_commands() -> list[str]:
    """The command lines of the README's bash blocks, comments stripped."""
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                cmds.append(shlex.join(words))
    return cmds


COMMANDS = readme_commands()


def run(cmd: list[str], cwd: Path, timeout=120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "REFLOWMA_ROOT": str(REPO),
           "PYTHONPATH": str(REPO / "src"), "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(["timeout", "-k", "5", str(timeout), *cmd], cwd=cwd, env=env,
                          capture_output=True, text=True)


def smoke_sized(words: list[str], tmp: Path) -> list[str]:
    """A snakemake command as a dry run at smoke size, its outputs under ``tmp``."""
    words = [w for w in words if w not in ("-n",)]
    cfg = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))
    rest = [w for w in words[1:] if not ("=" in w and not w.startswith("-"))
            and w != "--config"]
    if "--report" in rest:  # the report of a run needs that run: check the DAG instead
        i = rest.index("--report")
        del rest[i:i + 2]
    if "--cores" in rest:
        i = rest.index("--cores")
        del rest[i:i + 2]
    if cfg.get("grid") != "paper":
        cfg["grid"] = "smoke"
    cfg.update(preset=cfg.get("preset", "smoke") if cfg.get("preset") == "cluster" else "smoke",
               results=str(tmp / "results"))
    return ["snakemake", "-n", "--quiet", "rules", *rest, "--config",
            *[f"{k}={v}" for k, v in cfg.items()]]


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command(command, tmp_path):
    words = shlex.split(command)
    if words[0] == "make":
        res = run(["make", "-n", *words[1:]], REPO)
    elif words[0] == "snakemake":
        res = run(smoke_sized(words, tmp_path), REPO, timeout=300)
        assert "Job stats" in res.stdout + res.stderr, res.stdout[-2000:] + res.stderr[-2000:]
        assert not (tmp_path / "results").exists()  # a dry run writes nothing
    elif words[0] == "dvc":
        sub = words[1] if words[1] in ("repro", "push") else " ".join(words[1:3])
        res = run(["dvc", *sub.split(), "--help"], REPO)
        if sub == "repro":  # dvc.yaml loads and its stages form a DAG (before any run)
            res = run(["dvc", "dag"], REPO)
        if sub == "exp show":  # the documented column filter parses
            res = run([*words, "--json"], REPO)
    elif words[:2] == ["source", ".venv/bin/activate"]:
        assert "VENV   := .venv" in (REPO / "Makefile").read_text()
        return
    else:
        pytest.fail(f"the README shows a command this test does not know how to check: "
                    f"{command!r} (teach tests/test_readme_commands.py)")
    assert res.returncode == 0, f"{command}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"


def test_preset_and_grid_lists_match_params():
    for kind in ("presets", "grids"):
        m = re.search(rf"`{kind}/\{{([^}}]+)\}}\.yaml`", README)
        assert m, kind
        listed = sorted(m.group(1).split(","))
        actual = sorted(p.stem for p in (REPO / "params" / kind).glob("*.yaml"))
        assert listed == actual, (kind, listed, actual)


def test_the_readme_has_commands():
    assert any(c.startswith("snakemake -n") for c in COMMANDS)
    assert any("--report" in c for c in COMMANDS)
