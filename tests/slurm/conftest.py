"""A real single-node Slurm for the tests in this folder (workflow/scripts/local-slurm.sh).

The session fixture `local_slurm` starts it (installing the Debian packages on first use, which
needs root and apt-get), points SLURM_CONF at it and stops it at the end, unless it was already
running before the session, in which case it is left running.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "workflow" / "scripts" / "local-slurm.sh"
CANNOT_INSTALL = 77  # local-slurm.sh: Slurm missing and not installable here


@dataclass(frozen=True)
class LocalSlurm:
    state_dir: Path
    conf: Path
    script: Path = SCRIPT


def _script(cmd: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), cmd], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def local_slurm():
    if shutil.which("slurmctld") is None and (os.geteuid() != 0 or shutil.which("apt-get") is None):
        pytest.skip("Slurm is not installed and cannot be installed here (needs root + apt-get)")

    state = Path(os.environ.get("REFLOWMA_SLURM_STATE", "/tmp/reflowma-slurm"))
    env = {**os.environ, "REFLOWMA_SLURM_STATE": str(state)}
    was_running = _script("status", env, 30).returncode == 0

    t0 = time.monotonic()
    res = _script("start", env, 600)  # the first start installs packages (~10 s, more if slow)
    if res.returncode == CANNOT_INSTALL:
        pytest.skip(f"local Slurm cannot be installed: {res.stderr.strip()}")
    if res.returncode != 0:
        pytest.fail(
            f"local-slurm.sh start failed (rc {res.returncode}):\n{res.stderr}{res.stdout}",
            pytrace=False,
        )
    print(f"\n[local_slurm] start took {time.monotonic() - t0:.1f}s\n{res.stderr}", end="")

    conf = state / "slurm.conf"
    old_conf = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    try:
        yield LocalSlurm(state_dir=state, conf=conf)
    finally:
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
        if was_running:
            print("\n[local_slurm] was running before the session: left running")
        else:
            t0 = time.monotonic()
            res = _script("stop", env, 120)
            print(f"\n[local_slurm] stop (rc {res.returncode}) took {time.monotonic() - t0:.1f}s")
            print(res.stderr, end="")
