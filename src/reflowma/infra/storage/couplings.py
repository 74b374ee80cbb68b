"""HDF5 couplings: teacher trajectories sampled at a time grid, per split.

Layout: group ``/<split>`` (``train``, ``test``) with dataset ``states`` ``[N, T, *data]``
(float32, chunked, gzip) at the times of the root attribute ``times`` (``times[0] = 0`` noise z,
``times[-1] = 1`` the teacher's endpoint x). Root attributes record provenance (teacher sha256,
solver, steps, seed, windows, counts) and ``complete`` is set last; the file is written at
``<path>.partial`` and renamed when complete. Generation resumes chunk by chunk from the
``chunks_done`` attribute of each split.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

SPLITS = ("train", "test")


class CouplingsError(ValueError):
    pass


def partial_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".partial")


def _attrs_equal(f, expected: dict) -> list[str]:
    bad = []
    for k, v in expected.items():
        have = f.attrs.get(k)
        if isinstance(have, bytes):
            have = have.decode()
        if have is None or json.dumps(_py(have)) != json.dumps(_py(v)):
            bad.append(f"{k}: file has {_py(have)!r}, expected {v!r}")
    return bad


def _py(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


class CouplingsWriter:
    """Resumable writer. ``expected`` attrs must match an existing partial file to resume."""

    def __init__(self, path, attrs: dict, counts: dict, shape, chunk_size: int):
        self.path, self.tmp = Path(path), partial_path(path)
        self.attrs, self.counts, self.chunk = attrs, counts, chunk_size
        T = len(attrs["times"])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.tmp.exists():
            try:
                f = h5py.File(self.tmp, "a")
            except OSError:
                os.unlink(self.tmp)  # unreadable partial file: start over
                f = None
            if f is not None and _attrs_equal(f, attrs):
                f.close()
                os.unlink(self.tmp)  # made with other settings: start over
                f = None
        else:
            f = None
        if f is None:
            f = h5py.File(self.tmp, "w")
            for k, v in attrs.items():
                f.attrs[k] = v
            f.attrs["complete"] = False
            for split, n in counts.items():
                g = f.create_group(split)
                g.create_dataset("states", shape=(n, T, *shape), dtype="f4",
                                 chunks=(min(chunk_size, n), T, *shape), compression="gzip")
                g.attrs["chunks_done"] = 0
            f.flush()
        self.f = f

    def n_chunks(self, split: str) -> int:
        return -(-self.counts[split] // self.chunk)

    def chunks_done(self, split: str) -> int:
        return int(self.f[split].attrs["chunks_done"])

    def write_chunk(self, split: str, index: int, states: np.ndarray) -> None:
        if index != self.chunks_done(split):
            raise CouplingsError(f"chunk {index} of {split} written out of order")
        lo = index * self.chunk
        self.f[split]["states"][lo: lo + states.shape[0]] = states
        self.f.flush()
        self.f[split].attrs["chunks_done"] = index + 1
        self.f.flush()

    def finish(self) -> Path:
        for split in self.counts:
            if self.chunks_done(split) != self.n_chunks(split):
                raise CouplingsError(f"{split} is incomplete at finish")
        self.f.attrs["complete"] = True
        self.f.flush()
        self.f.close()
        with open(self.tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(self.tmp, self.path)
        return self.path

    def close(self):
        if self.f.id.valid:
            self.f.close()


class Couplings:
    """Reader that refuses incomplete or mismatching files."""

    def __init__(self, path, expect: dict | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            hint = " (an incomplete .partial file exists)" if partial_path(path).exists() else ""
            raise CouplingsError(f"couplings file {str(path)!r} does not exist{hint}")
        try:
            with h5py.File(self.path, "r") as f:
                self.attrs = {k: _py(v) for k, v in f.attrs.items()}
                if not self.attrs.get("complete", False):
                    raise CouplingsError(f"couplings file {str(path)!r} is incomplete "
                                         "(its 'complete' flag is not set): regenerate it")
                bad = _attrs_equal(f, expect or {})
                if bad:
                    raise CouplingsError(f"couplings file {str(path)!r} does not match: "
                                         + "; ".join(bad))
                self.counts = {s: f[s]["states"].shape[0] for s in SPLITS if s in f}
        except OSError as e:
            raise CouplingsError(f"couplings file {str(path)!r} is unreadable or truncated: "
                                 f"{str(e).splitlines()[0][:200]}") from None
        self.times = [float(t) for t in self.attrs["times"]]

    def states(self, split: str, time_idx=None, n: int | None = None) -> np.ndarray:
        """``[N, T', *data]`` at the given time indices (all by default), first n rows."""
        with h5py.File(self.path, "r") as f:
            ds = f[split]["states"]
            rows = slice(0, n) if n is not None else slice(None)
            arr = ds[rows]
        return arr if time_idx is None else arr[:, list(time_idx)]
