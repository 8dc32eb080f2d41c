"""Attention tab: what each model's last-layer CLS token attends to, per head, on one image.

One row per model: the input as the model sees it (square), each head's CLS-to-patch attention as a heat map
over the image, the mean over heads, and the mass-threshold mask of the mean map (DINO paper, Fig. 3: the
smallest set of patches holding at least `keep_mass` of the attention; `dinotwins`' own mask, the one the
evaluation scores). Beside every map: its entropy in bits (log2 of the patch count = uniform attention).

Maps are shown in units of "x uniform" (attention x number of patches, so 1 = uniform attention): models with
different patch grids become comparable, and ONE colour scale is shared by all rows (its top the 99th percentile
of all their values, so a few hot patches saturate rather than darken the rest). Attention is renormalized
over the patches first (the CLS token's share of its own attention is dropped), as in DINO's
visualize_attention.py. `scale` runs every model at that multiple of its training size (position embeddings
interpolated) for finer maps; `DEFAULT_SCALE` is the one measured best on the scenes test split (README).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np
import torch
from PIL import Image

from app import exports, render
from app.images import read_query
from app.models import ModelEntry
from app.tabs import rollout
from app.tabs.base import TabContext, gradio_errors
from dinotwins.evaluation.attention_masks import mass_threshold_mask
from dinotwins.errors import UserError

TITLE, ID = "Attention", "attention"
DEFAULT_KEEP_MASS = 0.6  # DINO paper, Fig. 3
SCALES = (1.0, 1.5, 2.0)  # multiples of each model's training size offered for finer maps
DEFAULT_SCALE = 2.0  # chosen by the scenes models' attention Jaccard at each of SCALES (README, Finer maps)
LAST_LAYER = 0  # the `layer` value meaning each model's last block


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

    def numbers(self) -> dict:
        """The maps behind a picture, as an export's JSON holds them."""
        return {"heads": self.heads.round(5).tolist(), "mean": self.mean.round(5).tolist(),
                "mask": self.mask.tolist(), "head_entropy_bits": self.head_entropy.round(4).tolist(),
                "mean_entropy_bits": round(self.mean_entropy, 4)}


def entropy_bits(weights: np.ndarray) -> np.ndarray:
    """Shannon entropy (bits) of attention maps (..., h, w), each normalized to sum 1 first."""
    flat = weights.reshape(*weights.shape[:-2], -1).astype(np.float64)
    p = flat / np.maximum(flat.sum(axis=-1, keepdims=True), 1e-12)
    return -(p * np.log2(np.clip(p, 1e-30, None))).sum(axis=-1)


def mass_mask(weights: np.ndarray, keep_mass: float) -> np.ndarray:
    """(h, w) map -> bool mask of the smallest set of patches holding >= keep_mass of its total mass."""
    return np.asarray(mass_threshold_mask(torch.from_numpy(weights), keep_mass)).astype(bool)


def compute_maps(entries: list[ModelEntry], image: Image.Image, keep_mass: float = DEFAULT_KEEP_MASS,
                 scale: float = DEFAULT_SCALE, layer: int = LAST_LAYER) -> list[AttentionMaps]:
    """Every model's CLS attention on `image` (RGB PIL) in block `layer` (1-based; 0 or past a model's depth: its
    last), each model run at `scale` times its training size."""
    maps = []
    for entry in entries:
        model = entry.model
        size = model.input_size(scale)
        x = model.preprocess([image], size)
        attn = model.attention(x, layer=model.block_index(layer))[0].cpu().numpy().astype(np.float64)  # (heads, h, w)
        probs = attn / np.maximum(attn.sum(axis=(-2, -1), keepdims=True), 1e-12)  # over patches only
        n_patches = probs.shape[-1] * probs.shape[-2]
        mean = probs.mean(axis=0)
        maps.append(AttentionMaps(
            model=entry.label,
            image=image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC),
            heads=(probs * n_patches).astype(np.float32),
            mean=(mean * n_patches).astype(np.float32),
            mask=mass_mask(mean, keep_mass),
            head_entropy=entropy_bits(probs).astype(np.float32),
            mean_entropy=float(entropy_bits(mean)),
            keep_mass=keep_mass,
        ))
    return maps


