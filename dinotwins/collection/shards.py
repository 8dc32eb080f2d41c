"""A collection's embeddings on disk: fixed-size shards under one folder, described by a manifest.

Layout of an extraction folder DIR:
- `collection.json`: the manifest: a random `extraction` id, the model (name, weights hash, input size, width, and
  the path it was loaded from), the data spec and split, the image count, the shard size, the stored dtype
  (float16), the precision the embeddings are computed in (bf16 or fp32), the preprocessing version, the class
  names;
- per shard k, holding images [k * shard_size, (k + 1) * shard_size): `shard_0000k.npy` (float16 (n, D) CLS
  embeddings), `.ids.npy` (int64 (n,) image indices), `.labels.npy` (int64 (n,), -1 when unlabeled) and
  `.json` (the extraction id and row count), each with its `.sha256` record (`dinotwins.files`).

A shard counts only when its four files match their records and its `.json` names this extraction: a half-written
shard, a truncated one or one copied from another extraction is never read. Embeddings are memory-mapped
(`np.load(mmap_mode="r")`), so a collection of 100 million vectors opens without reading them.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dinotwins.errors import UserError
from dinotwins.files import atomic_write, checksum_problem, read_verified, write_with_checksum

MANIFEST = "collection.json"
FORMAT = 1


@dataclass(frozen=True)
class Manifest:
    extraction: str  # a random id, written into every shard of this extraction
    model: dict  # name, weights_hash, image_size, embed_dim
    data: str
    split: str
    count: int
    shard_size: int
    dim: int
    classes: list[str] | None
    preprocessing: int
    dtype: str = "float16"
    format: int = FORMAT
    complete: bool = False
    model_path: str = ""  # where the model was loaded from, so the explorer can open it with the collection
    # bf16 | fp32: what the first part timed (`precision.pick_precision`); every later part computes in it, so a
    # resumed extraction is one computation even where a new timing would choose otherwise ("": not recorded)
    precision: str = ""

    @property
    def shards(self) -> int:
        return -(-self.count // self.shard_size)

    def rows(self, k: int) -> range:
        """The image indices of shard k."""
        return range(k * self.shard_size, min(self.count, (k + 1) * self.shard_size))

    def same_extraction(self, other: Manifest) -> bool:
        """Whether `other` describes the same job (everything but the id and completion)."""
        mine, theirs = asdict(self), asdict(other)
        for key in ("extraction", "complete", "model_path", "precision"):
            mine.pop(key), theirs.pop(key)
        return mine == theirs

    @staticmethod
    def new(**fields) -> Manifest:
        return Manifest(extraction=uuid.uuid4().hex, **fields)


def read_manifest(folder: Path) -> Manifest | None:
    """The folder's manifest, None when there is none; a UserError when it is not one this version reads."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        return Manifest(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"{path} is not a collection manifest ({str(exc)[:80]}); extract again into a new "
                        f"folder") from None


def write_manifest(folder: Path, manifest: Manifest) -> None:
    atomic_write(Path(folder) / MANIFEST, json.dumps(asdict(manifest), indent=1).encode())


def shard_files(folder: Path, k: int) -> dict[str, Path]:
    stem = Path(folder) / f"shard_{k:05d}"
    return {"embeddings": stem.with_suffix(".npy"), "ids": Path(f"{stem}.ids.npy"),
            "labels": Path(f"{stem}.labels.npy"), "meta": stem.with_suffix(".json")}


def write_shard(folder: Path, manifest: Manifest, k: int, embeddings: np.ndarray, labels: np.ndarray) -> None:
    """Shard k's files, each atomic with its record; the `.json` that makes it count is written last."""
    files = shard_files(folder, k)
    rows = manifest.rows(k)
    write_with_checksum(files["ids"], _npy(np.arange(rows.start, rows.stop, dtype=np.int64)))
    write_with_checksum(files["labels"], _npy(labels.astype(np.int64)))
    write_with_checksum(files["embeddings"], _npy(embeddings.astype(np.float16)))
    meta = {"extraction": manifest.extraction, "rows": len(rows)}
    write_with_checksum(files["meta"], json.dumps(meta).encode())


