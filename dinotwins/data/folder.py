"""The `folder:PATH` source: image files (jpg, jpeg, png, webp, bmp; any case) under PATH.

When PATH holds only subfolders, each subfolder is a class (names sorted -> labels 0..K-1, images found recursively
inside); otherwise every image under PATH, recursively, is one unlabeled set. Images are converted to RGB with their
EXIF orientation applied, the shorter side resized to the storage size and center-cropped square
(`dataset.decode_image`). Unreadable files are skipped with one warning each, never a crash mid-epoch.

Splits (a decision): when PATH has `train/` and `test/` (or `val/`) subfolders those are the splits; otherwise both
splits are the whole folder (there is nothing set aside to hold out; evaluation on it is a fit measure).

Memory: when N * 3 * S * S bytes fit the budget (`IN_MEMORY_BUDGET`, 2 GB, unless the caller gives another) the
folder is decoded once, at load time, by a thread pool; beyond that only the paths are kept and
`ImageDataset.get_batch` decodes each batch.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from dinotwins.data.dataset import DECODE_THREADS, ImageDataset, decode_image
from dinotwins.errors import UserError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
IN_MEMORY_BUDGET = 2 * 1024**3  # bytes of decoded uint8 images held in memory; larger folders decode per batch


def load(spec: str, arg: str, split: str, size: int, budget: int | None = None) -> ImageDataset:
    if not arg:
        raise UserError("folder needs a path: --data folder:PATH")
    root = Path(arg).expanduser()
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
    if len(files) * 3 * size * size > (IN_MEMORY_BUDGET if budget is None else budget):
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