def shared_scale(maps: list[AttentionMaps]) -> tuple[float, float]:
    """(vmin, vmax) for every head and mean map of every model: 0 and `render.scale_top` of all of them."""
    return 0.0, render.scale_top([a for m in maps for a in (m.heads, m.mean)])


def render_row(maps: AttentionMaps, vmin: float, vmax: float) -> Image.Image:
    """[input | head 1 .. head H | mean | mask] with a caption (entropy, mask share) under each tile."""
    base = np.asarray(maps.image.resize((render.TILE, render.TILE), Image.Resampling.BICUBIC), dtype=np.float32)
    h, w = maps.mean.shape
    tiles = [(base.astype(np.uint8), f"input · {w}x{h} patches")]
    for k, (head, ent) in enumerate(zip(maps.heads, maps.head_entropy), start=1):
        tiles.append((render.overlay(base, head, vmin, vmax), f"head {k} · H={ent:.2f} b"))
    tiles.append((render.overlay(base, maps.mean, vmin, vmax), f"mean · H={maps.mean_entropy:.2f} b"))
    tiles.append((render.masked(base, maps.mask),
                  f"mask {maps.keep_mass:.0%} · {int(maps.mask.sum())}/{maps.mask.size}"))
    return render.tile_row(tiles)


def entropy_headers(most_heads: int) -> list[str]:
    return ["model", "mean map"] + [f"head {h}" for h in range(1, most_heads + 1)] + ["uniform (max)"]


def entropy_rows(maps: list[AttentionMaps], most_heads: int) -> list[list[str]]:
    """Per model: the entropy (bits) of the mean map, of every head (blank past its own heads), the uniform max."""
    rows = []
    for m in maps:
        heads = [f"{e:.2f}" for e in m.head_entropy] + [""] * (most_heads - len(m.head_entropy))
        rows.append([m.model, f"{m.mean_entropy:.2f}", *heads, f"{m.max_entropy:.2f}"])
    return rows


def most_heads(entries: list[ModelEntry]) -> int:
    return max((e.model.num_heads for e in entries), default=0)


def attention_view(entries: list[ModelEntry], image: Image.Image, keep_mass: float = DEFAULT_KEEP_MASS,
                   scale: float = DEFAULT_SCALE, layer: int = LAST_LAYER
                   ) -> tuple[list[Image.Image], Image.Image, list[list[str]]]:
    """The whole tab for one image: (one row image per model, the colour bar, entropy rows; see
    `entropy_headers(most_heads(entries))`)."""
    maps = compute_maps(entries, image, keep_mass, scale, layer)
    vmin, vmax = shared_scale(maps)
    return ([render_row(m, vmin, vmax) for m in maps], render.colorbar(vmin, vmax, saturates=True),
            entropy_rows(maps, most_heads(entries)))


def attention_handler(explorer, image: Any, keep_mass: float | None = DEFAULT_KEEP_MASS,
                      scale: float | None = DEFAULT_SCALE, layer: int | None = LAST_LAYER) -> list:
    """[one row image per model, the shared colour scale, entropy rows]."""
    picture, keep, scale = _checked(image, keep_mass, scale)
    rows, bar, entropy = attention_view(explorer.entries, picture, keep, scale, _layer(layer))
    return [*rows, bar, entropy]


def attention_export(explorer, image: Any, keep_mass: float | None = DEFAULT_KEEP_MASS,
                     scale: float | None = DEFAULT_SCALE, layer: int | None = LAST_LAYER) -> list[str]:
    """[PNG of the colour bar and every model's row, JSON of every map behind them] as file paths."""
    picture, keep, scale = _checked(image, keep_mass, scale)
    maps = compute_maps(explorer.entries, picture, keep, scale, _layer(layer))
    vmin, vmax = shared_scale(maps)
    folder = exports.export_folder()
    picture_path = exports.write_png(folder, "attention", render.stack(
        [render.colorbar(vmin, vmax, saturates=True), *[render_row(m, vmin, vmax) for m in maps]]))
    numbers = {"keep_mass": keep, "scale": scale, "layer": _layer(layer) or "last",
               "units": "x uniform attention (1 = every patch equal)", "colour_scale": [vmin, vmax],
               "models": [{"model": m.model, "input_size": m.image.width, **m.numbers()} for m in maps]}
    return [picture_path, exports.write_json(folder, "attention", numbers)]


