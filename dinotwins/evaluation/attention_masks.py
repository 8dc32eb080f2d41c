"""Attention maps turned into masks and scored against object masks (the DINO paper's Fig. 3 and Table 7 idea).

`mass_threshold_mask` keeps, per map, the smallest set of patches holding at least `keep_mass` of the map's
mass: sort descending, cumulative sum, keep until the mass is reached (DINO's `visualize_attention.py`
threshold, 0.6 by default). `attention_jaccard` upsamples those patch masks to pixels (nearest) and takes the
Jaccard index (intersection over union) with the object masks, for the mean-of-heads map and for each head.
`mass_on_object` is the share of the mean-of-heads map's mass that lies on the object: a map blind to the object
puts about the object's area there, so it reads against `object_area`. The Jaccard index has no such reference:
a mask of 60 % of the image placed without regard to an object covering a share a of it scores about
0.6a / (0.6 + 0.4a), 0.20 for the scenes test split's a = 0.23. Nor is 1 its top: `object_maps`, the maps a
model looking at the object alone would draw (each patch weighted by how much of it the object covers), keep 60 %
of the object and score about 0.6 (rows.py reports them beside the models). Nor is a flat map the bar to clear
where objects tend to sit in the middle: `prior_maps`, one map for every image (the train split's objects
averaged), knows where objects usually are and nothing of the image at hand. `follows_object` is the measure such a
map scores 0 on: how far the map's centre of mass moves when the object's does. `mask_extent` splits the
mean-of-heads Jaccard into what it is made of: the mask's size and its share on the object.

Pure tensor functions; the model call that produces the maps lives in rows.py.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

KEEP_MASS = 0.6  # DINO's visualisation threshold
_MASS_TOLERANCE = 1e-6  # float32 maps: sums that miss keep_mass by rounding alone still reach it


def mass_threshold_mask(attn: Tensor | np.ndarray, keep_mass: float = KEEP_MASS) -> Tensor:
    """bool (..., h, w): per map, the smallest set of patches holding >= keep_mass of its total mass.

    Maps need not sum to one (each is normalized first). A patch is kept when the mass of the patches ranked
    above it is still short of keep_mass; ties in weight are ranked by position (stable sort).
    """
    if not 0.0 < keep_mass <= 1.0:
        raise ValueError(f"keep_mass must be in (0, 1], got {keep_mass}")
    attn = torch.as_tensor(attn)
    flat = normalized(attn).flatten(-2)  # (..., h*w)
    values, order = flat.sort(dim=-1, descending=True, stable=True)
    mass_above = values.cumsum(dim=-1) - values  # (..., h*w): mass of the higher-ranked patches
    keep_sorted = mass_above < keep_mass - _MASS_TOLERANCE
    mask = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return mask.view(attn.shape)


def upsample_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """bool (..., h, w) -> bool (..., H, W), nearest neighbour (each patch becomes its block of pixels)."""
    lead = mask.shape[:-2]
    flat = mask.reshape(-1, 1, *mask.shape[-2:]).float()  # (M, 1, h, w)
    return F.interpolate(flat, size=size, mode="nearest").bool().view(*lead, *size)


def jaccard(pred: Tensor, target: Tensor) -> Tensor:
    """float (...): |pred & target| / |pred | target| over the last two dims; 1 where both are empty."""
    intersection = (pred & target).flatten(-2).sum(-1).double()
    union = (pred | target).flatten(-2).sum(-1).double()
    return torch.where(union > 0, intersection / union.clamp_min(1), torch.ones_like(union))


def attention_jaccard(attn: Tensor, object_masks: Tensor, keep_mass: float = KEEP_MASS) -> tuple[float, Tensor]:
    """(mean Jaccard of the mean-of-heads masks, per-head mean Jaccard (heads,)) over the images.

    attn (N, heads, h, w) CLS-to-patch weights, object_masks bool (N, H, W). Each head's map is normalized over
    the patches before the heads are averaged, so every head weighs the same in the mean map.
    """
    size = tuple(object_masks.shape[-2:])
    head_masks = upsample_mask(mass_threshold_mask(normalized(attn), keep_mass), size)  # (N, heads, H, W)
    mean_heads = jaccard(mean_heads_mask(attn, size, keep_mass), object_masks).mean().item()
    per_head = jaccard(head_masks, object_masks[:, None]).mean(dim=0)  # (heads,)
    return mean_heads, per_head


def mask_extent(attn: Tensor, object_masks: Tensor, keep_mass: float = KEEP_MASS) -> tuple[float, float]:
    """(mean share of the image the mean-of-heads mask covers, mean share of that mask's pixels on the object).

    What a Jaccard index is made of: a diffuse map needs many patches to reach keep_mass (a large mask, low J
    however well it is centred), a peaked one on the background gives a small mask off the object.
    attn (N, heads, h, w), object_masks bool (N, H, W).
    """
    mask = mean_heads_mask(attn, tuple(object_masks.shape[-2:]), keep_mass)  # (N, H, W)
    area = mask.flatten(-2).double().mean(-1)
    on_object = (mask & object_masks).flatten(-2).sum(-1).double() / mask.flatten(-2).sum(-1).clamp_min(1)
    return area.mean().item(), on_object.mean().item()


def mean_heads_mask(attn: Tensor, size: tuple[int, int], keep_mass: float = KEEP_MASS) -> Tensor:
    """bool (N, H, W): the mass mask of the mean of the heads' normalized maps (N, heads, h, w), at pixel size."""
    return upsample_mask(mass_threshold_mask(normalized(attn).mean(dim=1), keep_mass), size)


def normalized(attn: Tensor) -> Tensor:
    """float64 (..., h, w): each map divided by its total mass."""
    attn = attn.double()
    return attn / attn.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-30)


