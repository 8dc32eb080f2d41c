"""The procedural `synthetic` dataset: labeled shapes on textured clutter, with exact foreground masks.

Each image holds one object of one of `CLASSES` (its label) at a random position, scale and color, on a
background of smooth colored noise and stripes. The object's boolean mask is exact (the same test that paints
it), so attention maps can be scored against it (Jaccard). Everything is vectorized over the batch and
deterministic by seed: the same (n, size, seed) gives the same tensors on every machine.

Not a benchmark of anything real: it exists for tests, smoke runs and the attention-mask metric.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

CLASSES = ("disk", "square", "triangle", "ring", "cross", "diamond")


def make_synthetic(n: int, size: int = 32, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """(images uint8 (n, 3, size, size), labels int64 (n,), masks bool (n, size, size))."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(CLASSES)
    labels = labels[torch.randperm(n, generator=g)]

    background = _clutter(n, size, g)  # (n, 3, S, S) in [0, 1]
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size  # pixel centres in [0, 1]
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")  # (S, S)
    radius = 0.18 + 0.17 * torch.rand(n, generator=g)  # object half-size, a share of the image
    cx = radius + torch.rand(n, generator=g) * (1 - 2 * radius)
    cy = radius + torch.rand(n, generator=g) * (1 - 2 * radius)
    angle = torch.rand(n, generator=g) * 2 * math.pi
    dx = (xx[None] - cx[:, None, None]) / radius[:, None, None]  # (n, S, S), object units
    dy = (yy[None] - cy[:, None, None]) / radius[:, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy  # rotated coordinates

    shapes = torch.stack([
        dx**2 + dy**2 <= 1.0,  # disk
        (u.abs() <= 0.8) & (v.abs() <= 0.8),  # square
        (v >= -0.6) & (v <= 0.9 - 1.5 * u.abs() * 1.2),  # triangle
        (dx**2 + dy**2 <= 1.0) & (dx**2 + dy**2 >= 0.4),  # ring
        ((u.abs() <= 0.3) & (v.abs() <= 0.95)) | ((v.abs() <= 0.3) & (u.abs() <= 0.95)),  # cross
        (u.abs() + v.abs() <= 1.0),  # diamond
    ])  # (classes, n, S, S)
    masks = shapes[labels, torch.arange(n)]  # (n, S, S)

    color = torch.rand(n, 3, generator=g)
    color = torch.where(color.mean(1, keepdim=True) < 0.5, 0.55 + 0.45 * color, 0.45 * color)  # contrast
    shade = 0.85 + 0.15 * torch.rand(n, 1, size, size, generator=g)  # slight texture on the object
    obj = color[:, :, None, None] * shade
    images = torch.where(masks[:, None], obj, background)
    return (images * 255).round().clamp(0, 255).to(torch.uint8), labels.to(torch.int64), masks


def _clutter(n: int, size: int, g: torch.Generator) -> Tensor:
    """Smooth colored noise plus faint stripes: texture that is not an object."""
    low = max(size // 8, 2)
    noise = torch.rand(n, 3, low, low, generator=g)
    noise = F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    freq = 2 + 6 * torch.rand(n, 1, 1, 1, generator=g)
    phase = 2 * math.pi * torch.rand(n, 1, 1, 1, generator=g)
    theta = math.pi * torch.rand(n, 1, 1, 1, generator=g)
    coords = torch.arange(size, dtype=torch.float32) / size
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    stripes = 0.5 + 0.5 * torch.sin(2 * math.pi * freq * (torch.cos(theta) * xx + torch.sin(theta) * yy) + phase)
    return 0.25 + 0.5 * (0.7 * noise + 0.3 * stripes)
