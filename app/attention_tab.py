"""Attention tab: what each model's last-layer CLS token attends to, per head, on one image.

One row per model: the input as the model sees it (square, its own size), each head's CLS-to-patch attention
as a heat map over the image, the mean over heads, and the mass-threshold mask of the mean map (DINO paper,
Fig. 3: the smallest set of patches holding at least `keep_mass` of the attention). Beside every map: its
entropy in bits (log2 of the patch count = uniform attention; lower = more focused).

Maps are shown in units of "x uniform" (attention x number of patches, so 1 = uniform attention): models with
different patch grids become comparable, and ONE colour scale (vmin 0, vmax the largest value over every map of
every model) is shared by all rows. Attention is renormalized over the patches first (the CLS token's share of
its own attention is dropped), as in DINO's visualize_attention.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from plotly.colors import hex_to_rgb, sequential

from app.models import ModelEntry

DEFAULT_KEEP_MASS = 0.6  # DINO paper, Fig. 3
TILE = 128  # px per map
CAPTION = 18  # px of text band under each map
HEAT_ALPHA = 0.6  # share of the heat map in an overlay; the rest is the image
MASK_DIM = 0.2  # brightness left to patches outside the mask


def _lut(colors: list[str], n: int = 256) -> np.ndarray:
    """(n, 3) uint8 colour table interpolated from a plotly colour scale."""
    stops = np.array([hex_to_rgb(c) for c in colors], dtype=np.float64)
    positions = np.linspace(0, 1, len(stops))
    grid = np.linspace(0, 1, n)
    return np.stack([np.interp(grid, positions, stops[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


COLORMAP = _lut(sequential.Inferno)


@dataclass
class AttentionMaps:
    """One model's maps on one image, in "x uniform" units (see the module docstring)."""

    model: str
    image: Image.Image  # the input as the model sees it, RGB, its input size
    heads: np.ndarray  # (heads, h, w)
    mean: np.ndarray  # (h, w)
    mask: np.ndarray  # (h, w) bool
    head_entropy: np.ndarray  # (heads,) bits
    mean_entropy: float  # bits
    keep_mass: float

    @property
    def max_entropy(self) -> float:
        return float(np.log2(self.mean.size))


def entropy_bits(weights: np.ndarray) -> np.ndarray:
    """Shannon entropy (bits) of attention maps (..., h, w), each normalized to sum 1 first."""
    flat = weights.reshape(*weights.shape[:-2], -1).astype(np.float64)
    p = flat / np.maximum(flat.sum(axis=-1, keepdims=True), 1e-12)
    return -(p * np.log2(np.clip(p, 1e-30, None))).sum(axis=-1)


def mass_mask(weights: np.ndarray, keep_mass: float) -> np.ndarray:
    """(h, w) map -> bool mask of the smallest set of patches holding >= keep_mass of its total mass
    (the evaluation's `mass_threshold_mask` where the library has it)."""
    try:
        from dinotwins.evaluation.attention_masks import mass_threshold_mask
    except ImportError:
        return _smallest_set_mask(weights, keep_mass)
    return np.asarray(mass_threshold_mask(torch.from_numpy(weights[None, None]), keep_mass))[0, 0].astype(bool)


def _smallest_set_mask(weights: np.ndarray, keep_mass: float) -> np.ndarray:
    flat = weights.ravel() / max(float(weights.sum()), 1e-12)
    order = np.argsort(-flat, kind="stable")
    needed = int(np.searchsorted(np.cumsum(flat[order]), keep_mass - 1e-9)) + 1  # patches to reach keep_mass
    mask = np.zeros(flat.size, bool)
    mask[order[: min(needed, flat.size)]] = True
    return mask.reshape(weights.shape)


def compute_maps(entries: list[ModelEntry], image: Image.Image, keep_mass: float = DEFAULT_KEEP_MASS
                 ) -> list[AttentionMaps]:
    """Every model's attention on `image` (RGB PIL)."""
    maps = []
    for entry in entries:
        model = entry.model
        x = model.preprocess([image])  # (1, 3, S, S)
        attn = model.attention(x)[0].cpu().numpy().astype(np.float64)  # (heads, h, w)
        probs = attn / np.maximum(attn.sum(axis=(-2, -1), keepdims=True), 1e-12)  # over patches only
        n_patches = probs.shape[-1] * probs.shape[-2]
        mean = probs.mean(axis=0)
        maps.append(AttentionMaps(
            model=entry.label,
            image=image.convert("RGB").resize((model.image_size, model.image_size), Image.Resampling.BICUBIC),
            heads=(probs * n_patches).astype(np.float32),
            mean=(mean * n_patches).astype(np.float32),
            mask=mass_mask(mean, keep_mass),
            head_entropy=entropy_bits(probs).astype(np.float32),
            mean_entropy=float(entropy_bits(mean)),
            keep_mass=keep_mass,
        ))
    return maps


