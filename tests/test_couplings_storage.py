"""HDF5 couplings: round trip, resume after a real kill, and refusal of bad files."""

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from reflowma import cli
from reflowma.infra.storage.couplings import (
    Couplings,
    CouplingsError,
    CouplingsWriter,
    partial_path,
)

ATTRS = {"teacher_sha256": "ab" * 32, "solver": "rk4", "steps": 8, "seed": 3,
         "windows": [1, 2], "times": [0.0, 0.5, 1.0], "n_train": 7, "n_test": 4,
         "chunk_size": 3, "data": '{"name": "8gaussians"}'}
COUNTS = {"train": 7, "test": 4}
REFLOWMA = [sys.executable, "-m", "reflowma.cli"]
# the generation that gets killed: 20 chunks of ~50 ms each, so there is time to signal it
BIG = ["n_train=20000", "n_test=100", "chunk_size=1000", "steps=16"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    assert cli.main(["teacher", "--params", "smoke", "--out", str(out)]) == 0
    return out / "teacher.pt"


def _write(path, data: dict, finish: bool = True) -> CouplingsWriter:
    w = CouplingsWriter(path, ATTRS, COUNTS, (2,), ATTRS["chunk_size"])
    for split, arr in data.items():
        for c in range(w.n_chunks(split)):
            w.write_chunk(split, c, arr[c * 3: (c + 1) * 3])
    if finish:
        w.finish()
    w.close()
    return w


def _data():
    rng = np.random.default_rng(0)
    return {s: rng.standard_normal((n, 3, 2)).astype(np.float32) for s, n in COUNTS.items()}


def test_hdf5_round_trip(tmp_path):
    path, data = tmp_path / "c.h5", _data()
    _write(path, data)
    assert path.is_file() and not partial_path(path).exists()
    C = Couplings(path, expect=ATTRS)
    assert C.counts == COUNTS
    assert C.times == ATTRS["times"]
    assert C.attrs["complete"] is True
    for k, v in ATTRS.items():
        assert C.attrs[k] == v, k
    for split, arr in data.items():
        np.testing.assert_array_equal(C.states(split), arr)
        np.testing.assert_array_equal(C.states(split, [0, 2], n=2), arr[:2, [0, 2]])
    with h5py.File(path, "r") as f:
        assert f["train/states"].dtype == np.float32
        assert f["train"].attrs["chunks_done"] == 3 and f["test"].attrs["chunks_done"] == 2


def test_writer_order_and_finish_checks(tmp_path):
    w = CouplingsWriter(tmp_path / "c.h5", ATTRS, COUNTS, (2,), 3)
    with pytest.raises(CouplingsError, match="chunk 1 of train written out of order"):
        w.write_chunk("train", 1, np.zeros((3, 3, 2), np.float32))
    w.write_chunk("train", 0, np.zeros((3, 3, 2), np.float32))
    with pytest.raises(CouplingsError, match="train is incomplete at finish"):
        w.finish()
    w.close()
    # a partial file is resumed with the same settings, discarded with other ones
    w = CouplingsWriter(tmp_path / "c.h5", ATTRS, COUNTS, (2,), 3)
    assert w.chunks_done("train") == 1
    w.close()
    w = CouplingsWriter(tmp_path / "c.h5", {**ATTRS, "steps": 9}, COUNTS, (2,), 3)
    assert w.chunks_done("train") == 0
    w.close()


def _states(path) -> dict:
    with h5py.File(path, "r") as f:
        return {s: f[s]["states"][...] for s in ("train", "test")}


def _chunks_done(part: Path) -> int:
    try:  # reading while the writer has it open: no lock, tolerate a torn read
        with h5py.File(part, "r", locking=False) as f:
            return int(f["train"].attrs["chunks_done"])
    except Exception:  # noqa: BLE001
        return 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_generation_resumes_to_identical_content(tmp_path, teacher, caplog, sig):
    out = tmp_path / "killed.h5"
    part = partial_path(out)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*REFLOWMA, "couplings", "--params", "smoke", "--teacher",
                             str(teacher), "--out", str(out), *BIG],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        if part.exists() and _chunks_done(part) >= 1:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "generation ended before it could be interrupted"
    proc.send_signal(sig)
    rc = proc.wait(timeout=30)
    err = proc.stderr.read().decode()
    if sig == signal.SIGTERM:  # graceful: stops at a chunk boundary, 128 + 15
        assert rc == 143, err
        assert "interrupted by SIGTERM" in err
    else:
        assert rc == -signal.SIGKILL
    assert not out.exists() and part.exists()
    with pytest.raises(CouplingsError, match="does not exist.*incomplete .partial"):
        Couplings(out)
    with h5py.File(part, "r") as f:
        done = int(f["train"].attrs["chunks_done"])
        assert not f.attrs["complete"]
    assert 1 <= done < 20

    caplog.set_level(logging.INFO)
    assert cli.main(["couplings", "--params", "smoke", "--teacher", str(teacher), "--out",
                     str(out), *BIG]) == 0
    assert f"resuming {part} at chunk {done}/21" in caplog.text  # not started over
    assert not part.exists()
    ref = tmp_path / "straight.h5"
    assert cli.main(["couplings", "--params", "smoke", "--teacher", str(teacher), "--out",
                     str(ref), *BIG]) == 0
    a, b = _states(out), _states(ref)
    for split in a:
        assert a[split].shape == b[split].shape
        assert a[split].tobytes() == b[split].tobytes(), split
    assert Couplings(out).attrs == Couplings(ref).attrs


