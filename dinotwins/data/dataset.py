"""`ImageDataset`: what every data source returns, square uint8 images held in memory or decoded per batch.

Images are (N, C, S, S) uint8, C = 1 or 3, with optional int64 labels, class names and exact boolean object
masks (synthetic and scenes). A large image folder keeps only its files' paths; `get_batch` decodes each batch on a
thread pool (`decode_image`), and a file unreadable by then is replaced by a black image, with a warning, so the
batch keeps its size. A large generated set (scenes beyond the memory budget) keeps a `render` function instead
and makes each batch when asked.

What it is not: a source (see the registry in `dinotwins.data`), augmentation (augment.py) or a DataLoader;
batches are index tensors from `EpochSampler` (sampler.py), gathered with `get_batch`.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

DECODE_THREADS = min(8, os.cpu_count() or 1)  # PIL releases the GIL while decoding


@dataclass
class ImageDataset(torch.utils.data.Dataset):
    """A labeled or unlabeled set of square uint8 images, in memory (`images`) or as files decoded per batch."""

    name: str  # the spec it came from, e.g. "fashion-mnist", "folder:/x"
    images: Tensor | None  # uint8 (N, C, S, S), C = 1 or 3, when held decoded in memory
    labels: Tensor | None  # int64 (N,); None when unlabeled
    classes: list[str] | None
    masks: Tensor | None = None  # bool (N, S, S) foreground masks (synthetic and scenes)
    split: str = "train"
    files: list[Path] | None = None  # the images' paths when decoded per batch (large folders)
    storage_size: int = 32  # S, the side of every stored image
    # Generated sets: int64 indices -> uint8 (B, 3, S, S); with every_rendering=True a paired set's (B, R, 3, S, S).
    render: Callable[..., Tensor] | None = None
    # Generated sets: per image, the int64 (N,) id of each thing it was made from (scenes: its object file and
    # background photograph; -1: none, e.g. a generated background), so evaluation can ask what neighbours share.
    made_from: dict[str, Tensor] | None = None
    # Paired sets: uint8 (N, R, C, S, S), R renderings of each image (scenes-paired: its object on R backgrounds),
    # `images` being rendering 0; training crops an image's views from all R (MultiCrop), evaluation reads `images`.
    # A paired set too large for memory has neither; its `render` makes all R per batch when training asks.
    renderings: Tensor | None = None

    def __len__(self) -> int:
        if self.images is not None:
            return len(self.images)
        return len(self.files) if self.files is not None else len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        """(uint8 (C, S, S), label or -1 when unlabeled)."""
        label = int(self.labels[i]) if self.labels is not None else -1
        if self.images is not None:
            return self.images[i], label
        if self.render is not None:
            return self.render(torch.tensor([i]))[0], label
        return decode_or_blank(self.files[i], self.storage_size), label

    def get_batch(self, indices: Tensor) -> Tensor:
        """uint8 (B, C, S, S) for int64 indices (B,)."""
        if self.images is not None:
            return self.images[indices.to(self.images.device)]
        if self.render is not None:
            return self.render(indices.cpu())
        paths = [self.files[i] for i in indices.tolist()]
        with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
            return torch.stack(list(pool.map(lambda p: decode_or_blank(p, self.storage_size), paths)))

    def training_batch(self, indices: Tensor) -> Tensor:
        """What training crops the views of images `indices` from: uint8 (B, C, S, S), or (B, R, C, S, S) for a
        paired set (all its renderings, held or rendered per batch)."""
        if self.training_images is not None:
            images = self.training_images
            return images[indices.to(images.device)]
        if self.render is not None:
            return self.render(indices.cpu(), every_rendering=True)
        return self.get_batch(indices)

    @property
    def training_images(self) -> Tensor | None:
        """What training crops its views from, when held in memory: `renderings` where there are, else `images`."""
        return self.renderings if self.renderings is not None else self.images

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
        where = "" if self.images is not None else ", made per batch" if self.render else ", decoded per batch"
        return f"{self.name} {self.split}: {len(self)} images {shape}, {kind}{where}"


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


def decode_or_blank(path: Path, size: int) -> Tensor:
    image = decode_image(path, size)
    if image is None:
        warnings.warn(f"unreadable image {path}: a black image stands in for it", stacklevel=2)
        return torch.zeros(3, size, size, dtype=torch.uint8)
    return image
