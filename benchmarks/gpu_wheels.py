r"""Wheels for a lent GPU machine that reaches no package index: what the CUDA tests
(``pytest -m cuda``) and benchmarks/gpu_check.sh import beyond the machine's image, for CPython
3.12 on manylinux x86-64, into ``.gpu-wheels/`` (gitignored; carried to the machine).

    .venv/bin/python benchmarks/gpu_wheels.py   # here, with PyPI reachable (about 3 minutes)

then, on the GPU machine, from the repository root (the one-line check)::

    python -m pip install -q --no-index --find-links .gpu-wheels \
        -r .gpu-wheels/requirements.txt && PYTHONPATH=$PWD/src python -m pytest -m cuda

The image (Python 3.12) has torch, torchvision, torchmetrics, h5py, pandas, scipy, seaborn,
tabulate, scikit-learn and matplotlib (``IMAGE``). The dependency closure of ``NEED`` is resolved
here (pip's dry-run report), and every package of it is fetched except the compiled ones that
the image's packages bring too (numpy, scipy, pillow, ...: hundreds of MB, and already there).
Pure-Python packages the image may also hold are carried anyway (small; they satisfy a pin such
as snakemake's ``packaging < 26`` whatever version the image has). Compiled packages are fetched
for cp312; a package published only as a source archive is built into a pure wheel here. PuLP
(snakemake's scheduler) ships CBC solver binaries for every platform: only its Linux x86-64
solver is kept. The carry limit of the device tool is 64 MiB in all; the total is printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Imported by reflowma, its workflow and the CUDA tests, beyond the image. The pins are
# pyproject.toml's, except POT: 0.9.6 (a 1.5 MB cp312 wheel; 0.9.7.post1's is 33 MB).
NEED = ["sacred==0.8.7", "snakemake==9.27.1", "jsonschema==4.26.0", "pot==0.9.6",
        "mlxtend==0.25.0", "tqdm==4.70.1", "pyyaml==6.0.4", "pytest==9.2.0",
        "setuptools==81.0.0", "wrapt==1.17.3", "packaging==25.0"]
IMAGE = ["torch", "torchvision", "torchmetrics", "h5py", "pandas", "scipy", "seaborn",
         "tabulate", "scikit-learn", "matplotlib"]
TARGET = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
          "--abi", "cp312", "--platform", "manylinux_2_28_x86_64", "--platform",
          "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64"]
PULP_KEEP = "pulp/solverdir/cbc/linux/i64/"  # the x86-64 Linux CBC (other folders: arm, osx, win)


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def resolve(reqs: list[str], work: Path) -> list[dict]:
    """The packages ``pip install reqs`` would install into an empty environment:
    ``{name, version, file}`` (file: the wheel or source archive pip chose)."""
    report = work / "report.json"
    pip("install", "-q", "--dry-run", "--ignore-installed", "--report", str(report), *reqs)
    items = json.loads(report.read_text())["install"]
    return [{"name": i["metadata"]["name"], "version": i["metadata"]["version"],
             "file": i["download_info"]["url"].rsplit("/", 1)[-1]} for i in items]


def norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def strip_pulp(wheel: Path) -> None:
    """Drop PuLP's solver binaries for other platforms (and their RECORD lines)."""
    solvers = "pulp/solverdir/cbc/"
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            name = info.filename
            if name.startswith(solvers) and not name.startswith(PULP_KEEP):
                continue
            data = src.read(info)
            if name.endswith(".dist-info/RECORD"):
                data = "".join(line for line in data.decode().splitlines(keepends=True)
                               if not (line.startswith(solvers)
                                       and not line.startswith(PULP_KEEP))).encode()
            dst.writestr(info, data)
    tmp.replace(wheel)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / ".gpu-wheels")
    out = ap.parse_args().out
    with tempfile.TemporaryDirectory() as w:
        work = Path(w)
        need = resolve(NEED, work)
        image = {norm(p["name"]) for p in resolve(IMAGE, work)}
        top = {norm(r.split("==")[0]) for r in NEED}
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        skipped, pure, compiled = [], [], []
        for p in sorted(need, key=lambda p: norm(p["name"])):
            pin = f"{p['name']}=={p['version']}"
            if p["file"].endswith("-none-any.whl"):
                pure.append(pin)
            elif norm(p["name"]) in image and norm(p["name"]) not in top:
                skipped.append(pin)  # compiled, and the image's packages need it too
            elif p["file"].endswith(".whl"):
                compiled.append(pin)
            else:  # a source archive only: build its wheel (pure Python, or this fails below)
                pip("wheel", "-q", "--no-deps", "-w", str(out), pin)
        pip("download", "-q", "--no-deps", "-d", str(out), *pure)
        pip("download", "-q", "--no-deps", *TARGET, "-d", str(out), *compiled)
    for whl in out.glob("*.whl"):
        tags = whl.stem.split("-")[-3:]
        if tags[2] != "any" and "cp312" not in tags[1] and "abi3" not in tags[1]:
            raise SystemExit(f"{whl.name}: not a wheel for CPython 3.12")
    for whl in out.glob("pulp-*.whl"):
        strip_pulp(whl)
    (out / "requirements.txt").write_text("\n".join(NEED) + "\n")
    files = sorted(out.glob("*.whl"))
    size = sum(f.stat().st_size for f in files)
    print(f"{out}: {len(files)} wheels, {size / 2**20:.1f} MiB; left to the image: "
          f"{', '.join(skipped)}")


if __name__ == "__main__":
    main()
