"""Datasets behind `--data SPEC`, decoded to uint8 tensors, and the deterministic epoch sampler.

Specs:
- `folder:PATH`: class subfolders -> labels (sorted names), a flat or nested folder -> unlabeled. Images are
  converted to RGB (EXIF orientation applied), shorter side resized to the storage size and center-cropped.
  Corrupt files are skipped with one warning each. Splits: if PATH has `train/` and `test/` (or `val/`)
  subfolders they are the splits; otherwise both splits are the whole folder (there is nothing to hold out).
  Folders small enough (under 2 GB decoded) are decoded once into memory; larger ones are decoded per batch.
- `cifar10:PATH`: the python pickle batches, read by a restricted unpickler that can build only the dicts,
  lists and numpy arrays those files contain; anything else in the pickle is refused, never run.
- `fashion-mnist[:PATH]`: IDX files (gzipped or not), kept at 28 x 28 x 1.
- `synthetic[:N]`: see synthetic.py; N train images (default 4096) and max(N // 4, 64) test images.

What it is not: augmentation (augment.py) or batching policy beyond the sampler.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from dinotwins.errors import UserError
from dinotwins.synthetic import CLASSES as SYNTHETIC_CLASSES
from dinotwins.synthetic import make_synthetic

KINDS = ("folder:PATH", "cifar10:PATH", "fashion-mnist[:PATH]", "synthetic[:N]")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
FASHION_MNIST_SYSTEM = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
IN_MEMORY_BUDGET = 2 * 1024**3


@dataclass
class ImageDataset(torch.utils.data.Dataset):
    name: str
    images: Tensor | None  # uint8 (N, C, S, S) when decoded in memory
    labels: Tensor | None  # int64 (N,), None when unlabeled
    classes: list[str] | None
    masks: Tensor | None = None  # bool (N, S, S), synthetic only
    files: list[Path] | None = None  # for folders decoded per batch
    storage_size: int = 32

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.files or [])

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        image = self.get_batch(torch.tensor([i]))[0]
        return image, int(self.labels[i]) if self.labels is not None else -1

    def get_batch(self, indices: Tensor) -> Tensor:
        """uint8 (B, C, S, S) for these indices."""
        if self.images is not None:
            return self.images[indices.to(self.images.device)]
        paths = [self.files[int(i)] for i in indices]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            decoded = list(pool.map(lambda p: _decode(p, self.storage_size), paths))
        size = self.storage_size
        for path, image in zip(paths, decoded):
            if image is None:
                warnings.warn(f"unreadable image {path}: a blank image stands in for it", stacklevel=2)
        return torch.stack([d if d is not None else torch.zeros(3, size, size, dtype=torch.uint8)
                            for d in decoded])

    def describe(self) -> str:
        n = len(self)
        shape = "x".join(str(s) for s in (self.images.shape[1:] if self.images is not None
                                          else (3, self.storage_size, self.storage_size)))
        classes = f", {len(self.classes)} classes" if self.classes else ", unlabeled"
        return f"{self.name}: {n} images {shape}{classes}"


def load_dataset(spec: str, split: str = "train", *, image_size: int = 32,
                 storage_size: int | None = None) -> ImageDataset:
    """Load `spec` (see module docstring) for split 'train' or 'test'."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, got {split!r}")
    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        return _synthetic(spec, arg, split, image_size)
    if kind == "fashion-mnist":
        return _fashion_mnist(spec, arg, split)
    if kind == "cifar10":
        if not arg:
            raise UserError("cifar10 needs a path: --data cifar10:PATH (the folder with data_batch_1 ...)")
        return _cifar10(spec, Path(arg).expanduser(), split)
    if kind == "folder":
        if not arg:
            raise UserError("folder needs a path: --data folder:PATH")
        return _folder(spec, Path(arg).expanduser(), split, storage_size or image_size)
    raise UserError(f"unknown data spec {spec!r}; use one of {', '.join(KINDS)}")


class EpochSampler:
    """Batches of indices: a permutation that is a pure function of (seed, epoch), cut into global batches of
    batch_size * world_size, each rank taking its own disjoint slice; the last partial batch is dropped."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = num_samples // (batch_size * world_size)
        if self.batches_per_epoch == 0:
            raise UserError(f"batch size {batch_size * world_size} (all processes) is larger than the dataset of "
                            f"{num_samples} images; lower --batch-size")
        self._cached: tuple[int, Tensor] | None = None

    def permutation(self, epoch: int) -> Tensor:
        if self._cached is None or self._cached[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._cached = (epoch, torch.randperm(self.num_samples, generator=g))
        return self._cached[1]

    def batch_indices(self, epoch: int, position: int) -> Tensor:
        """This rank's indices for batch `position` of `epoch`."""
        if not 0 <= position < self.batches_per_epoch:
            raise IndexError(f"batch {position} outside an epoch of {self.batches_per_epoch}")
        global_batch = self.batch_size * self.world_size
        start = position * global_batch + self.rank * self.batch_size
        return self.permutation(epoch)[start:start + self.batch_size]

    def batches(self, epoch: int, start_batch: int = 0) -> Iterator[Tensor]:
        for position in range(start_batch, self.batches_per_epoch):
            yield self.batch_indices(epoch, position)