def _layer(layer: int | None) -> int:
    """`layer` as a block number (1-based) or LAST_LAYER; UserError when negative or not whole."""
    value = LAST_LAYER if layer in (None, "", "last") else layer
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, (int, float)) or value < 0 or int(value) != value:
        raise UserError(f"layer must be a block number (1 = first) or 0 for each model's last, got {layer!r}")
    return int(value)


def _checked(image: Any, keep_mass: float | None, scale: float | None) -> tuple[Image.Image, float, float]:
    picture = read_query(image)
    if picture is None:
        raise UserError("no image: upload one or click an example")
    keep = float(DEFAULT_KEEP_MASS if keep_mass is None else keep_mass)
    if not 0.0 < keep <= 1.0:
        raise UserError(f"keep_mass must be in (0, 1], got {keep}")
    scale = float(DEFAULT_SCALE if scale is None else scale)
    if not 0.25 <= scale <= 4.0:
        raise UserError(f"scale must be between 0.25 and 4 (times the training size), got {scale}")
    return picture, keep, scale


def build(ctx: TabContext, tab: gr.Tab) -> list[dict]:
    models = ctx.entries

    @gradio_errors
    def attention(image, keep_mass=DEFAULT_KEEP_MASS, scale=DEFAULT_SCALE, layer=LAST_LAYER):
        """Last-layer CLS attention of every model on one image, on one shared colour scale.

        Parameters:
            image: the query image (PNG, JPEG, WebP, GIF, BMP or TIFF)
            keep_mass: share of the attention mass the mask keeps, in (0, 1]
            scale: run each model at this multiple of its training size (finer maps), e.g. 1, 1.5 or 2
            layer: the block whose CLS attention to show (1 = first), 0 for each model's last
        Returns:
            one row image per model (input, each head, mean, mask), the colour scale, entropy (bits) per head
        """
        return attention_handler(ctx.explorer, image, keep_mass, scale, layer)

    with gr.Row():
        keep_mass = gr.Slider(0.05, 1.0, value=DEFAULT_KEEP_MASS, step=0.05,
                              label="Mask keeps this share of the attention mass (DINO: 60%)")
        scale = gr.Radio(list(SCALES), value=DEFAULT_SCALE, label="Input size (x each model's training size)")
        depth = max(e.model.depth for e in models)
        layer = gr.Dropdown([("last", LAST_LAYER)] + [(str(k), k) for k in range(1, depth + 1)], value=LAST_LAYER,
                            label="Block (past a model's depth: its last)")
        button = gr.Button("Show attention", variant="primary")
    gr.Markdown("Heat maps: last-layer CLS attention per head, then the mean over heads, then the mask of the "
                "mean. One colour scale for every map of every model, in units of uniform attention (1x = every "
                "patch equal); the hottest 1 % of patches share its top colour. H = entropy in bits. A larger "
                "input size gives each model more patches (its position embeddings interpolated): finer maps.")
    bar = gr.Image(label="Shared colour scale (x uniform attention)", interactive=False, height=60, format="png",
                   elem_id="attention-scale")
    rows = [gr.Image(label=e.label, interactive=False, format="png", elem_id=f"attention-row-{i}")
            for i, e in enumerate(models)]
    entropy = gr.Dataframe(label="Attention entropy (bits) per head", interactive=False,
                           headers=entropy_headers(most_heads(models)))
    with gr.Row():
        export_button = gr.Button("Export these maps (PNG + JSON)", size="sm")
        files = gr.File(label="Downloads", file_count="multiple", interactive=False, height=80)
    io = dict(fn=attention, inputs=[ctx.query, keep_mass, scale, layer], outputs=[*rows, bar, entropy],
              preprocess=False)
    gr.on([button.click, keep_mass.release, scale.input, layer.input], api_name="attention", **io)
    export_button.click(gradio_errors(lambda *values: attention_export(ctx.explorer, *values)),
                        [ctx.query, keep_mass, scale, layer], files, preprocess=False, api_visibility="private")
    rollout_io = rollout.section(ctx, scale)
    return [io, rollout_io]
