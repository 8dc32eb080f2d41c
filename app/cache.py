"""On-disk cache of what the app computes per (model weights, gallery, preprocessing): FAISS indexes, UMAP
layouts, scores. (Gallery embeddings are the evaluation's features, cached by it under ROOT/features.)

Layout: `ROOT/<key>/<name>` with a `<name>.sha256` record (`dinotwins.files`). ROOT is `$DINOTWINS_CACHE` or
`~/.cache/dinotwins/app`. The key hashes the weights (`m.weights_hash`), the gallery's pixels and labels, the
preprocessing, and `CACHE_VERSION`.

Formats hold no code: arrays are .npy read with `allow_pickle=False`, indexes go through `faiss.write_index` /
`faiss.read_index`, scores are JSON. Every read checks the record, shape and dtype first; an entry that is
missing, stale, corrupted or half-written is deleted and reported as absent, so the caller rebuilds it - never
served. Writes are `files.write_with_checksum`: atomic, data before record, so a crash or a concurrent app leaves
either a whole entry or none.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from dinotwins.files import read_verified, sidecar, write_with_checksum

CACHE_VERSION = 2  # bump when what is stored, or how it is computed, changes
ENV_VAR = "DINOTWINS_CACHE"


def cache_root() -> Path:
    return Path(os.environ.get(ENV_VAR) or "~/.cache/dinotwins/app").expanduser()


def cache_key(**parts: Any) -> str:
    """Hash of JSON-able parts (weights hash, gallery key, preprocessing, ...) and the cache version."""
    text = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class ArtifactCache:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else cache_root()

    def path(self, key: str, name: str) -> Path:
        return self.root / key / name

    # ----------------------------------------------------------------------------------------- arrays
    def load_array(self, key: str, name: str, shape: tuple[int | None, ...] | None = None,
                   dtype: np.dtype | type | None = None) -> np.ndarray | None:
        """The stored array, or None when absent or not matching (checksum, shape where not None, dtype)."""
        data = self._verified_bytes(key, name)
        if data is None:
            return None
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError):
            return self._discard(key, name)
        if dtype is not None and array.dtype != np.dtype(dtype):
            return self._discard(key, name)
        if shape is not None and (array.ndim != len(shape)
                                  or any(s is not None and s != a for s, a in zip(shape, array.shape))):
            return self._discard(key, name)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            return self._discard(key, name)
        return array

    def save_array(self, key: str, name: str, array: np.ndarray) -> None:
        self._write(key, name, lambda path: np.save(path, np.ascontiguousarray(array), allow_pickle=False))

    # ----------------------------------------------------------------------------------------- FAISS
    def load_index(self, key: str, name: str, ntotal: int, dim: int) -> faiss.Index | None:
        if self._verified_bytes(key, name) is None:
            return None
        try:
            index = faiss.read_index(str(self.path(key, name)))
        except RuntimeError:
            return self._discard(key, name)
        if index.ntotal != ntotal or index.d != dim:
            return self._discard(key, name)
        return index

    def save_index(self, key: str, name: str, index: faiss.Index) -> None:
        self._write(key, name, lambda path: faiss.write_index(index, str(path)))

    # ----------------------------------------------------------------------------------------- JSON
    def load_json(self, key: str, name: str) -> dict[str, Any] | None:
        data = self._verified_bytes(key, name)
        if data is None:
            return None
        try:
            value = json.loads(data)
        except ValueError:
            return self._discard(key, name)
        return value if isinstance(value, dict) else self._discard(key, name)

    def save_json(self, key: str, name: str, value: dict[str, Any]) -> None:
        self._write(key, name, json.dumps(value, sort_keys=True).encode())

    # ----------------------------------------------------------------------------------------- plumbing
    def _verified_bytes(self, key: str, name: str) -> bytes | None:
        path = self.path(key, name)
        data = read_verified(path)
        if data is None and path.exists():
            return self._discard(key, name)
        return data

    def _discard(self, key: str, name: str) -> None:
        path = self.path(key, name)
        for stale in (path, sidecar(path)):
            stale.unlink(missing_ok=True)
        return None

    def _write(self, key: str, name: str, data) -> None:
        path = self.path(key, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_with_checksum(path, data)
