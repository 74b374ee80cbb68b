"""Safety of the default path: checkpoints are loaded with ``weights_only=True`` (a pickle with a
code payload is refused and the payload never runs), params YAML is read with ``safe_load``
(Python tags are refused), and the smoke pipeline runs with no network at all."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reflowma.infra import grid
from reflowma.infra.config import ConfigError
from reflowma.infra.storage import checkpoint

from .conftest import PROXIES, REPO, env, error_lines, records, run_cli


class _Payload:
    """Unpickling this calls ``open(marker, 'w')``: the marker file shows the code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil(path: Path, marker: Path, kind: str = "teacher") -> Path:
    torch.save({"kind": kind, "model": {"w": _Payload(marker)}, "meta": {}}, path)
    return path


def test_payload_is_live_without_weights_only(tmp_path):
    """The payload used below really runs under an unsafe load (so its absence means refusal)."""
    marker = tmp_path / "ran"
    _evil(tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


def test_malicious_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "ran"
    evil = _evil(tmp_path / "evil.pt", marker)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load_model_file(evil, "teacher")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"checkpoint {str(evil)!r} refused: ") and "weights-only" in msg
    assert "GLOBAL" in msg and "open" in msg  # names what it refused
    assert "weights_only` set to `False`" not in msg  # never suggests the unsafe retry
    assert not marker.exists()


@pytest.mark.parametrize("where", ["--teacher", "--student", "state.pt"])
def test_cli_refuses_malicious_checkpoints(tmp_path, smoke, capsys, real_stderr, where):
    """As an input of couplings/evaluate and as the resume state of a training job."""
    marker = tmp_path / "ran"
    if where == "--teacher":
        evil = _evil(tmp_path / "evil.pt", marker)
        argv = ["couplings", "--teacher", evil, "--out", tmp_path / "c.h5"]
    elif where == "--student":
        evil = _evil(tmp_path / "evil.pt", marker, "student")
        argv = ["evaluate", "--student", evil, "--teacher", smoke["teacher"], "--couplings",
                smoke["couplings"], "--out", tmp_path / "eval.json"]
    else:  # a planted resume state in the output folder of a teacher
        (tmp_path / "t").mkdir()
        evil = _evil(tmp_path / "t" / "state.pt", marker)
        argv = ["teacher", "--out", tmp_path / "t"]
    rc = run_cli(*argv[:1], "--params", "smoke", *argv[1:])
    lines = error_lines(capsys.readouterr().err)
    assert rc == 2
    errors = [ln for ln in lines if ln.startswith("reflowma:")]
    assert len(errors) == 1 and errors[0].startswith(f"reflowma: error: checkpoint "
                                                     f"{str(evil)!r} refused: "), lines
    assert not marker.exists()
    assert not (tmp_path / "t" / "teacher.pt").exists()


TAGS = ["!!python/object/apply:builtins.open [{m}, w]",
        "!!python/object/new:builtins.open [{m}, w]",
        "!!python/name:builtins.open"]


@pytest.mark.parametrize("tag", TAGS, ids=["apply", "new", "name"])
def test_yaml_python_tags_are_refused(tmp_path, capsys, tag):
    marker = tmp_path / "ran"
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"seed: {tag.format(m=marker)}\n")
    assert run_cli("teacher", "--params", bad, "--out", tmp_path / "out") == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"reflowma: error: {bad}:1: not valid YAML: "), line
    assert "python/" in line
    for load in (grid.load_grid, grid.load_preset):  # the workflow's readers too
        with pytest.raises(ConfigError, match="not valid YAML"):
            load(str(bad))
    # as a key=value override the tag is not executed either: the value stays a string
    assert run_cli("teacher", "--params", "smoke", "--out", tmp_path / "out",
                   f"seed={tag.format(m=marker)}") == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith("reflowma: error: teacher.seed: '!!python/"), line
    assert not marker.exists() and not (tmp_path / "out").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def _unshare_net() -> list[str]:
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed")
    probe = subprocess.run([unshare, "--net", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare --net is not permitted here (needs root or user namespaces): "
                    f"{probe.stderr.strip()[:200]}")
    return [unshare, "--net"]


def test_default_path_opens_no_connection(smoke):
    """The four stages with run records, in-process, with every way to the network closed off
    and the proxies pointing at a closed local port (the ``smoke`` fixture): no attempt, all
    written. The same through snakemake in a network namespace:
    test_smoke_pipeline_runs_without_network."""
    assert smoke["attempts"] == []
    assert set(json.loads(smoke["eval"].read_text())["nfe"]) == {"1", "2", "4"}
    assert [r["run"]["status"] for r in records(smoke["runs"])] == ["COMPLETED"] * 4


# The whole smoke workflow (8 processes, ~30-60 s on 2 quiet cores; the limit leaves room for a
# loaded machine) in a network namespace: slow-marked (`make test-slow`); the default run keeps
# the in-process check of the stages above.
@pytest.mark.slow
def test_smoke_pipeline_runs_without_network(tmp_path):
    """snakemake (preset smoke, grid smoke) in a network namespace with only a loopback, every
    proxy variable pointing at a closed local port: it completes, evaluations written."""
    prefix = _unshare_net()
    proxy = f"http://127.0.0.1:{_closed_port()}"
    e = env()
    for k in PROXIES:
        e[k] = proxy
    e.pop("REFLOWMA_MONGO_URL", None)
    snakemake = str(Path(sys.executable).parent / "snakemake")
    cmd = [snakemake, "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--cores", "2", "--config", "preset=smoke", "grid=smoke",
           f"results={tmp_path / 'results'}"]
    # lo up (if `ip` is there): the proxy port is then a closed local port, not unreachable
    script = 'command -v ip >/dev/null && ip link set lo up; exec "$@"'
    res = subprocess.run([*prefix, "sh", "-c", script, "sh", "timeout", "-k", "10", "900", *cmd],
                         capture_output=True, text=True, cwd=tmp_path, env=e)
    assert res.returncode == 0, res.stderr[-3000:]
    evals = sorted((tmp_path / "results" / "smoke" / "eval").rglob("eval.json"))
    assert [p.relative_to(tmp_path / "results" / "smoke" / "eval").as_posix() for p in evals] == [
        "8gaussians/seed~0/K~1/ws~1.0/eval.json", "8gaussians/seed~0/K~2/ws~1.0/eval.json"]
    for p in evals:
        assert set(json.loads(p.read_text())["nfe"]) == {"1", "2", "4"}
    recs = records(tmp_path / "results" / "smoke" / "runs")
    assert len(recs) == 6 and {r["run"]["status"] for r in recs} == {"COMPLETED"}