def test_incomplete_files_are_refused(tmp_path):
    path = tmp_path / "c.h5"
    _write(path, _data(), finish=False)
    with pytest.raises(CouplingsError, match="does not exist.*incomplete .partial"):
        Couplings(path)
    os.replace(partial_path(path), path)  # an incomplete file under the final name
    with pytest.raises(CouplingsError, match="is incomplete.*'complete' flag is not set"):
        Couplings(path)
    with pytest.raises(CouplingsError, match="does not exist$"):
        Couplings(tmp_path / "none.h5")


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "c.h5"
    _write(path, _data())
    cut = tmp_path / "cut.h5"
    shutil.copy(path, cut)
    with open(cut, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    with pytest.raises(CouplingsError, match=r"cut\.h5' is unreadable or truncated"):
        Couplings(cut)
    cut.write_bytes(b"not an hdf5 file")
    with pytest.raises(CouplingsError, match="unreadable or truncated"):
        Couplings(cut)


def test_mismatching_expectation_names_the_attribute(tmp_path):
    path = tmp_path / "c.h5"
    _write(path, _data())
    with pytest.raises(CouplingsError, match="solver: file has 'rk4', expected 'euler'") as e:
        Couplings(path, expect={"solver": "euler", "steps": 8})
    assert "steps" not in str(e.value)  # only the mismatching one is named
    with pytest.raises(CouplingsError, match=r"windows: file has \[1, 2\], expected \[1, 2, 4\]"):
        Couplings(path, expect={"windows": [1, 2, 4]})
    with pytest.raises(CouplingsError, match="missing: file has None"):
        Couplings(path, expect={"missing": 1})


def test_cli_refuses_bad_couplings_with_one_line(tmp_path, teacher, capsys):
    path = tmp_path / "c.h5"
    _write(path, _data(), finish=False)
    rc = cli.main(["reflow", "--params", "smoke", "--teacher", str(teacher), "--couplings",
                   str(path), "--out", str(tmp_path / "s")])
    assert rc == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("reflowma:")]
    assert len(err) == 1 and err[0].startswith("reflowma: error: couplings file")
    assert "does not exist (an incomplete .partial file exists)" in err[0]
    assert not (tmp_path / "s" / "student.pt").exists()
