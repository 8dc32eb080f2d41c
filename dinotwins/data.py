"""Datasets behind `--data SPEC`, held as uint8 tensors, and the deterministic, sharded epoch sampler.

Specs (`load_dataset(spec, split)`, split "train" or "test"):
- `folder:PATH`: images (jpg, jpeg, png, webp, bmp; any case) under PATH. When PATH holds only subfolders, each
  subfolder is a class (names sorted -> labels 0..K-1, images found recursively inside); otherwise every image
  under PATH, recursively, is one unlabeled set. Images are converted to RGB with their EXIF orientation applied,
  the shorter side resized to `storage_size` and center-cropped square. Unreadable files are skipped with one
  warning each, never a crash mid-epoch.
  Splits (a decision): when PATH has `train/` and `test/` (or `val/`) subfolders those are the splits; otherwise
  both splits are the whole folder (there is nothing set aside to hold out; evaluation on it is a fit measure).
  Memory: when N * 3 * S * S bytes fit `IN_MEMORY_BUDGET` (2 GB) the folder is decoded once, at load time, by a
  thread pool; beyond that only the paths are kept and `get_batch` decodes each batch (thread pool). A file that
  turns out unreadable then is replaced by a black image, with a warning, so the batch keeps its size.
- `cifar10:PATH`: the CIFAR-10 python batches (data_batch_1..5, test_batch, batches.meta) in PATH or in
  PATH/cifar-10-batches-py. They are pickles, read by a restricted unpickler that can build only numpy arrays
  (and the builtin dicts, lists, bytes and ints around them); anything else in a pickle is refused, never run.
- `fashion-mnist[:PATH]`: the IDX files (optionally gzipped), looked up in PATH, then in
  `FASHION_MNIST_SYSTEM` (Debian's dataset-fashion-mnist), then in `FASHION_MNIST_CACHE`, where torchvision
  downloads them when online. Kept at 28 x 28, one channel: augmentation resizes and expands to RGB.
- `synthetic[:N]`: see synthetic.py; N train images (default 4096) and max(N // 4, 64) test images, made at
  `storage_size` pixels; train and test use different seeds.

`storage_size` (default: `image_size`) is the stored side for folder and synthetic data; CIFAR-10 (32 px) and
Fashion-MNIST (28 px) keep their native size. Data errors a user can cause are a `UserError` naming the input.

What it is not: augmentation (augment.py) or a DataLoader; batches are index tensors from `EpochSampler`,
gathered with `ImageDataset.get_batch`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import warnings
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from dinotwins.errors import UserError
from dinotwins.scenes import CLASSES as SCENES_CLASSES
from dinotwins.scenes import load_scenes
from dinotwins.synthetic import CLASSES as SYNTHETIC_CLASSES
from dinotwins.synthetic import make_synthetic

KINDS = ("folder:PATH", "cifar10:PATH", "fashion-mnist[:PATH]", "synthetic[:N]", "scenes[:N]")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
IN_MEMORY_BUDGET = 2 * 1024**3  # bytes of decoded uint8 images held in memory; larger folders decode per batch
DECODE_THREADS = min(8, os.cpu_count() or 1)  # PIL releases the GIL while decoding
SYNTHETIC_TRAIN_SIZE = 4096
SYNTHETIC_SEEDS = {"train": 0, "test": 1}
FASHION_MNIST_SYSTEM = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CACHE = Path.home() / ".cache" / "dinotwins"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")


@dataclass
class ImageDataset(torch.utils.data.Dataset):
    """A labeled or unlabeled set of square uint8 images, in memory (`images`) or as files decoded per batch."""

    name: str  # the spec it came from, e.g. "fashion-mnist", "folder:/x"
    images: Tensor | None  # uint8 (N, C, S, S), C = 1 or 3, when held decoded in memory
    labels: Tensor | None  # int64 (N,); None when unlabeled
    classes: list[str] | None
    masks: Tensor | None = None  # bool (N, S, S) foreground masks (synthetic only)
    split: str = "train"
    files: list[Path] | None = None  # the images' paths when decoded per batch (large folders)
    storage_size: int = 32  # S, the side of every stored image

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.files or ())

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        """(uint8 (C, S, S), label or -1 when unlabeled)."""
        label = int(self.labels[i]) if self.labels is not None else -1
        if self.images is not None:
            return self.images[i], label
        return _decode_or_blank(self.files[i], self.storage_size), label

    def get_batch(self, indices: Tensor) -> Tensor:
        """uint8 (B, C, S, S) for int64 indices (B,)."""
        if self.images is not None:
            return self.images[indices.to(self.images.device)]
        paths = [self.files[i] for i in indices.tolist()]
        with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
            return torch.stack(list(pool.map(lambda p: _decode_or_blank(p, self.storage_size), paths)))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, S, S) of every image."""
        if self.images is not None:
            return tuple(self.images.shape[1:])
        return (3, self.storage_size, self.storage_size)

    def describe(self) -> str:
        """One line, e.g. 'fashion-mnist train: 60000 images 1x28x28, 10 classes'."""
        shape = "x".join(str(s) for s in self.image_shape)
        kind = f"{len(self.classes)} classes" if self.labels is not None and self.classes else "unlabeled"
        where = "" if self.images is not None else ", decoded per batch"
        return f"{self.name} {self.split}: {len(self)} images {shape}, {kind}{where}"


