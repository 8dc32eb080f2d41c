"""Atomic file writes, and files verified by a sha256 sidecar: the one implementation every writer uses.

- `atomic_write(path, data)`: the data goes to a temporary file in the same folder, is fsynced, then renamed over
  `path` (`os.replace`), and the folder is fsynced: a reader sees the old file or the new one, never half of one.
- `write_with_checksum(path, data)`: `atomic_write`, then the sidecar `<path>.sha256` holding
  `{"size": bytes, "sha256": hex digest}`, written the same way. Data first: a crash between the two leaves a file
  without its record, which readers reject.
- `read_verified(path)`: the bytes when the file matches its record, else None; `checksum_problem(path)` says why
  not, reading the file in chunks (checkpoints can be large).

`data` is bytes or a function that writes the file at the temporary path it is given (`torch.save`, `np.save`,
`faiss.write_index`); the temporary name ends in `path`'s suffix, so writers that append one add nothing.

What it is not: no formats, no caching policy; callers decide what a missing or bad file means.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

Data = bytes | Callable[[Path], None]


def atomic_write(path: Path, data: Data) -> None:
    """Replace `path` with `data` atomically (see the module docstring); the file is readable by all (0o644)."""
    path = Path(path)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(handle, "wb") as f:
            if isinstance(data, bytes):
                f.write(data)
        if not isinstance(data, bytes):
            data(tmp)
        _fsync(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_with_checksum(path: Path, data: Data) -> None:
    """`atomic_write(path, data)`, then its `.sha256` record (size and digest of what landed on disk)."""
    path = Path(path)
    atomic_write(path, data)
    digest = hashlib.sha256(data).hexdigest() if isinstance(data, bytes) else sha256_file(path)
    record = {"size": len(data) if isinstance(data, bytes) else path.stat().st_size, "sha256": digest}
    atomic_write(sidecar(path), json.dumps(record).encode())


def read_verified(path: Path) -> bytes | None:
    """The file's bytes when they match its `.sha256` record; None when the file is absent, or it or the record
    is unreadable, or they disagree."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    return data if checksum_problem(path, data) is None else None


def checksum_problem(path: Path, data: bytes | None = None) -> str | None:
    """None when `path` (or `data`, its bytes already read) matches its `.sha256` record, else the reason."""
    try:
        record = json.loads(sidecar(path).read_text())
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict):
        return "its .sha256 record is missing or unreadable"
    size = len(data) if data is not None else Path(path).stat().st_size
    if size != record.get("size"):
        return f"size {size} bytes, expected {record.get('size')} (truncated?)"
    digest = hashlib.sha256(data).hexdigest() if data is not None else sha256_file(path)
    if digest != record.get("sha256"):
        return "sha256 mismatch (corrupted)"
    return None


def sidecar(path: Path) -> Path:
    """The checksum record of `path`: `<path>.sha256`."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        _fsync(folder)
    except OSError:
        pass
