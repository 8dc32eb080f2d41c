"""Batched multi-crop augmentation on tensors, following DINO's recipe (Caron et al. 2021, after BYOL).

What it is: `MultiCrop` turns a uint8 batch (B, C, H, W), C = 1 or 3, into 2 global and `n_local` local views.
For every image and view at once (the views of one size are stacked into one batch, so a call runs each step
twice: once for the global views, once for the local ones):
1. random resized crop + horizontal flip as ONE `affine_grid` + `grid_sample` (bilinear, align_corners=False):
   area ~ U(scale) of the image, aspect ratio log-uniform in `ratio`, the box clamped inside the image (where
   torchvision retries and falls back to a centre crop, we shrink the box to fit: no retries, no Python loop);
   a strong downscale is shrunk first with an antialiased resize so small views of large images do not alias;
2. 1-channel input expanded to 3 channels;
3. color jitter with probability `color_jitter_p`: brightness, contrast, saturation, then hue, always in that
   fixed order (torchvision shuffles the order; we don't, to keep one code path), hue as a rotation of the
   chroma plane in YIQ space (smooth and cheap, close to an HSV hue shift);
4. grayscale with probability `grayscale_p` (ITU-R 601 luma);
5. gaussian blur, a per-image sigma, one grouped separable convolution for the whole batch;
6. solarization (x -> 1 - x where x >= 0.5), global view 2 only by default;
7. normalization with mean / std; float32 out.
Given R renderings of each image (B, R, C, H, W: the same object on other backgrounds), view v of each size is
cropped from rendering v mod R, with the same random parameters as from a plain batch.

Blur sigma: DINO draws sigma in (0.1, 2.0) pixels for 224 px global crops and uses the same pixel sigma for its
96 px local crops. We scale that range by global_size / 224 for every view, which keeps the blur the same share of
the image as in DINO (at 32 px: sigma in (0.014, 0.29) px, so blur is mild, as it is relatively in the paper).

Every random number is drawn on the CPU from the caller's `torch.Generator` (`sample_view_params`: one table of
per-image parameters per view size) and only then moved to the images' device, in one copy: a seed gives the
same views on CPU and GPU (equal up to float rounding), and the GPU never waits on a decision.

What it is not: no PIL, no per-image Python loop, no dataset or sampling logic (dataset.py, sampler.py); its
config dataclass is in augment_config.py; the deterministic resize + normalize of evaluation and retrieval is
`models/preprocess.eval_transform`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from dinotwins.data.augment_config import AugmentConfig
from dinotwins.models.preprocess import normalize
from dinotwins.transfer import constant, to_device


# Columns of the per-image parameter table made by `sample_view_params` (booleans are 0.0 / 1.0).
(BOX_CX, BOX_CY, BOX_W, BOX_H, FLIP, JITTER, BRIGHTNESS, CONTRAST, SATURATION, HUE, GRAY, SIGMA, BLUR,
 SOLARIZE) = range(14)
N_PARAMS = 14


class MultiCrop:
    """Callable: uint8 batch -> (global views, local views), the random parameters drawn from a CPU generator.
    Views of one size are made together, stacked view-major (row v * B + b is view v of image b)."""

    def __init__(self, cfg: AugmentConfig):
        cfg.validate()
        self.cfg = cfg

    def __call__(self, images: Tensor, generator: torch.Generator) -> tuple[list[Tensor], list[Tensor]]:
        """uint8 (B, C, H, W), C in {1, 3}, any device -> (2 x float (B, 3, G, G), n_local x float (B, 3, L, L)),
        normalized, on the images' device. Given R renderings of each image, (B, R, C, H, W), view v of each size
        is cropped from rendering v mod R (paired scenes: the same object on other backgrounds)."""
        channels = images.shape[-3] if images.dim() in (4, 5) else 0
        if channels not in (1, 3):
            raise ValueError(f"MultiCrop expects (B, [R,] 1 or 3, H, W) images, got shape {tuple(images.shape)}")
        cfg = self.cfg
        x = images.float().div_(255.0)
        global_views = self.views(x, cfg.global_size, cfg.global_scale, cfg.blur_p[:2], cfg.solarize_p, generator)
        if cfg.n_local == 0:
            return list(global_views.chunk(2)), []
        local_views = self.views(x, cfg.local_size, cfg.local_scale, (cfg.blur_p[2],) * cfg.n_local,
                                 (0.0,) * cfg.n_local, generator)
        return list(global_views.chunk(2)), list(local_views.chunk(cfg.n_local))

    def views(self, x: Tensor, size: int, scale: tuple[float, float], blur_p: tuple[float, ...],
              solarize_p: tuple[float, ...], generator: torch.Generator) -> Tensor:
        """len(blur_p) views of float images x (B, C, H, W), or (B, R, C, H, W) renderings, in [0, 1], with those
        blur and solarize probabilities: float (V * B, 3, size, size), normalized."""
        cfg = self.cfg
        batch, (height, width) = x.shape[0], x.shape[-2:]
        table = sample_view_params(cfg, batch, height, width, scale, blur_p, solarize_p, generator)  # (V*B, 14)
        # Decided on the CPU so a GPU never waits: the antialias factor, the blur radius, which steps run at all.
        downscale = int(min(width * float(table[:, BOX_W].min()), height * float(table[:, BOX_H].min())) // size)
        radius = blur_radius(table[:, SIGMA])
        runs = {column: bool(table[:, column].any()) for column in (JITTER, GRAY, BLUR, SOLARIZE)}
        table = to_device(table, x.device)

        def chosen(column: int) -> Tensor:
            return table[:, column] > 0.5

        boxes, flip = table[:, BOX_CX:BOX_H + 1], chosen(FLIP)
        if x.dim() == 4:
            out = resized_crop(x, size, boxes, flip, downscale)
        else:  # view v from rendering v mod R
            rows = [slice(v * batch, (v + 1) * batch) for v in range(len(blur_p))]
            out = torch.cat([resized_crop(x[:, v % x.shape[1]], size, boxes[r], flip[r], downscale)
                             for v, r in enumerate(rows)])
        out = out.expand(-1, 3, -1, -1)  # (V*B, 3, size, size); a no-op for RGB
        if runs[JITTER]:
            out = _where(chosen(JITTER), color_jitter(out, table[:, BRIGHTNESS:SATURATION + 1], table[:, HUE]), out)
        if runs[GRAY]:
            out = _where(chosen(GRAY), grayscale(out).expand(-1, 3, -1, -1), out)
        if runs[BLUR]:
            out = _where(chosen(BLUR), gaussian_blur(out, table[:, SIGMA], radius), out)
        if runs[SOLARIZE]:
            out = _where(chosen(SOLARIZE), solarize(out), out)
        return normalize(out, cfg.mean, cfg.std)


def sample_view_params(cfg: AugmentConfig, batch: int, height: int, width: int, scale: tuple[float, float],
                       blur_p: tuple[float, ...], solarize_p: tuple[float, ...],
                       generator: torch.Generator) -> Tensor:
    """(V * B, 14) CPU table of every random choice for V = len(blur_p) views of B images of H x W (columns BOX_CX
    ... SOLARIZE above), view-major. All of it comes from one (V * B, 14) uniform draw from `generator`."""
    views = len(blur_p)
    uniform = torch.rand(views * batch, N_PARAMS, generator=generator)
    per_row = torch.tensor([blur_p, solarize_p], dtype=torch.float32).repeat_interleave(batch, dim=1)  # (2, V*B)
    lo, hi = (s * cfg.global_size / 224 for s in cfg.blur_sigma)
    spread = torch.tensor([cfg.brightness, cfg.contrast, cfg.saturation])
    table = torch.empty_like(uniform)
    table[:, BOX_CX:BOX_H + 1] = crop_boxes(uniform[:, BOX_CX:BOX_H + 1], height, width, scale, cfg.ratio)
    table[:, FLIP] = (uniform[:, FLIP] < cfg.flip_p).float()
    table[:, JITTER] = (uniform[:, JITTER] < cfg.color_jitter_p).float()
    table[:, BRIGHTNESS:SATURATION + 1] = (1 + (2 * uniform[:, BRIGHTNESS:SATURATION + 1] - 1) * spread).clamp(min=0)
    table[:, HUE] = (2 * uniform[:, HUE] - 1) * cfg.hue  # turns
    table[:, GRAY] = (uniform[:, GRAY] < cfg.grayscale_p).float()
    table[:, SIGMA] = lo + uniform[:, SIGMA] * (hi - lo)  # pixels
    table[:, BLUR] = (uniform[:, BLUR] < per_row[0]).float()
    table[:, SOLARIZE] = (uniform[:, SOLARIZE] < per_row[1]).float()
    return table


def _where(chosen: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Per image: a where chosen (N,) else b."""
    return torch.where(chosen[:, None, None, None], a, b)


