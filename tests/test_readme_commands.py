"""The README and docs/*.md cannot drift from what the project does.

* Every command of their ```bash blocks is checked at smoke size, without running a workflow:
  snakemake commands as dry runs of the smoke preset (the paper grid's as is), make targets with
  `make -n`, dvc commands by `dvc dag` (repro) or their help, `reflowma <stage>` commands by
  validating their config (`--print-config`; a data file the docs ask you to bring gets an empty
  stand-in), `reflowma report` by its help naming every flag used, scripts by `bash -n`, and the
  rest (conda, pip, ln, torchrun) by the files and names they refer to. A command this test does
  not know fails it. Job scripts are not commands to type: they are fenced `sh` and not run.
* docs/workflow.md names every preset and grid of params/, docs/architecture.md every module of
  src/reflowma/, one line each, and nothing that does not exist.
* Every relative link of these files points to a file, and to a heading there if it names one.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TEXT = {p: p.read_text() for p in DOCS}
README = TEXT[REPO / "README.md"]
STAGES = ("teacher", "couplings", "reflow", "evaluate", "classifier")
ENV_WORD = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def fenced(text: str, lang: str) -> list[str]:
    """The contents of the ```lang blocks of a Markdown text."""
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.S | re.M)


def command_lines(text: str) -> list[str]:
    """The command lines of a text's bash blocks: continuations joined, comments stripped."""
    lines = []
    for block in fenced(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                lines.append(shlex.join(words))
    return lines


def split_commands(line: str) -> list[list[str]]:
    """One command line as its commands (`a && b ; c` -> [a, b, c]; an unquoted `&&` or `;`
    is a word of its own in the docs' lines)."""
    cmds, cur = [], []
    for w in shlex.shlex(line, posix=True, punctuation_chars=";&"):
        if w in ("&&", ";"):
            cmds.append(cur)
            cur = []
        else:
            cur.append(w)
    return [c for c in [*cmds, cur] if c]


LINES = list(dict.fromkeys(line for p in DOCS for line in command_lines(TEXT[p])))


def python_modules() -> dict[str, str]:
    """Python modules the docs spell out (a ```python block whose first line is `# NAME.py`)."""
    found = {}
    for text in TEXT.values():
        for block in fenced(text, "python"):
            m = re.match(r"# (\w+)\.py\b", block)
            if m:
                found[m.group(1)] = block
    return found


def profile_links() -> dict[str, Path]:
    """Snakemake profiles the docs install by name (`ln -s .../workflow/profiles/X .../X`)."""
    links = {}
    for line in LINES:
        for words in split_commands(line):
            if words[:2] == ["ln", "-s"]:
                links[Path(words[3]).name] = Path(words[2].replace("$PWD", str(REPO)))
    return links


def run(cmd: list[str], cwd: Path, timeout=120, env=None, root=True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(REPO / "src"),
           "DVC_NO_ANALYTICS": "1", **(env or {})}
    if root:
        env["REFLOWMA_ROOT"] = str(REPO)
    else:
        env.pop("REFLOWMA_ROOT", None)
    return subprocess.run(["timeout", "-k", "5", str(timeout), *cmd], cwd=cwd, env=env,
                          capture_output=True, text=True)


def smoke_sized(words: list[str], tmp: Path) -> list[str]:
    """A snakemake command as a dry run at smoke size, its outputs under ``tmp``; a profile
    named without a path is the one the docs install under that name."""
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
    if "--profile" in rest:
        i = rest.index("--profile") + 1
        if "/" not in rest[i]:
            links = profile_links()
            assert rest[i] in links, f"profile {rest[i]!r}: no `ln -s` in the docs installs it"
            rest[i] = str(links[rest[i]])
        assert (REPO / rest[i] / "config.yaml").is_file(), rest[i]
    if cfg.get("grid") != "paper":
        cfg["grid"] = "smoke"
    cfg.update(preset=cfg.get("preset", "smoke") if cfg.get("preset") == "cluster" else "smoke",
               results=str(tmp / "results"))
    return ["snakemake", "-n", "--quiet", "rules", *rest, "--config",
            *[f"{k}={v}" for k, v in cfg.items()]]


def stand_in_data(words: list[str], tmp: Path) -> list[str]:
    """``data.path=`` of an empty stand-in file when the preset's data file is one you bring
    (not in the repository): validation checks that it exists, the command reads nothing."""
    if any(w.startswith("data.path=") for w in words) or "--params" not in words:
        return []
    preset = REPO / "params" / "presets" / f"{words[words.index('--params') + 1]}.yaml"
    path = (yaml.safe_load(preset.read_text()).get("data") or {}).get("path") if \
        preset.is_file() else None
    if path is None or (REPO / path).exists():
        return []
    stand_in = tmp / "data" / Path(path).name
    stand_in.parent.mkdir(parents=True, exist_ok=True)
    stand_in.touch()
    return [f"data.path={stand_in}"]


def check_reflowma(words: list[str], cwd: Path, env: dict,
                   tmp: Path) -> subprocess.CompletedProcess:
    """``reflowma <stage> ...`` validated (``--print-config``), ``reflowma report ...`` against
    its help."""
    sub = words[1]
    root = cwd == REPO  # elsewhere the command finds the params shipped with the package
    if sub in STAGES:
        return run(["reflowma", *words[1:], *stand_in_data(words, tmp), "--print-config"], cwd,
                   env=env, root=root)
    if sub == "report":
        res = run(["reflowma", "report", "--help"], cwd, env=env, root=root)
        for w in words[2:]:
            if w.startswith("--"):
                assert f" {w}" in res.stdout, f"reflowma report has no {w}"
        for flag, kind in (("--preset", "presets"), ("--grid", "grids")):
            if flag in words:
                name = words[words.index(flag) + 1]
                assert (REPO / "params" / kind / f"{name}.yaml").is_file(), (flag, name)
        return res
    pytest.fail(f"reflowma {sub}: teach tests/test_readme_commands.py how to check it")


def check(words: list[str], cwd: Path, tmp: Path) -> subprocess.CompletedProcess | None:
    """One command of the docs, checked without running a workflow (None: nothing to run)."""
    env = {}
    while words and ENV_WORD.match(words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    modules = python_modules()
    for name in filter(None, env.get("REFLOWMA_PLUGINS", "").split(",")):
        assert name in modules, f"plugin {name!r}: no `# {name}.py` python block in the docs"
        (tmp / f"{name}.py").write_text(modules[name])
        env["PYTHONPATH"] = f"{REPO / 'src'}{os.pathsep}{tmp}"
    head = words[0]
    if head == "make":
        return run(["make", "-n", *words[1:]], REPO)
    if head == "snakemake":
        res = run(smoke_sized(words, tmp), REPO, timeout=300)
        assert "Job stats" in res.stdout + res.stderr, res.stdout[-2000:] + res.stderr[-2000:]
        assert not (tmp / "results").exists()  # a dry run writes nothing
        return res
    if head == "dvc":
        groups = ("exp", "metrics", "plots", "remote", "cache", "config")
        sub = words[1:3] if words[1] in groups else words[1:2]
        if sub == ["repro"]:  # dvc.yaml loads and its stages form a DAG (before any run)
            return run(["dvc", "dag"], REPO)
        if sub == ["exp", "show"]:  # the documented column filter parses
            return run([*words, "--json"], REPO)
        return run(["dvc", *sub, "--help"], REPO)
    if head == "reflowma":
        return check_reflowma(words, cwd, env, tmp)
    if head == "torchrun":  # torchrun's own flags, then a reflowma command
        assert "-m" in words and words[words.index("-m") + 1] == "reflowma", words
        res = run(["torchrun", "--help"], REPO)
        assert res.returncode == 0, res.stderr[-2000:]
        return check_reflowma(words[words.index("-m") + 1:], cwd, env, tmp)
    if head == "bash":
        assert (REPO / words[1]).is_file(), words[1]
        return run(["bash", "-n", words[1]], REPO)
    if words[:2] == ["source", ".venv/bin/activate"]:
        assert "VENV   := .venv" in (REPO / "Makefile").read_text()
        return None
    if words[:3] == ["conda", "env", "create"]:
        spec = yaml.safe_load((REPO / words[words.index("-f") + 1]).read_text())
        assert spec["name"] and spec["dependencies"], spec
        return None
    if words[:2] == ["conda", "activate"]:
        assert yaml.safe_load((REPO / "environment.yml").read_text())["name"] == words[2]
        return None
    if words[:2] == ["pip", "install"] and words[2:] == ["."]:
        assert (REPO / "pyproject.toml").is_file()  # tests/test_packaging.py builds the wheel
        return None
    if words[:2] == ["mkdir", "-p"]:  # a folder for what the next command puts there
        return None
    if words[:2] == ["ln", "-s"]:
        assert Path(words[2].replace("$PWD", str(REPO))).exists(), words[2]
        return None
    pytest.fail(f"the docs show a command this test does not know how to check: "
                f"{shlex.join(words)!r} (teach tests/test_readme_commands.py)")


@pytest.mark.parametrize("line", [pytest.param(line, id=" ".join(shlex.split(line))[:80])
                                  for line in LINES])
def test_doc_command(line, tmp_path):
    cwd = REPO
    for words in split_commands(line):
        if words[0] == "cd":  # the rest of the line runs in a folder outside the project
            cwd = tmp_path
            continue
        res = check(words, cwd, tmp_path)
        if res is not None:
            assert res.returncode == 0, f"{line}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"


def listed(text: str, heading: str) -> list[str]:
    """The backticked names that open the bullets of a section (until the next heading of the
    same or a higher level)."""
    level = heading.split()[0]
    m = re.search(rf"^{re.escape(heading)}\n(.*?)(?=^#{{1,{len(level)}}} |\Z)", text, re.S | re.M)
    assert m, f"no section {heading!r}"
    return re.findall(r"^- `([^`]+)`", m.group(1), re.M)


def test_workflow_doc_lists_every_preset_and_grid():
    text = (REPO / "docs" / "workflow.md").read_text()
    for kind, heading in (("presets", "### Presets"), ("grids", "### Grids")):
        names = listed(text, heading)
        assert len(names) == len(set(names)), (kind, names)
        actual = sorted(p.stem for p in (REPO / "params" / kind).glob("*.yaml"))
        assert sorted(names) == actual, (kind, sorted(set(actual) - set(names)),
                                         sorted(set(names) - set(actual)))


def package_modules() -> list[str]:
    """Every module of src/reflowma (`core/solvers.py`) and package (`core/`: its __init__)."""
    pkg = REPO / "src" / "reflowma"
    found = []
    for folder, dirs, files in os.walk(pkg):  # does not follow the params link
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        rel = Path(folder).relative_to(pkg).as_posix()
        for f in files:
            if f == "__init__.py" and rel != ".":
                found.append(f"{rel}/")
            elif f.endswith(".py") and f != "__init__.py":
                found.append(f if rel == "." else f"{rel}/{f}")
    return sorted(found)


def test_architecture_doc_lists_every_module():
    names = listed((REPO / "docs" / "architecture.md").read_text(), "## Modules")
    assert len(names) == len(set(names)), names
    actual = package_modules()
    assert len(actual) > 50  # the walk found the package
    assert sorted(names) == actual, ("no line:", sorted(set(actual) - set(names)),
                                     "no module:", sorted(set(names) - set(actual)))


def slugs(text: str) -> set[str]:
    """GitHub's anchors of a Markdown text's headings (outside code blocks)."""
    seen: dict[str, int] = {}
    out = set()
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    for heading in re.findall(r"^#{1,6} (.+)$", prose, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_relative_links_resolve():
    bad = []
    for doc in DOCS:
        prose = re.sub(r"^```.*?^```", "", TEXT[doc], flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            if not dest.exists():
                bad.append(f"{doc.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in slugs(dest.read_text()):
                bad.append(f"{doc.name}: {target} (no such heading)")
    assert not bad, "\n".join(bad)


def test_the_readme_has_commands():
    readme = command_lines(README)
    assert "make run" in readme and "make test" in readme  # exactly these two: .ci/run
    assert any(c.startswith("snakemake -n") for c in readme)
    assert any("--report" in c for c in readme)
    assert any("--profile slurm" in c for c in readme)


def test_the_readme_shows_a_labelled_image_entry():
    entries = yaml.safe_load(fenced(README, "yaml")[0])
    assert {"name": "images", "path": "data/x.npz", "key": "images",
            "labels_key": "labels"} in entries.values(), entries
