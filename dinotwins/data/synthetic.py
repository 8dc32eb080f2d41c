"""The procedural `synthetic` dataset: labeled shapes on textured clutter, with exact foreground masks.

What it is: each image holds one object of one of `CLASSES` (its label) at a random position, scale, rotation and
color, on a background of smooth colored noise blobs, stripes and fine grain. The object's boolean mask is exact:
it is the very predicate that paints the object (no antialiasing), so attention maps can be scored against it
(Jaccard). Every shape fits inside its unit circle and the circle is placed inside the image, so no object is
cut by the border. Classes are balanced (counts differ by at most one) and shuffled.

Everything is vectorized over a chunk of images (no per-pixel Python) and deterministic by seed: the same
(n, size, seed) gives identical tensors on every call and machine. Images are made in chunks of `CHUNK`, each
from its own generator seeded from the master seed, so memory stays bounded at large sizes.

What it is not: a benchmark of anything real. It exists for tests, smoke runs and the attention-mask metric.
`synthetic[:N]` (`load`): N train images (default `TRAIN_SIZE`) and max(N // 4, 64) test images, made at the
storage size; train and test use different seeds.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from dinotwins.data import image_count
from dinotwins.data.dataset import ImageDataset
from dinotwins.errors import UserError

CLASSES = ("disk", "square", "triangle", "ring", "cross", "bar")
CHUNK = 1024  # images rendered at once; part of the output's definition (changing it changes the images)
MIN_RADIUS, MAX_RADIUS = 0.15, 0.35  # object half-size as a share of the image side
TRAIN_SIZE = 4096
SEEDS = {"train": 0, "test": 1}

_SQRT3 = math.sqrt(3.0)

# Each shape is a predicate on rotated object coordinates (u, v), where the object's bounding circle is
# u^2 + v^2 <= 1; every shape lies inside that circle.
_SHAPES: tuple[Callable[[Tensor, Tensor], Tensor], ...] = (
    lambda u, v: u**2 + v**2 <= 1.0,  # disk
    lambda u, v: (u.abs() <= 0.7) & (v.abs() <= 0.7),  # square, corners at radius 0.99
    lambda u, v: (v >= -0.5) & (v <= 1.0 - _SQRT3 * u.abs()),  # equilateral triangle, vertices on the circle
    lambda u, v: (u**2 + v**2 <= 1.0) & (u**2 + v**2 >= 0.55**2),  # ring
    lambda u, v: ((u.abs() <= 0.3) & (v.abs() <= 0.95)) | ((v.abs() <= 0.3) & (u.abs() <= 0.95)),  # cross
    lambda u, v: (u.abs() <= 0.93) & (v.abs() <= 0.35),  # bar
)


def load(spec: str, arg: str, split: str, size: int, budget: int = 0) -> ImageDataset:
    n_train = image_count(spec, arg, TRAIN_SIZE)
    if size < 8:
        raise UserError(f"synthetic images need at least 8 px, got {size}; raise the image size")
    n = n_train if split == "train" else max(n_train // 4, 64)
    images, labels, masks = make_synthetic(n, size, seed=SEEDS[split])
    return ImageDataset(spec, images, labels, list(CLASSES), masks=masks, split=split, storage_size=size)


def make_synthetic(n: int, size: int = 32, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """(images uint8 (n, 3, size, size), labels int64 (n,), masks bool (n, size, size)), deterministic by seed."""
    if n < 1 or size < 4:
        raise ValueError(f"make_synthetic needs n >= 1 and size >= 4, got n={n}, size={size}")
    master = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % len(CLASSES))[torch.randperm(n, generator=master)]
    chunk_seeds = torch.randint(0, 2**32, ((n + CHUNK - 1) // CHUNK,), generator=master)  # torch keeps 32 bits
    images = torch.empty(n, 3, size, size, dtype=torch.uint8)
    masks = torch.empty(n, size, size, dtype=torch.bool)
    for i, chunk_seed in enumerate(chunk_seeds.tolist()):
        rows = slice(i * CHUNK, min((i + 1) * CHUNK, n))
        images[rows], masks[rows] = _render(labels[rows], size, torch.Generator().manual_seed(chunk_seed))
    return images, labels.to(torch.int64), masks


def _render(labels: Tensor, size: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """uint8 (n, 3, S, S) images and bool (n, S, S) masks of one object per image, of class `labels`."""
    n = labels.shape[0]
    radius = MIN_RADIUS + (MAX_RADIUS - MIN_RADIUS) * torch.rand(n, generator=g)
    cx = radius + torch.rand(n, generator=g) * (1 - 2 * radius)  # bounding circle inside the image
    cy = radius + torch.rand(n, generator=g) * (1 - 2 * radius)
    angle = 2 * math.pi * torch.rand(n, generator=g)

    centres = (torch.arange(size, dtype=torch.float32) + 0.5) / size  # pixel centres in [0, 1]
    dx = (centres[None, None, :] - cx[:, None, None]) / radius[:, None, None]  # (n, 1, S), object units
    dy = (centres[None, :, None] - cy[:, None, None]) / radius[:, None, None]  # (n, S, 1)
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    u, v = cos * dx + sin * dy, cos * dy - sin * dx  # (n, S, S) rotated coordinates

    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for k, shape in enumerate(_SHAPES):
        chosen = labels == k
        masks[chosen] = shape(u[chosen], v[chosen])

    background = _clutter(n, size, g)
    # Bright objects on darker clutter, dark ones on brighter: every object stands out of what lies under it.
    under = (background * masks[:, None]).sum((1, 2, 3)) / (3 * masks.sum((1, 2)).clamp(min=1))  # (n,)
    color = torch.rand(n, 3, generator=g)
    color = torch.where((under < 0.5)[:, None], 0.65 + 0.35 * color, 0.3 * color)
    shade = 0.9 + 0.1 * torch.rand(n, 1, size, size, generator=g)  # a little texture on the object too
    images = torch.where(masks[:, None], color[:, :, None, None] * shade, background)
    return (images * 255).round_().clamp_(0, 255).to(torch.uint8), masks


def _clutter(n: int, size: int, g: torch.Generator) -> Tensor:
    """(n, 3, S, S) in [0.2, 0.8]: smooth colored noise blobs, faint stripes and fine grain; texture, no object."""
    low = max(size // 6, 2)
    blobs = F.interpolate(torch.rand(n, 3, low, low, generator=g), size=(size, size), mode="bicubic",
                          align_corners=False).clamp_(0, 1)
    freq = 2 + 6 * torch.rand(n, 1, 1, 1, generator=g)  # stripes per image side
    phase = 2 * math.pi * torch.rand(n, 1, 1, 1, generator=g)
    theta = math.pi * torch.rand(n, 1, 1, 1, generator=g)
    coords = torch.arange(size, dtype=torch.float32) / size
    along = torch.cos(theta) * coords[None, None, None, :] + torch.sin(theta) * coords[None, None, :, None]
    stripes = 0.5 + 0.5 * torch.sin(2 * math.pi * freq * along + phase)  # (n, 1, S, S)
    grain = torch.rand(n, 1, size, size, generator=g)
    return 0.2 + 0.6 * (0.6 * blobs + 0.3 * stripes + 0.1 * grain)