def crop_boxes(uniform: Tensor, height: int, width: int, scale: tuple[float, float],
               ratio: tuple[float, float]) -> Tensor:
    """(N, 4) crop boxes (cx, cy, w, h) in image units [0, 1] from (N, 4) U(0, 1) draws: area ~ U(scale),
    pixel aspect w/h log-uniform in `ratio`, sides clamped to the image, centre uniform where the box fits."""
    area = scale[0] + uniform[:, 0] * (scale[1] - scale[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + uniform[:, 1] * (log_hi - log_lo)) * (height / width)  # w/h in image units
    w = torch.sqrt(area * aspect).clamp(max=1.0)
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = w / 2 + uniform[:, 2] * (1 - w)
    cy = h / 2 + uniform[:, 3] * (1 - h)
    return torch.stack([cx, cy, w, h], dim=1)


def resized_crop(x: Tensor, size: int, boxes: Tensor, flip: Tensor, downscale: int = 1) -> Tensor:
    """V views of each image of x (B, C, H, W): boxes (V * B, 4) and flip (V * B,), view-major, give float
    (V * B, C, size, size), each box resized bilinearly, mirrored left-right where flip is set. One affine grid
    and one grid_sample for all views: the V grids of an image are stacked along the output's height, so x is
    never copied V times. With downscale >= 2 (every box at least that many times the output) x is first shrunk
    by that factor with an antialiased resize, as PIL filters a strong downscale; boxes are fractions of the
    image, so the grids need no change."""
    batch, channels = x.shape[:2]
    views = boxes.shape[0] // batch
    cx, cy, w, h = boxes.unbind(1)
    theta = torch.zeros(views * batch, 2, 3, device=x.device, dtype=x.dtype)  # output [-1, 1] -> input [-1, 1]
    theta[:, 0, 0] = torch.where(flip, -w, w)
    theta[:, 0, 2] = 2 * cx - 1
    theta[:, 1, 1] = h
    theta[:, 1, 2] = 2 * cy - 1
    grid = F.affine_grid(theta, [views * batch, channels, size, size], align_corners=False)  # (V*B, S, S, 2)
    grid = grid.view(views, batch, size, size, 2).transpose(0, 1).reshape(batch, views * size, size, 2)
    if downscale >= 2:
        x = F.interpolate(x, size=(x.shape[-2] // downscale, x.shape[-1] // downscale), mode="bilinear",
                          align_corners=False, antialias=True)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)  # (B, C, V*S, S)
    return out.view(batch, channels, views, size, size).permute(2, 0, 1, 3, 4).reshape(-1, channels, size, size)


def grayscale(x: Tensor) -> Tensor:
    """ITU-R 601 luma: (B, 3, H, W) -> (B, 1, H, W)."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def color_jitter(x: Tensor, factors: Tensor, hue_shift: Tensor) -> Tensor:
    """Brightness, contrast, saturation by factors (B, 3), then a hue rotation by hue_shift (B,) turns; in [0, 1].
    Contrast blends with the image's mean luma and saturation with each pixel's luma, as torchvision does."""
    brightness, contrast, saturation = (factors[:, i].view(-1, 1, 1, 1) for i in range(3))
    x = (x * brightness).clamp(0, 1)
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean).clamp(0, 1)
    luma = grayscale(x)
    x = ((x - luma) * saturation + luma).clamp(0, 1)
    return rotate_hue(x, hue_shift)


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                           dtype=torch.float64)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)
_MATRICES = {name: tuple(map(tuple, matrix.tolist()))  # hashable, for `constant`
             for name, matrix in (("rgb_to_yiq", _RGB_TO_YIQ), ("yiq_to_rgb", _YIQ_TO_RGB))}


def rotate_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate each image's chroma (I, Q) by 2 pi shift (B,) radians in YIQ space; luma is kept; in [0, 1]."""
    angle = 2 * math.pi * shift.to(torch.float64)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(angle), torch.ones_like(angle)
    rotation = torch.stack([one, zero, zero, zero, cos, -sin, zero, sin, cos], dim=1).view(-1, 3, 3)
    to_rgb, to_yiq = (constant(_MATRICES[name], x.device, torch.float64) for name in ("yiq_to_rgb", "rgb_to_yiq"))
    matrix = (to_rgb @ rotation @ to_yiq).to(x.dtype)  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", matrix, x).clamp(0, 1)


def blur_radius(sigma: Tensor) -> int:
    """Kernel radius covering 3 standard deviations of the widest blur in sigma (B,) pixels, at least 1."""
    return max(math.ceil(3 * float(sigma.max())), 1)


def gaussian_blur(x: Tensor, sigma: Tensor, radius: int | None = None) -> Tensor:
    """Blur each image of x (B, C, H, W) with its own std sigma (B,) in pixels (kernel radius: `blur_radius`
    unless given): one grouped separable convolution for the whole batch, edges reflected."""
    batch, channels, height, width = x.shape
    radius = blur_radius(sigma) if radius is None else radius
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-offsets[None, :] ** 2 / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))  # (B, K)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)  # (B*C, K)
    flat = x.reshape(1, batch * channels, height, width)
    mode = "reflect" if radius < min(height, width) else "replicate"
    flat = F.pad(flat, (radius, radius, radius, radius), mode=mode)
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=batch * channels)  # along width
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=batch * channels)  # along height
    return flat.view(batch, channels, height, width)


def solarize(x: Tensor, threshold: float = 0.5) -> Tensor:
    """Invert values at or above threshold (PIL's ImageOps.solarize at 128 on uint8 images)."""
    return torch.where(x >= threshold, 1 - x, x)
