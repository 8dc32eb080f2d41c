"""Attention rollout, a section of the Attention tab: what the CLS token attends to through all blocks at once.

Abnar & Zuidema (2020), as `LoadedModel.rollout` computes it: every block's attention with its heads fused (mean,
max or min), the weakest `discard_ratio` of each row's weights dropped, the identity added for the residual path,
rows renormalized, and the blocks multiplied from first to last. One row per model: the input, the rollout map
(in "x uniform" units, one colour scale for every model) and its 60 % mass mask. API: `/rollout`.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np
import torch
from PIL import Image

from app import render
from app.images import read_query
from app.tabs.base import TabContext, gradio_errors
from dinotwins.evaluation.attention_masks import mass_threshold_mask
from dinotwins.errors import UserError

HEAD_FUSIONS = ("mean", "max", "min")
KEEP_MASS = 0.6


def rollout_maps(entries, image: Image.Image, head_fusion: str, discard_ratio: float, scale: float
                 ) -> list[tuple[str, Image.Image, np.ndarray]]:
    """Per model: (label, the input at its size, the rollout map in "x uniform" units (h, w))."""
    out = []
    for entry in entries:
        model = entry.model
        size = model.input_size(scale)
        flow = model.rollout(model.preprocess([image], size), head_fusion, discard_ratio)[0].cpu().numpy()
        flow = flow.astype(np.float64) / max(float(flow.sum()), 1e-12) * flow.size
        out.append((entry.label, image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), flow))
    return out


def rollout_view(entries, image: Image.Image, head_fusion: str = "mean", discard_ratio: float = 0.0,
                 scale: float = 1.0) -> tuple[list[Image.Image], Image.Image]:
    """(one row image per model: [input | rollout | mask], the shared colour bar)."""
    maps = rollout_maps(entries, image, head_fusion, discard_ratio, scale)
    vmax = render.scale_top([flow for _, _, flow in maps])
    rows = []
    for label, picture, flow in maps:
        base = np.asarray(picture.resize((render.TILE, render.TILE), Image.Resampling.BICUBIC), dtype=np.float32)
        mask = np.asarray(mass_threshold_mask(torch.from_numpy(flow), KEEP_MASS)).astype(bool)
        rows.append(render.tile_row([(base.astype(np.uint8), label[:24]),
                                     (render.overlay(base, flow, 0.0, vmax), f"rollout ({head_fusion})"),
                                     (render.masked(base, mask), f"mask {KEEP_MASS:.0%}")]))
    return rows, render.colorbar(0.0, vmax, saturates=True)


def rollout_handler(explorer, image: Any, head_fusion: str | None = "mean", discard_ratio: float | None = 0.0,
                    scale: float | None = 1.0) -> list:
    """[one row image per model, the shared colour scale]."""
    picture = read_query(image)
    if picture is None:
        raise UserError("no image: upload one or click an example")
    fusion = head_fusion or "mean"
    if fusion not in HEAD_FUSIONS:
        raise UserError(f"head_fusion must be one of {', '.join(HEAD_FUSIONS)}, got {head_fusion!r}")
    ratio = float(discard_ratio or 0.0)
    if not 0.0 <= ratio < 1.0:
        raise UserError(f"discard_ratio must be in [0, 1), got {ratio}")
    scale = float(scale or 1.0)
    if not 0.25 <= scale <= 4.0:
        raise UserError(f"scale must be between 0.25 and 4 (times the training size), got {scale}")
    rows, bar = rollout_view(explorer.entries, picture, fusion, ratio, scale)
    return [*rows, bar]


def section(ctx: TabContext, scale: gr.Radio) -> dict:
    """The rollout controls and rows, inside the Attention tab; returns the event a new query runs."""
    @gradio_errors
    def rollout(image, head_fusion="mean", discard_ratio=0.0, scale=1.0):
        """Attention rollout of every model on one image, on one shared colour scale.

        Parameters:
            image: the query image
            head_fusion: how each block's heads are fused: mean, max or min
            discard_ratio: share of each row's weakest attention weights dropped, in [0, 1)
            scale: run each model at this multiple of its training size
        Returns:
            one row image per model (input, rollout, mask), the colour scale
        """
        return rollout_handler(ctx.explorer, image, head_fusion, discard_ratio, scale)

    with gr.Accordion("Attention rollout: through all blocks", open=False):
        with gr.Row():
            fusion = gr.Radio(list(HEAD_FUSIONS), value="mean", label="Head fusion")
            discard = gr.Slider(0.0, 0.95, value=0.0, step=0.05, label="Discard ratio (weakest weights dropped)")
            button = gr.Button("Show rollout")
        bar = gr.Image(label="Shared colour scale (x uniform)", interactive=False, height=60, format="png")
        rows = [gr.Image(label=e.label, interactive=False, format="png", elem_id=f"rollout-row-{i}")
                for i, e in enumerate(ctx.entries)]
    io = dict(fn=rollout, inputs=[ctx.query, fusion, discard, scale], outputs=[*rows, bar], preprocess=False)
    gr.on([button.click, fusion.input, discard.release], api_name="rollout", **io)
    return io
