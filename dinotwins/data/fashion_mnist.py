"""The `fashion-mnist[:PATH]` source: Fashion-MNIST's IDX files (optionally gzipped), 28 x 28, one channel.

The files are looked up in PATH, then in `FASHION_MNIST_SYSTEM` (Debian's dataset-fashion-mnist), then in
`FASHION_MNIST_CACHE`, where torchvision downloads them when online. Images are kept at 28 x 28, one channel:
augmentation resizes and expands to RGB.
"""

from __future__ import annotations

import gzip
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

from dinotwins.data.dataset import ImageDataset
from dinotwins.errors import UserError

FASHION_MNIST_SYSTEM = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CACHE = Path.home() / ".cache" / "dinotwins"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")


def load(spec: str, arg: str, split: str, size: int, budget: int = 0) -> ImageDataset:
    """Fashion-MNIST keeps its native 28 px whatever `size` is asked for."""
    prefix = "train" if split == "train" else "t10k"
    given = [Path(arg).expanduser()] if arg else []
    for folder in given + [FASHION_MNIST_SYSTEM, _torchvision_raw_folder()]:
        found = _fashion_mnist_files(folder, prefix)
        if found is not None:
            if given and folder != given[0]:
                warnings.warn(f"no Fashion-MNIST IDX files in {given[0]}; using {folder}", stacklevel=3)
            return _fashion_mnist_dataset(spec, split, *found)
    if _download_fashion_mnist():
        found = _fashion_mnist_files(_torchvision_raw_folder(), prefix)
        if found is not None:
            return _fashion_mnist_dataset(spec, split, *found)
    places = [f"{given[0]} (from the spec)"] if given else []
    places += [str(FASHION_MNIST_SYSTEM), f"a torchvision download into {FASHION_MNIST_CACHE} (offline?)"]
    raise UserError(f"Fashion-MNIST {split} files ({prefix}-images-idx3-ubyte[.gz]) not found in "
                    f"{'; '.join(places)}; pass --data fashion-mnist:PATH or install Debian's dataset-fashion-mnist")


def _torchvision_raw_folder() -> Path:
    return FASHION_MNIST_CACHE / "FashionMNIST" / "raw"


def _fashion_mnist_files(folder: Path, prefix: str) -> tuple[Path, Path] | None:
    images = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
    labels = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
    return (images, labels) if images is not None and labels is not None else None


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz", folder / "raw" / stem, folder / "raw" / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _fashion_mnist_dataset(spec: str, split: str, images_path: Path, labels_path: Path) -> ImageDataset:
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if len(images) != len(labels):
        raise UserError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels; "
                        f"fetch matching files")
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise UserError(f"{labels_path} has label {labels.max()}; Fashion-MNIST labels are 0-9")
    return ImageDataset(spec, torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                        list(FASHION_MNIST_CLASSES), split=split, storage_size=images.shape[-1])


def read_idx(path: Path, ndim: int | None = None) -> np.ndarray:
    """The uint8 array in an IDX file (MNIST's format), gzipped when the name ends in .gz. A file that is not
    IDX of unsigned bytes, has another rank than `ndim`, or is truncated is a UserError naming it."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"cannot read {path} ({exc}); the file is damaged, fetch it again") from None
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise UserError(f"{path} is not an IDX file of unsigned bytes (bad magic number); fetch it again")
    rank = raw[3]
    if ndim is not None and rank != ndim:
        raise UserError(f"{path} holds a {rank}-d array where a {ndim}-d one was expected; check the file names")
    header = 4 + 4 * rank
    if len(raw) < header:
        raise UserError(f"{path} is truncated inside its header; fetch it again")
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(rank)]
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise UserError(f"{path} is truncated or padded: {len(raw) - header} bytes of data where {dims} needs "
                        f"{expected}; fetch it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _download_fashion_mnist() -> bool:
    """Fetch the raw IDX files into FASHION_MNIST_CACHE with torchvision; False when that fails (offline)."""
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(FASHION_MNIST_CACHE), train=True, download=True)
        return True
    except Exception:  # noqa: BLE001 - offline, blocked or no torchvision: the caller lists every place tried
        return False
