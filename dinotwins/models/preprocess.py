"""What a backbone reads: images resized to its size and normalized with its mean and std.

`eval_transform` is the one deterministic preprocessing of evaluation, retrieval galleries, extraction and uploaded
photos (`LoadedModel.preprocess`); `normalize` is also the last step of every training view (data/augment.py).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from dinotwins.models.config import IMAGENET_MEAN, IMAGENET_STD
from dinotwins.transfer import constant


def normalize(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """(x - mean) / std per channel, x (B, 3, H, W)."""
    mean_t = constant(tuple(mean), x.device, x.dtype).view(1, -1, 1, 1)
    std_t = constant(tuple(std), x.device, x.dtype).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


def eval_transform(images: Tensor, size: int, mean: tuple[float, ...] = IMAGENET_MEAN,
                   std: tuple[float, ...] = IMAGENET_STD) -> Tensor:
    """uint8 (B, C, H, W), C in {1, 3} -> float (B, 3, size, size): bilinear resize (antialiased when shrinking),
    1 -> 3 channels, normalized. The deterministic transform for evaluation and retrieval galleries."""
    x = images.float() / 255.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return normalize(x.expand(-1, 3, -1, -1), mean, std)
