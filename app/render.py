"""Pictures of attention maps: heat-map overlays on one shared colour scale, a row of tiles per model, and the
colour bar. Plain numpy and Pillow, no gradio: the Attention tab and the README figure (`python -m app.figure`)
draw with the same code.

Maps arrive in "x uniform" units (attention times the number of patches, so 1 = uniform attention); `vmin` and
`vmax` are shared by every map drawn together, `vmax` from `scale_top`. Maps are upsampled nearest-neighbour, so
patches stay visible.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from plotly.colors import hex_to_rgb, sequential

TILE = 128  # px per map
CAPTION = 18  # px of text band under each map
HEAT_ALPHA = 0.6  # share of the heat map in an overlay; the rest is the image
MASK_DIM = 0.2  # brightness left to patches outside the mask
# The top of a shared heat-map scale is this percentile of the values drawn: a few hot patches (one model's outlier
# tokens, tens of times uniform) then show in the top colour instead of darkening every other map.
SCALE_TOP_PERCENTILE = 99.0


def _lut(colors: list[str], n: int = 256) -> np.ndarray:
    """(n, 3) uint8 colour table interpolated from a plotly colour scale."""
    stops = np.array([hex_to_rgb(c) for c in colors], dtype=np.float64)
    positions = np.linspace(0, 1, len(stops))
    grid = np.linspace(0, 1, n)
    return np.stack([np.interp(grid, positions, stops[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


COLORMAP = _lut(sequential.Inferno)


def colorize(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """(h, w) values -> (h, w, 3) uint8 through the colour table."""
    scaled = np.clip((values - vmin) / (vmax - vmin), 0.0, 1.0)
    return COLORMAP[(scaled * (len(COLORMAP) - 1)).round().astype(np.intp)]


def upsample(a: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour upsampling of an (h, w[, c]) array to (size, size[, c]): patches stay visible."""
    rows = (np.arange(size) * a.shape[0]) // size
    cols = (np.arange(size) * a.shape[1]) // size
    return a[rows][:, cols]


def overlay(base: np.ndarray, values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """The heat map of `values` over the float image `base` (S, S, 3): uint8 (S, S, 3)."""
    heat = upsample(colorize(values, vmin, vmax), base.shape[0]).astype(np.float32)
    return (HEAT_ALPHA * heat + (1 - HEAT_ALPHA) * base).astype(np.uint8)


def masked(base: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`base` (S, S, 3) with the patches outside the bool (h, w) mask dimmed: uint8."""
    keep = upsample(mask, base.shape[0])[..., None]
    return (base * np.where(keep, 1.0, MASK_DIM)).astype(np.uint8)


def font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def tile_row(tiles: list[tuple[np.ndarray, str]]) -> Image.Image:
    """Tiles (uint8 (TILE, TILE, 3), caption) side by side, each caption in a band under its tile."""
    row = Image.new("RGB", (TILE * len(tiles), TILE + CAPTION), "white")
    draw, face = ImageDraw.Draw(row), font()
    for i, (tile, caption) in enumerate(tiles):
        row.paste(Image.fromarray(tile), (i * TILE, 0))
        draw.text((i * TILE + 3, TILE + 2), caption, fill="black", font=face)
    return row


def scale_top(maps: list[np.ndarray]) -> float:
    """The shared scale's top for these maps: the SCALE_TOP_PERCENTILE-th percentile of all their values."""
    values = np.concatenate([np.ravel(m) for m in maps]) if maps else np.ones(1)
    return max(float(np.percentile(values, SCALE_TOP_PERCENTILE)), 1e-6)


def colorbar(vmin: float, vmax: float, width: int = 512, height: int = 16, unit: str = "x",
             saturates: bool = False) -> Image.Image:
    """The shared scale as an image: the colour ramp with its ends and midpoint labelled (value then `unit`); with
    `saturates`, the top reads ">=" (higher values share its colour)."""
    ramp = colorize(np.tile(np.linspace(vmin, vmax, width), (height, 1)), vmin, vmax)
    bar = Image.new("RGB", (width + 20, height + 22), "white")
    bar.paste(Image.fromarray(ramp), (10, 0))
    draw, face = ImageDraw.Draw(bar), font()
    for frac in (0.0, 0.5, 1.0):
        x = 10 + int(frac * (width - 1))
        text = f"{vmin + frac * (vmax - vmin):.{1 if unit else 2}f}{unit}"
        top_saturates = saturates and frac == 1.0
        text = f">={text}" if top_saturates else text
        draw.text((min(max(x - 10, 0), width - 20 - (12 if top_saturates else 0)), height + 4), text, fill="black",
                  font=face)
    return bar


def stack(images: list[Image.Image], gap: int = 4) -> Image.Image:
    """Images one under another on white, left-aligned."""
    width = max(im.width for im in images)
    out = Image.new("RGB", (width, sum(im.height for im in images) + gap * (len(images) - 1)), "white")
    y = 0
    for im in images:
        out.paste(im, (0, y))
        y += im.height + gap
    return out