def load_dataset(spec: str, split: str = "train", *, image_size: int = 32,
                 storage_size: int | None = None) -> ImageDataset:
    """The dataset named by `spec` (see the module docstring), split "train" or "test"."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    size = storage_size or image_size
    if size < 1:
        raise UserError(f"image size must be positive, got {size}")
    kind, _, arg = spec.strip().partition(":")
    if kind == "synthetic":
        return _load_synthetic(spec, arg, split, size)
    if kind == "scenes":
        images, labels, masks = load_scenes(arg, split, size)
        return ImageDataset(spec, images, labels, list(SCENES_CLASSES), masks=masks, split=split, storage_size=size)
    if kind == "fashion-mnist":
        return _load_fashion_mnist(spec, arg, split)
    if kind == "cifar10":
        if not arg:
            raise UserError("cifar10 needs a path: --data cifar10:PATH (the folder holding data_batch_1 ...)")
        return _load_cifar10(spec, Path(arg).expanduser(), split)
    if kind == "folder":
        if not arg:
            raise UserError("folder needs a path: --data folder:PATH")
        return _load_folder(spec, Path(arg).expanduser(), split, size)
    raise UserError(f"unknown data spec {spec!r}; use one of {', '.join(KINDS)}")


class EpochSampler:
    """Index batches for distributed training: each epoch's permutation is a pure function of (seed, epoch),
    cut into global batches of batch_size * world_size; rank r takes the r-th slice of each, so ranks are
    disjoint. The last partial global batch is dropped. `batches(epoch, start_batch)` resumes mid-epoch."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}; raise --batch-size")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside a world of {world_size} processes")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = num_samples // (batch_size * world_size)
        if self.batches_per_epoch == 0:
            total = f" ({batch_size} x {world_size} processes)" if world_size > 1 else ""
            raise UserError(f"batch size {batch_size * world_size}{total} larger than dataset of {num_samples} "
                            f"images; lower --batch-size")
        self._cached: tuple[int, Tensor] | None = None

    def permutation(self, epoch: int) -> Tensor:
        """int64 (num_samples,): epoch's order of the whole dataset, the same on every rank."""
        if self._cached is None or self._cached[0] != epoch:
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            self._cached = (epoch, torch.randperm(self.num_samples, generator=generator))
        return self._cached[1]

    def batch_indices(self, epoch: int, position: int) -> Tensor:
        """int64 (batch_size,): this rank's indices for batch `position` of `epoch`."""
        if not 0 <= position < self.batches_per_epoch:
            raise IndexError(f"batch {position} outside an epoch of {self.batches_per_epoch} batches")
        start = (position * self.world_size + self.rank) * self.batch_size
        return self.permutation(epoch)[start:start + self.batch_size]

    def batches(self, epoch: int, start_batch: int = 0) -> Iterator[Tensor]:
        """This rank's batches of `epoch` from `start_batch` on (resume mid-epoch with the step reached)."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} outside an epoch of {self.batches_per_epoch} batches")
        for position in range(start_batch, self.batches_per_epoch):
            yield self.batch_indices(epoch, position)


def epoch_seed(seed: int, epoch: int) -> int:
    """A 32-bit generator seed for (seed, epoch), by hashing: torch's CPU generator keeps only the low 32 bits of
    a seed, so packing the two numbers side by side would make every epoch ignore the run's seed."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{epoch}".encode(), digest_size=4).digest(), "little")