# ----------------------------------------------------------------------------------------------- synthetic
def _synthetic(spec: str, arg: str, split: str, image_size: int) -> ImageDataset:
    try:
        n_train = int(arg) if arg else 4096
    except ValueError:
        raise UserError(f"synthetic:N needs a whole number of images, got {arg!r}") from None
    if n_train < 2:
        raise UserError(f"synthetic:N needs at least 2 images, got {n_train}")
    n = n_train if split == "train" else max(n_train // 4, 64)
    images, labels, masks = make_synthetic(n, image_size, seed=0 if split == "train" else 1)
    return ImageDataset(spec, images, labels, list(SYNTHETIC_CLASSES), masks=masks, storage_size=image_size)


# ----------------------------------------------------------------------------------------------- fashion-mnist
def _fashion_mnist(spec: str, arg: str, split: str) -> ImageDataset:
    prefix = "train" if split == "train" else "t10k"
    tried = []
    for folder in ([Path(arg).expanduser()] if arg else []) + [FASHION_MNIST_SYSTEM]:
        images_path = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
        labels_path = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
        if images_path and labels_path:
            images = torch.from_numpy(read_idx(images_path)).unsqueeze(1)  # (N, 1, 28, 28)
            labels = torch.from_numpy(read_idx(labels_path).astype(np.int64))
            if len(images) != len(labels):
                raise UserError(f"{images_path} and {labels_path} disagree on the number of images")
            return ImageDataset(spec, images, labels, list(FASHION_MNIST_CLASSES), storage_size=28)
        tried.append(str(folder))
    downloaded = _fashion_mnist_download(split)
    if downloaded is not None:
        images, labels = downloaded
        return ImageDataset(spec, images, labels, list(FASHION_MNIST_CLASSES), storage_size=28)
    tried.append("torchvision's downloader (offline?)")
    raise UserError(f"Fashion-MNIST {split} not found in {', '.join(tried)}; pass --data fashion-mnist:PATH or "
                    f"install Debian's dataset-fashion-mnist")


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz", folder / "raw" / stem, folder / "raw" / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (MNIST's format), gzipped or not; a bad or truncated file is a UserError."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"cannot read {path} ({exc}); the file is damaged, fetch it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise UserError(f"{path} is truncated: {len(raw) - header} bytes of data, expected {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _fashion_mnist_download(split: str) -> tuple[Tensor, Tensor] | None:
    try:
        from torchvision.datasets import FashionMNIST

        root = Path.home() / ".cache" / "dinotwins"
        ds = FashionMNIST(str(root), train=split == "train", download=True)
    except Exception:  # noqa: BLE001 - offline or blocked: the caller reports every place tried
        return None
    return ds.data.unsqueeze(1).to(torch.uint8), ds.targets.to(torch.int64)


# ----------------------------------------------------------------------------------------------- cifar10
class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only what CIFAR-10's batches hold: numpy arrays (plus builtin containers, which need no lookup)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")


def safe_unpickle(path: Path) -> object:
    try:
        return _RestrictedUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise UserError(f"{path} is not a plain CIFAR-10 batch ({exc}); refusing to load it") from None


def _cifar10(spec: str, root: Path, split: str) -> ImageDataset:
    if root.is_dir() and (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise UserError(f"CIFAR-10 batch {root / missing[0]} not found; pass the folder holding data_batch_1..5 "
                        f"and test_batch")
    data, labels = [], []
    for name in names:
        batch = safe_unpickle(root / name)
        if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
            raise UserError(f"{root / name} has no data/labels entries; is it a CIFAR-10 python batch?")
        data.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(int(v) for v in batch[b"labels"])
    classes = None
    if (root / "batches.meta").is_file():
        meta = safe_unpickle(root / "batches.meta")
        if isinstance(meta, dict) and b"label_names" in meta:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
    images = torch.from_numpy(np.concatenate(data))
    return ImageDataset(spec, images, torch.tensor(labels, dtype=torch.int64), classes, storage_size=32)


# ----------------------------------------------------------------------------------------------- folders
def _folder(spec: str, root: Path, split: str, storage_size: int) -> ImageDataset:
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist; check the path in --data folder:PATH")
    split_dirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    if "train" in split_dirs and ("test" in split_dirs or "val" in split_dirs):
        root = split_dirs["train"] if split == "train" else split_dirs.get("test", split_dirs.get("val"))
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    labeled = bool(subdirs) and not any(_is_image(p) for p in root.iterdir())
    if labeled:
        classes = [d.name for d in subdirs]
        pairs = [(f, c) for c, d in enumerate(subdirs) for f in sorted(d.rglob("*")) if _is_image(f)]
    else:
        classes = None
        pairs = [(f, -1) for f in sorted(root.rglob("*")) if _is_image(f)]
    if not pairs:
        raise UserError(f"no images (jpg/jpeg/png/webp/bmp) found in {root}; point --data folder: at a folder "
                        f"of images")
    files = [f for f, _ in pairs]
    labels = torch.tensor([c for _, c in pairs], dtype=torch.int64) if labeled else None
    if len(files) * 3 * storage_size**2 > IN_MEMORY_BUDGET:
        return ImageDataset(spec, None, labels, classes, files=files, storage_size=storage_size)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        decoded = list(pool.map(lambda p: _decode(p, storage_size), files))
    keep = [i for i, d in enumerate(decoded) if d is not None]
    for i, d in enumerate(decoded):
        if d is None:
            warnings.warn(f"skipping unreadable image {files[i]}", stacklevel=2)
    if not keep:
        raise UserError(f"none of the {len(files)} images in {root} could be read")
    images = torch.stack([decoded[i] for i in keep])
    return ImageDataset(spec, images, labels[keep] if labels is not None else None, classes,
                        storage_size=storage_size)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _decode(path: Path, size: int) -> Tensor | None:
    """RGB uint8 (3, size, size): EXIF-rotated, shorter side resized to `size`, center-cropped. None if corrupt."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))
            img = ImageOps.exif_transpose(img).convert("RGB")
            img = ImageOps.fit(img, (size, size), Image.BICUBIC)
            return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    except Exception:  # noqa: BLE001 - any decoding failure means "skip this file"
        return None
