"""Atomic writes: write to a temporary file in the same folder, fsync, then ``os.replace``.

A writer holds an ``flock`` on its temporary file while it writes. A writer killed outright
(SIGKILL, OOM, node failure) leaves its ``.<name>.*.tmp`` behind with no lock held;
``sweep_stale`` removes such files (the next write of the same file does it), and never a file
that a live writer, in this or another process, still holds.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no locks, no sweeping
    fcntl = None


def _tmp_pattern(path: Path) -> str:
    return str(path.parent / f".{glob.escape(path.name)}.*.tmp")


def sweep_stale(path: str | Path) -> list[Path]:
    """Remove temporary files of ``path`` left by killed writers; returns those removed."""
    if fcntl is None:
        return []
    removed = []
    for name in glob.glob(_tmp_pattern(Path(path))):
        try:
            fd = os.open(name, os.O_RDONLY)
        except OSError:
            continue  # gone meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino == os.stat(name).st_ino:  # still the file we locked
                os.unlink(name)
                removed.append(Path(name))
        except OSError:  # locked: a live writer; or already replaced/removed
            pass
        finally:
            os.close(fd)
    return removed


def _locked_tmp(path: Path) -> tuple[int, str]:
    """A new temporary file next to ``path``, flocked by the returned descriptor."""
    while True:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        if fcntl is None:
            return fd, tmp
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:  # a sweep may have removed it between mkstemp and flock: then take another
            if os.fstat(fd).st_ino == os.stat(tmp).st_ino:
                return fd, tmp
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, fsync: bool = True):
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    ``fsync=False`` skips flushing to disk (still atomic for readers; for small files that are
    cheap to regenerate, where thousands of fsyncs would dominate). Temporary files of ``path``
    left by killed writers are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    fd, tmp = _locked_tmp(path)  # the lock (on fd) is held until the file is in place
    try:
        yield Path(tmp)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        os.close(fd)


def nonfinite_paths(obj, prefix: str = "") -> list[str]:
    """Dotted key paths (``nfe.1.mmd_data``, list items by index) of NaN/Infinity floats."""
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [prefix or "(top level)"]
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, list | tuple):
        items = enumerate(obj)
    else:
        return []
    out = []
    for k, v in items:
        out += nonfinite_paths(v, f"{prefix}.{k}" if prefix else str(k))
    return out


def write_json(path: str | Path, obj, sort_keys: bool = True) -> None:
    """Strict JSON (``allow_nan=False``): NaN/Infinity, which strict readers refuse, raise a
    ``ValueError`` naming the file and the key path of each such value; nothing is written."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=sort_keys, allow_nan=False)
    except ValueError as e:
        bad = nonfinite_paths(obj)
        if not bad:
            raise
        raise ValueError(f"{str(path)!r}: non-finite value (NaN/Infinity is not JSON) at "
                         f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}") from e
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text + "\n")


def content_sha256(path: str | Path) -> str:
    """sha256 of a file; of a folder: of its sorted relative file names and their sha256s."""
    path = Path(path)
    if not path.is_dir():
        return sha256(path)
    h = hashlib.sha256()
    for f in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\0{sha256(f)}\n".encode())
    return h.hexdigest()


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
