"""Over training tab: how a model's attention changed while it trained.

For a run trained with `--export-every N` (its weights kept as `exports/step_XXXXXXXX.safetensors`, beside the final
`model.safetensors`), a slider over the saved steps shows the Attention tab's row (input, every head, the mean,
the mask) at that step, and a strip of the mean map at every saved step on one colour scale. Models without
exports (a single weights file) are listed as such. API: `/attention_steps` (image, model, step). The export
button writes the row and the strip as PNG and the maps at every saved step as JSON.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from app import exports, render
from app.images import read_query
from app.models import ModelCache, ModelEntry
from app.tabs.attention import DEFAULT_KEEP_MASS, AttentionMaps, compute_maps, render_row, shared_scale
from app.tabs.base import TabContext, gradio_errors
from dinotwins.errors import UserError
from dinotwins.models.export import EXPORTS_DIR

TITLE, ID = "Over training", "steps"
_STEP = re.compile(r"step_(\d+)\.safetensors$")


def saved_steps(entry: ModelEntry) -> list[tuple[int, Path]]:
    """(step, weights) of the run's kept exports and its final weights, by step; [] for a model without exports."""
    folder = entry.folder / EXPORTS_DIR
    found = sorted((int(m.group(1)), p) for p in folder.glob("step_*.safetensors") if (m := _STEP.search(p.name)))
    if not found:
        return []
    final = int(entry.model.metadata.get("steps") or 0)
    if final > found[-1][0] and entry.path.is_dir():
        found.append((final, entry.path))
    return found


def steps_maps(cache: ModelCache, entry: ModelEntry, image: Image.Image, step: int | None
               ) -> tuple[list[int], list[AttentionMaps], int]:
    """(the saved steps, the Attention tab's maps at each, the saved step nearest `step` (None: the last))."""
    saved = saved_steps(entry)
    if not saved:
        raise UserError(f"{entry.label} has no exports/ beside its weights; train with --export-every N to keep "
                        f"its weights along the way")
    chosen = saved[-1] if step is None or step < 0 else min(saved, key=lambda s: abs(s[0] - step))
    models = [ModelEntry(f"step {s}", p, cache.get(p)[1]) for s, p in saved]
    return [s for s, _ in saved], compute_maps(models, image, DEFAULT_KEEP_MASS), chosen[0]


def steps_view(steps: list[int], maps: list[AttentionMaps], chosen: int) -> tuple[Image.Image, Image.Image]:
    """(the Attention tab's row at step `chosen`, a strip of the mean map at every saved step) on one scale."""
    vmin, vmax = shared_scale(maps)
    shown = maps[steps.index(chosen)]
    base = np.asarray(maps[0].image.resize((render.TILE, render.TILE), Image.Resampling.BICUBIC), dtype=np.float32)
    strip = render.tile_row([(render.overlay(base, m.mean, vmin, vmax), f"{m.model} · mean") for m in maps])
    return render_row(shown, vmin, vmax), strip


def steps_handler(explorer, cache: ModelCache, image: Any, model: str | None = None,
                  step: int | None = -1) -> list:
    """[the row at the chosen step, the strip of every saved step, a line naming the step shown]."""
    entry, picture = _checked(explorer, image, model)
    steps, maps, shown = steps_maps(cache, entry, picture, None if step is None else int(step))
    row, strip = steps_view(steps, maps, shown)
    return [row, strip, f"**{entry.label}** at step {shown} (saved: {', '.join(str(s) for s in steps)})"]


def steps_export(explorer, cache: ModelCache, image: Any, model: str | None = None,
                 step: int | None = -1) -> list[str]:
    """[PNG of the row at the chosen step above the strip of every saved step, JSON of the maps at every saved
    step] as file paths."""
    entry, picture = _checked(explorer, image, model)
    steps, maps, shown = steps_maps(cache, entry, picture, None if step is None else int(step))
    row, strip = steps_view(steps, maps, shown)
    folder = exports.export_folder()
    numbers = {"model": entry.label, "shown_step": shown, "keep_mass": DEFAULT_KEEP_MASS,
               "units": "x uniform attention (1 = every patch equal)",
               "steps": [{"step": s, **m.numbers()} for s, m in zip(steps, maps)]}
    return [exports.write_png(folder, "attention_steps", render.stack([row, strip])),
            exports.write_json(folder, "attention_steps", numbers)]


def _checked(explorer, image: Any, model: str | None) -> tuple[ModelEntry, Image.Image]:
    """(the model with exports named `model`, None: the first; the query) or a UserError naming the problem."""
    picture = read_query(image)
    if picture is None:
        raise UserError("no image: upload one or click an example")
    with_exports = [e for e in explorer.entries if saved_steps(e)]
    if not with_exports:
        raise UserError("none of the models has exports/; train with --export-every N and open the run folder")
    entry = next((e for e in with_exports if e.label == model), None) if model else with_exports[0]
    if entry is None:
        raise UserError(f"unknown model {model!r}; use one of {', '.join(e.label for e in with_exports)}")
    return entry, picture


def build(ctx: TabContext, tab: gr.Tab) -> list[dict]:
    cache = ModelCache(capacity=64)
    with_exports = [e for e in ctx.entries if saved_steps(e)]
    names = [e.label for e in with_exports]

    @gradio_errors
    def attention_steps(image, model=names[0] if names else None, step=-1):
        """A model's last-layer attention at one of its saved training steps, and its mean map at every one.

        Parameters:
            image: the query image
            model: the label of a model whose run kept exports (--export-every)
            step: the training step (the nearest saved one is shown), -1 for the last
        Returns:
            the row at that step, the strip of every saved step, which step is shown
        """
        return steps_handler(ctx.explorer, cache, image, model, step)

    if not with_exports:
        gr.Markdown("None of these models kept its weights along the way. Train with `--export-every N` (e.g. "
                    "`python train.py ... --export-every 250`) and open the run folder to see its attention at "
                    "every saved step.")
    largest = max((saved_steps(e)[-1][0] for e in with_exports), default=0)
    with gr.Row():
        model = gr.Dropdown(names, value=names[0] if names else None, label="Model (runs with exports/)")
        step = gr.Slider(0, max(largest, 1), value=largest, step=1, label="Training step (nearest saved)")
    shown = gr.Markdown()
    row = gr.Image(label="Attention at this step", interactive=False, format="png", elem_id="steps-row")
    strip = gr.Image(label="Mean attention at every saved step (one colour scale)", interactive=False, format="png",
                     elem_id="steps-strip")
    with gr.Row():
        export_button = gr.Button("Export these maps (PNG + JSON)", size="sm")
        files = gr.File(label="Downloads", file_count="multiple", interactive=False, height=80)
    io = dict(fn=attention_steps, inputs=[ctx.query, model, step], outputs=[row, strip, shown], preprocess=False)
    gr.on([model.input, step.release], api_name="attention_steps", **io)
    export_button.click(gradio_errors(lambda *values: steps_export(ctx.explorer, cache, *values)),
                        [ctx.query, model, step], files, preprocess=False, api_visibility="private")
    return [io] if with_exports else []