def patch_cover(object_masks: Tensor, grid: tuple[int, int]) -> Tensor:
    """float64 (N, h, w): the share of each patch of a (h, w) grid that the object covers; masks bool (N, H, W)."""
    return F.adaptive_avg_pool2d(object_masks[:, None].double(), grid)[:, 0]


def object_maps(object_masks: Tensor, grid: tuple[int, int]) -> Tensor:
    """float64 (N, 1, h, w): one-head maps with mass on object patches alone, each patch weighted by the share of
    it the object covers (`patch_cover`); masks bool (N, H, W). What a map that sees the object alone scores."""
    return patch_cover(object_masks, grid)[:, None]


def prior_maps(train_masks: Tensor, grid: tuple[int, int], count: int) -> Tensor:
    """float64 (count, 1, h, w): the same map for every image, the train split's `patch_cover` averaged: where
    objects tend to be, blind to the image at hand. train_masks bool (M, H, W), any size."""
    return patch_cover(train_masks, grid).mean(dim=0)[None, None].expand(count, 1, *grid)


def follows_object(attn: Tensor, object_masks: Tensor) -> float:
    """How far the mean-of-heads map's centre of mass moves when the object's does: the least-squares slope of
    the map's centre on the object's over the images (their covariance over the object centres' variance, x and y
    pooled), in image widths. About 1 for the object masks as maps, 0 for any map that is the same for every image,
    whatever its Jaccard. attn (N, heads, h, w), object_masks bool (N, H, W); images without an object are left
    out (0.0 where fewer than two objects stand apart)."""
    maps = normalized(attn).mean(dim=1)  # (N, h, w)
    objects = object_masks.double()
    present = objects.flatten(-2).sum(-1) > 0
    map_centre, object_centre = _centre(maps[present]), _centre(objects[present])  # (n, 2) each
    map_centre, object_centre = map_centre - map_centre.mean(0), object_centre - object_centre.mean(0)
    spread = (object_centre ** 2).sum()
    return (map_centre * object_centre).sum().div(spread).item() if spread > 1e-12 else 0.0


def _centre(weights: Tensor) -> Tensor:
    """(N, 2): the (y, x) centre of mass of each (h, w) map of weights, as an offset from the image centre in
    image widths (cells at their centres)."""
    h, w = weights.shape[-2:]
    rows = (torch.arange(h, dtype=weights.dtype) + 0.5) / h - 0.5
    cols = (torch.arange(w, dtype=weights.dtype) + 0.5) / w - 0.5
    total = weights.sum(dim=(-2, -1)).clamp_min(1e-30)
    return torch.stack([(weights.sum(-1) * rows).sum(-1) / total, (weights.sum(-2) * cols).sum(-1) / total], dim=1)


def mass_on_object(attn: Tensor, object_masks: Tensor) -> float:
    """Mean over images of the share of the mean-of-heads map's mass on object pixels, each patch's mass spread
    evenly over its pixels. attn (N, heads, h, w), object_masks bool (N, H, W)."""
    covered = patch_cover(object_masks, tuple(attn.shape[-2:]))
    return (normalized(attn).mean(dim=1) * covered).sum(dim=(-2, -1)).mean().item()


def object_area(object_masks: Tensor) -> float:
    """Mean share of the image the object covers: the mass a map blind to the object puts on it."""
    return object_masks.double().mean().item()