def shard_problem(folder: Path, manifest: Manifest, k: int, full: bool = True) -> str | None:
    """None when shard k is whole and this extraction's, else why not (for a one-line error). `full=False` checks
    the sizes against the records instead of every byte's checksum (fast: what opening a large collection does;
    the index builder and a resumed extraction check in full)."""
    files = shard_files(folder, k)
    for name, path in files.items():
        if not path.is_file():
            return f"{path.name} is missing"
        problem = checksum_problem(path) if full or name == "meta" else _size_problem(path)
        if problem:
            return f"{path.name}: {problem}"
    meta = json.loads(read_verified(files["meta"]) or b"{}")
    if meta.get("extraction") != manifest.extraction:
        return f"{files['meta'].name} belongs to another extraction (mixed folders?)"
    if meta.get("rows") != len(manifest.rows(k)):
        return f"{files['meta'].name} holds {meta.get('rows')} rows where {len(manifest.rows(k))} belong"
    return None


class Collection:
    """A complete extraction folder, opened: the manifest, every shard's embeddings memory-mapped, ids and labels.
    Each shard is checked by size (`full_check`: by checksum) and extraction id before it is mapped."""

    def __init__(self, folder: Path, full_check: bool = False):
        self.folder = Path(folder)
        manifest = read_manifest(self.folder)
        if manifest is None:
            raise UserError(f"{self.folder} holds no {MANIFEST}; extract a collection there first "
                            f"(python -m dinotwins.extract MODEL --data SPEC --out {self.folder})")
        if not manifest.complete:
            raise UserError(f"the extraction in {self.folder} is not finished; run the same python -m "
                            f"dinotwins.extract command again to complete it")
        self.manifest = manifest
        self.embeddings: list[np.ndarray] = []
        labels = []
        for k in range(manifest.shards):
            problem = shard_problem(self.folder, manifest, k, full=full_check)
            if problem:
                raise UserError(f"shard {k} of {self.folder} is unusable: {problem}; extract again into this "
                                f"folder to rewrite it")
            files = shard_files(self.folder, k)
            array = np.load(files["embeddings"], mmap_mode="r", allow_pickle=False)
            if array.shape != (len(manifest.rows(k)), manifest.dim):
                raise UserError(f"{files['embeddings']} holds {array.shape} where the manifest says "
                                f"({len(manifest.rows(k))}, {manifest.dim}); extract again")
            self.embeddings.append(array)
            labels.append(np.load(files["labels"], allow_pickle=False))
        self.labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return self.manifest.count

    @property
    def dim(self) -> int:
        return self.manifest.dim

    def vectors(self, start: int, stop: int) -> np.ndarray:
        """float32 (stop - start, D) of images [start, stop), read from the shards."""
        size = self.manifest.shard_size
        parts = []
        for k in range(start // size, (max(stop, start + 1) - 1) // size + 1):
            lo, hi = max(start, k * size) - k * size, min(stop, (k + 1) * size) - k * size
            parts.append(np.asarray(self.embeddings[k][lo:hi], dtype=np.float32))
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

    def chunks(self, chunk: int = 65536):
        """(start, float32 vectors) over the whole collection, `chunk` rows at a time."""
        for start in range(0, len(self), chunk):
            yield start, self.vectors(start, min(len(self), start + chunk))

    def take(self, indices: np.ndarray) -> np.ndarray:
        """float32 (len(indices), D) of the given image indices."""
        size = self.manifest.shard_size
        return np.stack([np.asarray(self.embeddings[i // size][i % size], np.float32) for i in indices]) \
            if len(indices) else np.zeros((0, self.dim), np.float32)


def _size_problem(path: Path) -> str | None:
    try:
        record = json.loads(Path(f"{path}.sha256").read_text())
    except (OSError, ValueError):
        return "its .sha256 record is missing or unreadable"
    size = path.stat().st_size
    return None if isinstance(record, dict) and record.get("size") == size else f"size {size} bytes, not as recorded"


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()
