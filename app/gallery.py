"""The gallery: the labelled images the app retrieves from and projects, held decoded in memory.

Built from any `dinotwins.data.load_dataset` spec, its test split. With no spec, the first of `candidates` that
loads: the app passes the data the models were trained on (from their metadata), then `scenes` (2000 unseen
objects on unseen backgrounds); `synthetic` is the last resort, with a notice. `key` is a hash of the pixels and
labels, so cached embeddings follow the images themselves, not just the spec's text.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from dinotwins.errors import UserError

DEFAULT_SPECS = ("scenes",)  # tried after the models' own training data
FALLBACK_SPEC = "synthetic"
MAX_GALLERY = 50_000  # images kept (a seeded subsample beyond this): 50k x 96 px RGB is 1.4 GB
MAX_SIZE = 96  # gallery pixels per side at most; models with larger inputs upsample (see gallery_size)


@dataclass(frozen=True, eq=False)
class Gallery:
    spec: str
    images: np.ndarray | None  # uint8 (N, S, S, C), C = 1 or 3; None for a collection's gallery (`dataset`)
    labels: np.ndarray | None  # int64 (N,); None when unlabeled
    classes: list[str] | None
    key: str = field(default="")
    dataset: Any = None  # a collection's images, decoded or rendered one at a time when shown

    def __post_init__(self):
        if not self.key:
            digest = hashlib.sha256(self.images.tobytes())
            if self.labels is not None:
                digest.update(self.labels.astype(np.int64).tobytes())
            object.__setattr__(self, "key", digest.hexdigest()[:32])

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.dataset)

    @property
    def size(self) -> int:
        return int(self.images.shape[1]) if self.images is not None else int(self.dataset.storage_size)

    @property
    def labelled(self) -> bool:
        return self.labels is not None and self.classes is not None

    def image(self, index: int) -> Image.Image:
        """Gallery image `index` as RGB."""
        pixels = self.images[index] if self.images is not None else self.dataset[index][0].permute(1, 2, 0).numpy()
        return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).convert("RGB")

    def label_name(self, index: int) -> str:
        if self.labels is None:
            return "unlabelled"
        label = int(self.labels[index])
        return self.classes[label] if self.classes and 0 <= label < len(self.classes) else str(label)

    def as_dataset(self):
        """The gallery as a `dinotwins` ImageDataset (uint8 (N, C, S, S), a view of the same pixels), so its
        embeddings come from the evaluation's own feature extraction and cache."""
        from dinotwins.data.dataset import ImageDataset

        if self.dataset is not None:
            return self.dataset
        labels = None if self.labels is None else torch.from_numpy(self.labels)
        return ImageDataset(f"gallery:{self.spec}", torch.from_numpy(self.images).permute(0, 3, 1, 2), labels,
                            self.classes, split="test", storage_size=self.size)

    def class_names(self) -> list[str]:
        return list(self.classes) if self.classes else []

    def first_of_each_class(self, limit: int) -> list[int]:
        """Indices of the first image of each class (or the first images), at most `limit`."""
        if self.labels is None:
            return list(range(min(limit, len(self))))
        _, first = np.unique(self.labels, return_index=True)
        return sorted(int(i) for i in first)[:limit]


def collection_gallery(manifest, labels: np.ndarray) -> Gallery:
    """The gallery of an extraction (`dinotwins.collection`): its data and split, nothing decoded until shown
    (a folder decodes, scenes render, one image at a time), its labels from the shards, keyed by the extraction."""
    from dinotwins.data import load_dataset

    dataset = load_dataset(manifest.data, manifest.split, image_size=manifest.model["image_size"], budget=0)
    if len(dataset) != manifest.count:
        raise UserError(f"{manifest.data} {manifest.split} now holds {len(dataset)} images where the extraction "
                        f"has {manifest.count}; extract it again")
    labelled = manifest.classes is not None and bool((labels >= 0).any())
    return Gallery(spec=f"{manifest.data} ({manifest.split})", images=None, labels=labels if labelled else None,
                   classes=manifest.classes if labelled else None, key=manifest.extraction, dataset=dataset)


def gallery_size(model_sizes: list[int]) -> int:
    """Pixels per side to hold the gallery at: the largest model input, capped at `MAX_SIZE`."""
    return min(max(model_sizes, default=32), MAX_SIZE)


def load_gallery(spec: str | None, image_size: int, candidates: list[str] | tuple[str, ...] = DEFAULT_SPECS
                 ) -> tuple[Gallery, str]:
    """(gallery, notice). spec None: the first of `candidates` that loads, else synthetic (with a notice)."""
    from dinotwins.data import load_dataset  # the data module is heavy to import; only the launch needs it

    notice = ""
    if spec is None:
        reasons = []
        for candidate in dict.fromkeys(candidates):
            try:
                dataset = load_dataset(candidate, split="test", image_size=image_size)
                spec = candidate
                break
            except UserError as exc:
                reasons.append(str(exc))
        else:
            notice = f"No gallery data found ({'; '.join(reasons)}); the gallery is the synthetic dataset."
            spec = FALLBACK_SPEC
            dataset = load_dataset(spec, split="test", image_size=image_size)
    else:
        dataset = load_dataset(spec, split="test", image_size=image_size)
    count = len(dataset)
    if count < 2:
        raise UserError(f"gallery {spec} has {count} image(s); retrieval needs at least 2, pass another --gallery")
    indices = np.arange(count)
    if count > MAX_GALLERY:
        indices = np.sort(np.random.default_rng(0).choice(count, MAX_GALLERY, replace=False))
        notice = (notice + " " if notice else "") + f"Gallery {spec}: a seeded sample of {MAX_GALLERY} of {count}."
    images = _uint8_nhwc(dataset, indices)
    labels = None if dataset.labels is None else dataset.labels.numpy()[indices].astype(np.int64)
    classes = list(dataset.classes) if dataset.classes is not None else None
    if labels is not None and classes is None:
        classes = [str(c) for c in range(int(labels.max()) + 1)]
    return Gallery(spec=spec, images=images, labels=labels, classes=classes), notice


def _uint8_nhwc(dataset, indices: np.ndarray, chunk: int = 1024) -> np.ndarray:
    parts = []
    for start in range(0, len(indices), chunk):
        idx = torch.from_numpy(indices[start:start + chunk])
        batch = dataset.images[idx] if dataset.images is not None else dataset.get_batch(idx)
        parts.append(batch.permute(0, 2, 3, 1).contiguous().numpy().astype(np.uint8))  # (B, S, S, C)
    return np.concatenate(parts)