def shared_scale(maps: list[AttentionMaps]) -> tuple[float, float]:
    """(vmin, vmax) over every head and mean map of every model."""
    vmax = max((float(max(m.heads.max(), m.mean.max())) for m in maps), default=1.0)
    return 0.0, max(vmax, 1e-6)


def colorize(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """(h, w) values -> (h, w, 3) uint8 through the colour table."""
    scaled = np.clip((values - vmin) / (vmax - vmin), 0.0, 1.0)
    return COLORMAP[(scaled * (len(COLORMAP) - 1)).round().astype(np.intp)]


def _upsample(a: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour upsampling of an (h, w[, c]) array to (size, size[, c]): patches stay visible."""
    rows = (np.arange(size) * a.shape[0]) // size
    cols = (np.arange(size) * a.shape[1]) // size
    return a[rows][:, cols]


def overlay(base: np.ndarray, values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    heat = _upsample(colorize(values, vmin, vmax), base.shape[0]).astype(np.float32)
    return (HEAT_ALPHA * heat + (1 - HEAT_ALPHA) * base).astype(np.uint8)


def _font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def render_row(maps: AttentionMaps, vmin: float, vmax: float) -> Image.Image:
    """[input | head 1 .. head H | mean | mask] with a caption (entropy, mask share) under each tile."""
    base = np.asarray(maps.image.resize((TILE, TILE), Image.Resampling.BICUBIC), dtype=np.float32)
    tiles = [(base.astype(np.uint8), "input")]
    for h, (head, ent) in enumerate(zip(maps.heads, maps.head_entropy), start=1):
        tiles.append((overlay(base, head, vmin, vmax), f"head {h} · H={ent:.2f} b"))
    tiles.append((overlay(base, maps.mean, vmin, vmax), f"mean · H={maps.mean_entropy:.2f} b"))
    keep = _upsample(maps.mask, TILE)[..., None]
    tiles.append(((base * np.where(keep, 1.0, MASK_DIM)).astype(np.uint8),
                  f"mask {maps.keep_mass:.0%} · {int(maps.mask.sum())}/{maps.mask.size}"))
    row = Image.new("RGB", (TILE * len(tiles), TILE + CAPTION), "white")
    draw, font = ImageDraw.Draw(row), _font()
    for i, (tile, caption) in enumerate(tiles):
        row.paste(Image.fromarray(tile), (i * TILE, 0))
        draw.text((i * TILE + 3, TILE + 2), caption, fill="black", font=font)
    return row


def colorbar(vmin: float, vmax: float, width: int = 512, height: int = 16) -> Image.Image:
    """The shared scale as an image: the colour ramp with its ends and midpoint labelled."""
    ramp = colorize(np.tile(np.linspace(vmin, vmax, width), (height, 1)), vmin, vmax)
    bar = Image.new("RGB", (width + 20, height + 22), "white")
    bar.paste(Image.fromarray(ramp), (10, 0))
    draw, font = ImageDraw.Draw(bar), _font()
    for frac in (0.0, 0.5, 1.0):
        x = 10 + int(frac * (width - 1))
        text = f"{vmin + frac * (vmax - vmin):.1f}x"
        draw.text((min(max(x - 10, 0), width - 20), height + 4), text, fill="black", font=font)
    return bar


def entropy_headers(most_heads: int) -> list[str]:
    return ["model", "mean map"] + [f"head {h}" for h in range(1, most_heads + 1)] + ["uniform (max)"]


def entropy_rows(maps: list[AttentionMaps], most_heads: int) -> list[list[str]]:
    """Per model: the entropy (bits) of the mean map, of every head (blank past its own heads), the uniform max."""
    rows = []
    for m in maps:
        heads = [f"{e:.2f}" for e in m.head_entropy] + [""] * (most_heads - len(m.head_entropy))
        rows.append([m.model, f"{m.mean_entropy:.2f}", *heads, f"{m.max_entropy:.2f}"])
    return rows


def attention_view(entries: list[ModelEntry], image: Image.Image, keep_mass: float = DEFAULT_KEEP_MASS
                   ) -> tuple[list[Image.Image], Image.Image, list[list[str]]]:
    """The whole tab for one image: (one row image per model, the colour bar, entropy rows; see
    `entropy_headers(most_heads(entries))`)."""
    maps = compute_maps(entries, image, keep_mass)
    vmin, vmax = shared_scale(maps)
    return [render_row(m, vmin, vmax) for m in maps], colorbar(vmin, vmax), entropy_rows(maps, most_heads(entries))


def most_heads(entries: list[ModelEntry]) -> int:
    return max((e.model.num_heads for e in entries), default=0)
