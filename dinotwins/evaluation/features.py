"""Frozen features of a dataset under a model, with an on-disk cache; and raw-pixel features for the baseline.

`extract_features(model, dataset)` runs every image through `preprocess.eval_transform` (resize to the model's size,
1 -> 3 channels, the model's mean/std) and `model.embed` (CLS after the final norm), in batches under
`torch.inference_mode()`, with a tqdm bar on stderr. The result, float32 (N, D), is cached as
`CACHE_DIR/<key>.npy` with a `<key>.npy.sha256` sidecar. The key is the sha256 of the model's weights hash, the
data spec, the split, the stored and model image sizes, the normalization, `PREPROCESSING_VERSION`, and a
fingerprint of the images themselves (their pixels and labels, or their files' paths, sizes and times), so a
`--limit` subset or data changed on disk never meets another set's features.

Cache files are read with `np.load(allow_pickle=False)` after their checksum is checked; a file that is
unreadable, fails its checksum, or has the wrong shape, dtype or non-finite values is rebuilt, never served.
Writes are atomic, data before checksum (`files.write_with_checksum`), so a crash leaves no half entry.

What it is not: no k-NN, probe or scoring (knn.py, probe.py, rows.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dinotwins.data.dataset import ImageDataset
from dinotwins.files import read_verified, write_with_checksum
from dinotwins.models.config import IMAGENET_MEAN, IMAGENET_STD
from dinotwins.models.preprocess import eval_transform
from dinotwins.training.precision import pick_precision

PREPROCESSING_VERSION = 1  # bump when eval_transform or the embedding taken changes
DEFAULT_CACHE_DIR = Path("~/.cache/dinotwins/features")
BATCH_SIZE = 256


def extract_features(model, dataset: ImageDataset, *, cache_dir: str | Path | None = None,
                     batch_size: int = BATCH_SIZE, progress: bool = True) -> np.ndarray:
    """float32 (N, D) embeddings of every image in `dataset` under `model` (a `LoadedModel`), cached on disk."""
    folder = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()
    path = folder / f"{feature_cache_key(model, dataset)}.npy"
    expected_shape = (len(dataset), model.embed_dim)
    cached = _read_cached(path, expected_shape)
    if cached is not None:
        return cached
    features = compute_features(model, dataset, batch_size=batch_size, progress=progress)
    _write_cached(path, features)
    return features


def compute_features(model, dataset: ImageDataset, *, batch_size: int = BATCH_SIZE,
                     progress: bool = True) -> np.ndarray:
    """float32 (N, D) embeddings, no cache (see `embed_batch`)."""
    mean, std = normalization_of(model)
    out = np.empty((len(dataset), model.embed_dim), dtype=np.float32)
    bar = tqdm(total=len(dataset), desc=f"features {model.name} {dataset.split}", unit="img", file=sys.stderr,
               disable=not progress, leave=False)
    with bar:
        for start in range(0, len(dataset), batch_size):
            indices = torch.arange(start, min(start + batch_size, len(dataset)))
            images = dataset.get_batch(indices).to(model.device)  # uint8 (B, C, S, S)
            out[start:start + len(indices)] = embed_batch(model, eval_transform(images, model.image_size, mean, std))
            bar.update(len(indices))
    return out


def embed_batch(model, x: torch.Tensor, precision: str = "auto") -> np.ndarray:
    """float32 (B, D) CLS embeddings of preprocessed images x (B, 3, S, S), the one way every feature is taken
    (the evaluation's datasets, the app's gallery and its queries): under bf16 autocast where the device does bf16
    fast (as in training: ~2.5x faster on this project's CPU, figures within bf16 rounding of fp32). `precision`
    "bf16" or "fp32" overrides that choice (a resumed extraction keeps the one its first part made)."""
    with torch.inference_mode(), feature_autocast(model, precision):
        # contiguous: the CLS row is a view into the (B, tokens, D) output, whose storage would otherwise stay
        # alive with every batch kept (13 MB per 256 images at 64 px: GBs over an extraction shard)
        return model.embed(x).float().contiguous().cpu().numpy()


def raw_pixel_features(dataset: ImageDataset, batch_size: int = 4 * BATCH_SIZE) -> np.ndarray:
    """float32 (N, C*S*S): the stored images flattened, scaled to [0, 1] (the raw-pixel baseline)."""
    out = np.empty((len(dataset), int(np.prod(dataset.image_shape))), dtype=np.float32)
    for start in range(0, len(dataset), batch_size):
        indices = torch.arange(start, min(start + batch_size, len(dataset)))
        out[start:start + len(indices)] = dataset.get_batch(indices).flatten(1).numpy() / 255.0
    return out


def normalization_of(model) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The model's (mean, std), or ImageNet's when the model has none."""
    return tuple(getattr(model, "mean", IMAGENET_MEAN)), tuple(getattr(model, "std", IMAGENET_STD))


def feature_dtype(model, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype features are computed in (None: plain fp32); `precision` as `pick_precision` takes it."""
    return pick_precision(precision, torch.device(model.device))


def feature_autocast(model, precision: str = "auto") -> torch.autocast:
    """The precision context every feature of `model` is computed under (`feature_dtype`; disabled for fp32)."""
    dtype = feature_dtype(model, precision)
    return torch.autocast(model.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def feature_cache_key(model, dataset: ImageDataset) -> str:
    """sha256 hex of everything the features depend on."""
    mean, std = normalization_of(model)
    parts = {"weights": model.weights_hash, "data": dataset.name, "split": dataset.split,
             "stored_size": dataset.image_shape[-1], "image_size": model.image_size, "mean": mean, "std": std,
             "preprocessing": PREPROCESSING_VERSION, "images": dataset_fingerprint(dataset),
             "dtype": str(feature_dtype(model))}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def dataset_fingerprint(dataset: ImageDataset) -> str:
    """sha256 of the images' pixels and labels (or, when decoded per batch, of their files' paths, sizes, times)."""
    digest = hashlib.sha256()
    if dataset.images is not None:
        digest.update(repr(tuple(dataset.images.shape)).encode())
        digest.update(np.ascontiguousarray(dataset.images.cpu().numpy()))
    else:
        for file in dataset.files or ():
            stat = file.stat()
            digest.update(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    if dataset.labels is not None:
        digest.update(np.ascontiguousarray(dataset.labels.cpu().numpy()))
    return digest.hexdigest()


def _read_cached(path: Path, expected_shape: tuple[int, int]) -> np.ndarray | None:
    """The cached array when it exists and passes every check; else None (and a warning when it was bad)."""
    if not path.is_file():
        return None
    try:
        data = read_verified(path)
        if data is None:
            raise ValueError("its .sha256 record is missing or does not match")
        array = np.load(io.BytesIO(data), allow_pickle=False)
        if array.shape != expected_shape or array.dtype != np.float32:
            raise ValueError(f"holds {array.dtype} {array.shape}, expected float32 {expected_shape}")
        if not np.isfinite(array).all():
            raise ValueError("holds NaN or inf")
    except (OSError, ValueError, EOFError) as exc:
        warnings.warn(f"feature cache {path} is unusable ({exc}); recomputing it", stacklevel=3)
        return None
    return array


def _write_cached(path: Path, features: np.ndarray) -> None:
    """The .npy and its checksum record, each atomic, data first (files.write_with_checksum)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, features, allow_pickle=False)
    write_with_checksum(path, buffer.getvalue())
