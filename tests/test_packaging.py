"""environment.yml (conda, GPU clusters) and pyproject.toml list the same packages and pins."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

# conda name -> pip name; None: not a Python package of ours (interpreter, installer, CUDA)
CONDA_TO_PIP = {"pytorch": "torch", "python": None, "pip": None, "pytorch-cuda": None}
# conda packages pinned as 'name=X.Y' (any X.Y.z build) against pip's '==X.Y.z'
CONDA_PINNED = ("torch", "torchvision")
IGNORED_PIP_LINES = {"-e .", "-e.", "."}  # the package itself


def _split(req: str) -> tuple[str, str]:
    """'Name[extra]>=1,<2' -> ('name', '>=1,<2'), names normalised (PEP 503-like)."""
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(\[[^\]]*\])?\s*(.*?)\s*(#.*)?$", req)
    assert m, req
    name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
    return name, m.group(3).replace(" ", "")


def _pyproject() -> tuple[dict, dict]:
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    main = dict(_split(r) for r in proj["dependencies"])
    extras = proj["optional-dependencies"]
    test = dict(_split(r) for r in extras["test"] + extras["inception"])  # both in the env
    return main, test


def _environment() -> tuple[dict, dict, dict]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = {}, {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for line in dep["pip"]:
                if line.strip() not in IGNORED_PIP_LINES:
                    name, spec = _split(line)
                    pip[name] = spec
            continue
        name, spec = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", str(dep)).groups()
        conda[name.lower()] = spec
    return env, conda, pip


def _pip_names(conda: dict) -> dict:
    out = {}
    for name, spec in conda.items():
        if name.startswith("cuda"):
            continue
        mapped = CONDA_TO_PIP.get(name, name)
        if mapped is not None:
            out[mapped] = spec
    return out


def test_same_packages():
    main, test = _pyproject()
    _, conda, pip = _environment()
    from_conda = _pip_names(conda)
    assert not set(from_conda) & set(pip), "listed both as conda and pip package"
    env_names = set(from_conda) | set(pip)
    assert env_names == set(main) | set(test), (
        f"only in environment.yml: {sorted(env_names - set(main) - set(test))}; "
        f"only in pyproject.toml: {sorted(set(main) | set(test) - env_names)}")


def test_same_pins():
    main, test = _pyproject()
    _, conda, pip = _environment()
    for name, spec in pip.items():
        assert spec == {**main, **test}[name], name
    # conda's torch pin is 'pytorch=2.13' (conda syntax, any 2.13.x CUDA build); same for
    # torchvision (0.28, the release paired with torch 2.13)
    for name in CONDA_PINNED:
        spec = _pip_names(conda)[name]
        assert spec.startswith("=")
        assert {**main, **test}[name].startswith("==" + spec.lstrip("="))


def test_inception_env_pins():
    """The Makefile's .venv-inception installs the extra's torch-fidelity with a torchvision
    whose release pairs with its torch (0.(N+15) with 2.N), and .venv's numpy."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.startswith("INCEPTION_PINS"))
    pins = dict(_split(p) for p in re.findall(r'"([^"]+)"', line))
    main, test = _pyproject()
    assert pins["torch-fidelity"] == test["torch-fidelity"]
    assert pins["numpy"] == main["numpy"]
    torch_minor = int(pins["torch"].split(".")[1])
    assert pins["torchvision"].startswith(f"==0.{torch_minor + 15}.")
    assert test["torchvision"].startswith(f"==0.{int(main['torch'].split('.')[1]) + 15}.")


def test_environment_basics():
    env, conda, pip = _environment()
    assert env["name"] == "reflowma"
    assert env["channels"][:3] == ["pytorch", "nvidia", "conda-forge"]
    assert conda["python"] == "=3.11"
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert proj["requires-python"].startswith(">=3.11")
    pip_lines = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip_lines  # the package itself, editable
    assert "pip" in conda and "pytorch-cuda" in conda


def test_normalisation_helper():
    assert _split("Scikit_Learn[extra] == 1.0 ") == ("scikit-learn", "==1.0")
    assert _split("snakemake-executor-plugin-slurm==2.8.0") == (
        "snakemake-executor-plugin-slurm", "==2.8.0")
    assert _pip_names({"pytorch": "=2.13", "python": "=3.11", "cudatoolkit": "", "pip": ""}) == {
        "torch": "=2.13"}


# --- the built wheel: params shipped, runs from any directory, one version string ----------

def _wheel_source(dst: Path) -> Path:
    """What a wheel is built from (pyproject, README, src/ with its params link, params/), copied
    so the build leaves nothing in the checkout."""
    import shutil

    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dst / name)
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "src", dst / "src", symlinks=True, ignore=skip)
    shutil.copytree(ROOT / "params", dst / "params", ignore=skip)
    return dst


def test_wheel_runs_from_any_directory(tmp_path):
    import os
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "project"
    src.mkdir()
    _wheel_source(src)  # in a sibling folder of `work`: no params/ above `work`
    whl_dir, site, work = tmp_path / "whl", tmp_path / "site", tmp_path / "elsewhere"
    work.mkdir()
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", whl_dir, "."],
                   cwd=src, check=True, timeout=120)
    (whl,) = whl_dir.glob("reflowma-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    assert "reflowma/params/presets/smoke.yaml" in names
    assert "reflowma/params/defaults/teacher.yaml" in names
    assert "reflowma/schemas/params.schema.yaml" in names
    import reflowma

    assert whl.name.startswith(f"reflowma-{reflowma.__version__}-")
    subprocess.run([*pip, "install", "--no-deps", "--target", site, whl], check=True, timeout=120)

    env = {k: v for k, v in os.environ.items() if not k.startswith("REFLOWMA_")}
    env.update(PYTHONPATH=str(site), OMP_NUM_THREADS="1")
    py = [sys.executable, "-c", "import reflowma, reflowma.infra.config as c; "
          "print(reflowma.__file__); print(c.params_dir())"]
    out = subprocess.run(py, cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    mod_file, params = out.stdout.split()
    assert Path(mod_file).is_relative_to(site)
    assert Path(params) == site / "reflowma" / "params"
    run = subprocess.run([sys.executable, "-m", "reflowma", "teacher", "--params", "smoke",
                          "--out", "t", "train.steps=5"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (work / "t" / "teacher.pt").is_file()
    ver = subprocess.run([sys.executable, "-m", "reflowma", "--version"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=60)
    assert ver.stdout.strip() == f"reflowma {reflowma.__version__}"


def test_one_version_string():
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in proj["project"] and "version" in proj["project"]["dynamic"]
    assert proj["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "reflowma.__version__"}
    cli_files = sorted((ROOT / "src" / "reflowma" / "cli").glob("*.py"))
    assert cli_files
    for f in cli_files:
        assert not re.search(r"\d+\.\d+\.\d+", f.read_text()), f
