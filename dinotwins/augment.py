"""Batched multi-crop augmentation on tensors (DINO / BYOL recipe), for whole uint8 batches at once.

What it is: `MultiCrop` turns a uint8 batch (B, C, H, W) into 2 global and N local views. Each view is one
`affine_grid` + `grid_sample` call (random resized crop and horizontal flip for every image at once), then
per-image color jitter (brightness, contrast, saturation, hue as a rotation in YIQ space, applied in that fixed
order), random grayscale, gaussian blur (one grouped separable convolution with per-image kernels) and
solarization. Every random number is drawn on the CPU from the caller's generator and only then moved to the
images' device, so a seed gives the same views on CPU and GPU.

What it is not: no PIL, no per-image Python loop, no dataset logic. Blur sigmas are given as DINO's values
for 224 px crops (0.1 to 2.0) and scaled to the crop size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class AugmentConfig:
    global_size: int = 32  # global crops; must equal the model's image size
    local_size: int = 16  # half the global size, as 96/224 is in DINO
    n_local: int = 6
    global_scale: tuple[float, float] = (0.4, 1.0)  # DINO's default for ViT-S with local crops
    local_scale: tuple[float, float] = (0.05, 0.4)
    flip_p: float = 0.5
    color_jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)  # global view 1, global view 2, local views (BYOL)
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # in pixels at 224 px; scaled by crop size / 224
    solarize_p: tuple[float, float] = (0.0, 0.2)  # global view 1, global view 2
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


class MultiCrop:
    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg

    def __call__(self, images: Tensor, generator: torch.Generator) -> tuple[list[Tensor], list[Tensor]]:
        """uint8 (B, C, H, W), C in {1, 3} -> (2 global views (B,3,G,G), n_local views (B,3,L,L)), normalized."""
        cfg = self.cfg
        x = images.float().div_(255.0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        global_views = [
            self.view(x, cfg.global_size, cfg.global_scale, cfg.blur_p[i], cfg.solarize_p[i], generator)
            for i in range(2)
        ]
        local_views = [self.view(x, cfg.local_size, cfg.local_scale, cfg.blur_p[2], 0.0, generator)
                       for _ in range(cfg.n_local)]
        return global_views, local_views

    def view(self, x: Tensor, size: int, scale: tuple[float, float], blur_p: float, solarize_p: float,
             generator: torch.Generator) -> Tensor:
        cfg, batch, device = self.cfg, x.shape[0], x.device

        def draw(*shape: int) -> Tensor:
            return torch.rand(*shape, generator=generator).to(device)

        out = resized_crop(x, size, crop_boxes(batch, x.shape[-2], x.shape[-1], scale, generator).to(device),
                           draw(batch) < cfg.flip_p)
        jitter = draw(batch) < cfg.color_jitter_p
        factors = 1 + (2 * draw(batch, 3) - 1) * torch.tensor([cfg.brightness, cfg.contrast, cfg.saturation],
                                                              device=device)
        hue_shift = (2 * draw(batch) - 1) * cfg.hue
        out = torch.where(jitter[:, None, None, None], color_jitter(out, factors, hue_shift), out)
        out = torch.where((draw(batch) < cfg.grayscale_p)[:, None, None, None],
                          grayscale(out).expand(-1, 3, -1, -1), out)
        sigma_lo, sigma_hi = (s * size / 224 for s in cfg.blur_sigma)
        sigma = sigma_lo + draw(batch) * (sigma_hi - sigma_lo)
        blur = draw(batch) < blur_p
        if blur_p > 0 and blur.any():
            out = torch.where(blur[:, None, None, None], gaussian_blur(out, sigma), out)
        if solarize_p > 0:
            out = torch.where((draw(batch) < solarize_p)[:, None, None, None], solarize(out), out)
        mean = torch.tensor(cfg.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(cfg.std, device=device).view(1, 3, 1, 1)
        return (out - mean) / std


def crop_boxes(batch: int, height: int, width: int, scale: tuple[float, float],
               generator: torch.Generator) -> Tensor:
    """(B, 4) crop boxes (cx, cy, w, h) in [0, 1] image units: area ~ U(scale), log-uniform aspect in
    (3/4, 4/3), placed uniformly inside the image."""
    area = scale[0] + torch.rand(batch, generator=generator) * (scale[1] - scale[0])
    log_ratio = math.log(3 / 4) + torch.rand(batch, generator=generator) * (math.log(4 / 3) - math.log(3 / 4))
    ratio = torch.exp(log_ratio) * height / width  # aspect of the crop in pixels -> in unit coordinates
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = w / 2 + torch.rand(batch, generator=generator) * (1 - w)
    cy = h / 2 + torch.rand(batch, generator=generator) * (1 - h)
    return torch.stack([cx, cy, w, h], dim=1)


def resized_crop(x: Tensor, size: int, boxes: Tensor, flip: Tensor) -> Tensor:
    """Crop every image to its box and resize to size x size (bilinear), flipping where `flip` is set."""
    cx, cy, w, h = boxes.unbind(1)
    sign = 1 - 2 * flip.float()
    theta = torch.zeros(x.shape[0], 2, 3, device=x.device)
    theta[:, 0, 0] = w * sign
    theta[:, 0, 2] = 2 * cx - 1
    theta[:, 1, 1] = h
    theta[:, 1, 2] = 2 * cy - 1
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], size, size], align_corners=False)
    # Antialias a strong downscale first, as PIL's resize does, so small crops don't alias.
    factor = int(min(x.shape[-1] * w.min().item(), x.shape[-2] * h.min().item()) // (2 * size))
    if factor >= 2:
        x = F.avg_pool2d(x, factor)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def grayscale(x: Tensor) -> Tensor:
    """ITU-R 601 luma, (B, 3, H, W) -> (B, 1, H, W)."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def color_jitter(x: Tensor, factors: Tensor, hue_shift: Tensor) -> Tensor:
    """Brightness, contrast, saturation (factors (B, 3)) then a hue rotation (fraction of a turn, (B,))."""
    b, c, s = (factors[:, i].view(-1, 1, 1, 1) for i in range(3))
    x = (x * b).clamp(0, 1)
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * c + mean).clamp(0, 1)
    gray = grayscale(x)
    x = ((x - gray) * s + gray).clamp(0, 1)
    return rotate_hue(x, hue_shift)


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def rotate_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate chroma in YIQ space by 2*pi*shift per image: a fast, smooth stand-in for HSV hue shifting."""
    to_yiq = _RGB_TO_YIQ.to(x.device)
    to_rgb = torch.linalg.inv(to_yiq)
    angle = 2 * math.pi * shift
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(x.shape[0], 3, 3, device=x.device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    matrix = to_rgb @ rot @ to_yiq  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", matrix, x).clamp(0, 1)


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Per-image gaussian blur with std `sigma` (B,) pixels, as one grouped separable convolution."""
    batch, channels, height, width = x.shape
    radius = max(int(math.ceil(2 * sigma.max().item())), 1)
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-offsets[None, :] ** 2 / (2 * sigma[:, None] ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (B, K)
    kernel = kernel.repeat_interleave(channels, dim=0)  # (B*C, K)
    flat = x.reshape(1, batch * channels, height, width)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="reflect" if radius < min(height, width) else
                 "replicate")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=batch * channels)
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=batch * channels)
    return flat.reshape(batch, channels, height, width)


def solarize(x: Tensor, threshold: float = 0.5) -> Tensor:
    return torch.where(x >= threshold, 1 - x, x)


def eval_transform(images: Tensor, size: int, mean: tuple[float, ...] = AugmentConfig.mean,
                   std: tuple[float, ...] = AugmentConfig.std) -> Tensor:
    """uint8 (B, C, H, W) -> float (B, 3, size, size): resize (bilinear, antialiased), 1 -> 3 channels,
    normalize. The deterministic transform for evaluation and retrieval galleries."""
    x = images.float() / 255.0
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean_t = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t