# ------------------------------------------------------------------------------------------------ synthetic
def _load_synthetic(spec: str, arg: str, split: str, size: int) -> ImageDataset:
    try:
        n_train = int(arg) if arg else SYNTHETIC_TRAIN_SIZE
    except ValueError:
        raise UserError(f"synthetic:N needs a whole number of images, got {arg!r}") from None
    if n_train < 1:
        raise UserError(f"synthetic:N needs at least 1 image, got {n_train}")
    if size < 8:
        raise UserError(f"synthetic images need at least 8 px, got {size}; raise the image size")
    n = n_train if split == "train" else max(n_train // 4, 64)
    images, labels, masks = make_synthetic(n, size, seed=SYNTHETIC_SEEDS[split])
    return ImageDataset(spec, images, labels, list(SYNTHETIC_CLASSES), masks=masks, split=split,
                        storage_size=size)


# ------------------------------------------------------------------------------------------------ fashion-mnist
def _load_fashion_mnist(spec: str, arg: str, split: str) -> ImageDataset:
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


# ------------------------------------------------------------------------------------------------ cifar10
class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10's batches and nothing else: the only globals it will look up are the three numpy
    needs to rebuild an array. Builtin dicts, lists, bytes and ints need no lookup; every other global
    (os.system, builtins.eval, ...) is refused before anything runs."""

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),  # numpy 1.x names, as in the files from the CIFAR site
        ("numpy._core.multiarray", "_reconstruct"),  # numpy 2.x names
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    })

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        if module == "numpy.core.multiarray":  # the numpy 2 home of the same function, without its shim's warning
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def safe_unpickle(path: Path) -> object:
    """The object in pickle file `path`, built by `RestrictedUnpickler` (bytes stay bytes, as in Python 2)."""
    try:
        return RestrictedUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc}); check the file") from None
    except Exception as exc:  # noqa: BLE001 - any failure of an untrusted pickle is the file's fault
        raise UserError(f"{path} is not a plain CIFAR-10 batch ({exc}); refusing to load it") from None


def _load_cifar10(spec: str, root: Path, split: str) -> ImageDataset:
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    if not root.is_dir():
        raise UserError(f"CIFAR-10 folder {root} does not exist; pass the folder holding data_batch_1..5")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    missing = [name for name in names if not (root / name).is_file()]
    if missing:
        raise UserError(f"CIFAR-10 batch {root / missing[0]} not found; pass the folder holding data_batch_1..5 "
                        f"and test_batch")
    data, labels = [], []
    for name in names:
        batch = safe_unpickle(root / name)
        if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
            raise UserError(f"{root / name} has no data/labels entries; is it a CIFAR-10 python batch?")
        array = np.asarray(batch[b"data"])
        if array.dtype != np.uint8 or array.ndim != 2 or array.shape[1] != 3 * 32 * 32 \
                or len(batch[b"labels"]) != len(array):
            raise UserError(f"{root / name} does not hold N x 3072 uint8 images with N labels; is it CIFAR-10?")
        data.append(array.reshape(-1, 3, 32, 32))  # rows are the red, green, blue planes, 32 x 32 each
        labels.extend(int(v) for v in batch[b"labels"])
    classes = [str(i) for i in range(10)]
    if (root / "batches.meta").is_file():
        meta = safe_unpickle(root / "batches.meta")
        if isinstance(meta, dict) and b"label_names" in meta:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
    return ImageDataset(spec, torch.from_numpy(np.concatenate(data)), torch.tensor(labels, dtype=torch.int64),
                        classes, split=split, storage_size=32)


# ------------------------------------------------------------------------------------------------ folders
def _load_folder(spec: str, root: Path, split: str, size: int) -> ImageDataset:
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist; check the path in --data folder:PATH")
    root = _split_folder(root, split)
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    class_dirs = [p for p in entries if p.is_dir()]
    labeled = bool(class_dirs) and not any(_is_image(p) for p in entries)
    if labeled:
        classes: list[str] | None = [d.name for d in class_dirs]
        pairs = [(f, k) for k, d in enumerate(class_dirs) for f in _images_under(d)]
    else:
        classes = None
        pairs = [(f, -1) for f in _images_under(root)]
    if not pairs:
        raise UserError(f"no images ({', '.join(sorted(e[1:] for e in IMAGE_EXTENSIONS))}) found in {root}; "
                        f"point --data folder: at a folder of images")
    files = [f for f, _ in pairs]
    labels = torch.tensor([k for _, k in pairs], dtype=torch.int64) if labeled else None
    if len(files) * 3 * size * size > IN_MEMORY_BUDGET:
        return ImageDataset(spec, None, labels, classes, split=split, files=files, storage_size=size)
    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
        decoded = list(pool.map(lambda p: decode_image(p, size), files))
    for path, image in zip(files, decoded):
        if image is None:
            warnings.warn(f"skipping unreadable image {path}", stacklevel=3)
    keep = [i for i, image in enumerate(decoded) if image is not None]
    if not keep:
        raise UserError(f"none of the {len(files)} images in {root} could be read; check the files")
    images = torch.stack([decoded[i] for i in keep])
    return ImageDataset(spec, images, labels[keep] if labels is not None else None, classes, split=split,
                        storage_size=size)


def _split_folder(root: Path, split: str) -> Path:
    """root/train or root/test (else root/val) when root has train/ and test/ or val/; otherwise root itself."""
    subdirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    held_out = subdirs.get("test") or subdirs.get("val")
    if "train" in subdirs and held_out is not None:
        return subdirs["train"] if split == "train" else held_out
    return root


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if _is_image(p) and not any(
        part.startswith(".") for part in p.relative_to(folder).parts))


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def decode_image(path: Path, size: int) -> Tensor | None:
    """uint8 (3, size, size): RGB, EXIF orientation applied, shorter side resized to `size` (bicubic, PIL's
    antialiasing filter), center-cropped. None when the file cannot be decoded."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale that still covers `size`
            img = ImageOps.exif_transpose(img).convert("RGB")
            img = ImageOps.fit(img, (size, size), Image.Resampling.BICUBIC)
            return torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()
    except Exception:  # noqa: BLE001 - any decoding failure (truncated, not an image, bad EXIF) means "skip it"
        return None


def _decode_or_blank(path: Path, size: int) -> Tensor:
    image = decode_image(path, size)
    if image is None:
        warnings.warn(f"unreadable image {path}: a black image stands in for it", stacklevel=2)
        return torch.zeros(3, size, size, dtype=torch.uint8)
    return image
