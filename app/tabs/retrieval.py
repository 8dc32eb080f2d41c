"""Retrieval tab: a query image -> each model's top-k gallery neighbours by cosine similarity (FAISS).

Precision@k is the share of the k neighbours with the query's label; it needs a query label: a gallery query
uses its own label (and is excluded from its own neighbours), an uploaded query uses the class the user picks,
else precision is n/a. The models' lists are compared by the Jaccard index of their neighbour sets. The search
itself is the explorer's (`Explorer.neighbours`).
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from app import exports, render
from app.explorer import Neighbours, Progress, no_progress
from app.images import read_query
from app.tabs.base import UNKNOWN_CLASS, TabContext, gradio_errors
from dinotwins.errors import UserError

TITLE, ID = "Retrieval", "retrieval"
DEFAULT_K = 8
THUMBNAIL = 96  # neighbour thumbnails, px


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|A ∩ B| / |A ∪ B| of two index lists (1.0 for two empty lists)."""
    set_a, set_b = set(np.asarray(a).tolist()), set(np.asarray(b).tolist())
    union = set_a | set_b
    return len(set_a & set_b) / len(union) if union else 1.0


def overlap_matrix(results: list[Neighbours]) -> list[list[str]]:
    """Rows of a table: model, then the Jaccard overlap with every model (1.00 on the diagonal)."""
    return [[a.model] + [f"{jaccard(a.indices, b.indices):.2f}" for b in results] for a in results]


def thumbnails(gallery, result: Neighbours) -> list[tuple[Image.Image, str]]:
    """(image, caption) per neighbour, for a gr.Gallery: 'label · cosine · #index'."""
    items = []
    for index, sim in zip(result.indices.tolist(), result.similarities.tolist()):
        tile = gallery.image(index).resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BICUBIC)
        items.append((tile, f"{gallery.label_name(index)} · {sim:.3f} · #{index}"))
    return items


def summary(results: list[Neighbours], k: int, query_label_name: str | None) -> str:
    """Markdown: what the query was and each model's precision@k."""
    if query_label_name is None:
        head = f"Query class unknown: precision@{k} n/a (pick the query's class to score it)."
    else:
        head = f"Query class **{query_label_name}**."
    rows = [f"| model | precision@{k} | top-1 cosine |", "|---|---|---|"]
    for r in results:
        precision = "n/a" if r.precision is None else f"{r.precision:.2f}"
        top1 = f"{r.similarities[0]:.3f}" if len(r.similarities) else "n/a"
        rows.append(f"| {r.model} | {precision} | {top1} |")
    return head + "\n\n" + "\n".join(rows)


def retrieve_handler(explorer, image: Any, k: int | None = DEFAULT_K, query_index: int | None = -1,
                     query_class: str | None = UNKNOWN_CLASS, progress: Progress = no_progress) -> list:
    """[summary markdown, (image, caption) list per model, Jaccard overlap rows]. query_index >= 0 queries
    with that gallery image (its label, itself left out); else the uploaded image, labelled by query_class."""
    results, k, label_name = _neighbours(explorer, image, k, query_index, query_class, progress)
    gallery = explorer.gallery
    return [summary(results, k, label_name), *[thumbnails(gallery, r) for r in results], overlap_matrix(results)]


def retrieve_export(explorer, image: Any, k: int | None = DEFAULT_K, query_index: int | None = -1,
                    query_class: str | None = UNKNOWN_CLASS) -> list[str]:
    """[PNG of every model's neighbours (a row each), CSV of model, rank, gallery index, label, cosine]."""
    results, k, _ = _neighbours(explorer, image, k, query_index, query_class, no_progress)
    gallery = explorer.gallery
    tile = render.TILE
    rows = []
    for r in results:
        tiles = [(np.asarray(picture.resize((tile, tile), Image.Resampling.BICUBIC).convert("RGB")), caption)
                 for picture, caption in thumbnails(gallery, r)]
        rows += [render.tile_row([(np.full((tile, tile, 3), 255, np.uint8), r.model)] + tiles)]
    folder = exports.export_folder()
    table = [[r.model, rank, int(i), gallery.label_name(int(i)), round(float(sim), 5)]
             for r in results for rank, (i, sim) in enumerate(zip(r.indices, r.similarities), start=1)]
    return [exports.write_png(folder, "neighbours", render.stack(rows)),
            exports.write_csv(folder, "neighbours", ["model", "rank", "gallery_index", "label", "cosine"], table)]


def _neighbours(explorer, image: Any, k: int | None, query_index: int | None, query_class: str | None,
                progress: Progress) -> tuple[list[Neighbours], int, str | None]:
    gallery = explorer.gallery
    k = int(DEFAULT_K if k is None else k)
    if not 1 <= k <= len(gallery) - 1:
        raise UserError(f"k must be between 1 and {len(gallery) - 1}, got {k}")
    index = -1 if query_index in (None, "") else int(query_index)
    if index >= len(gallery):
        raise UserError(f"query_index {index} is outside the gallery (0..{len(gallery) - 1}); use -1 for the "
                        f"uploaded image")
    classes = gallery.class_names()
    if index >= 0:
        picture, label = None, None
        label_name = gallery.label_name(index) if gallery.labelled else None
    else:
        index, picture = None, read_query(image)
        if picture is None:
            raise UserError("no image: upload one, click an example, or give a gallery index")
        label_name = None if query_class in (None, "", UNKNOWN_CLASS) else str(query_class)
        if label_name is not None and label_name not in classes:
            raise UserError(f"unknown class {label_name!r}; use one of {', '.join(classes) or 'none'}")
        label = None if label_name is None else classes.index(label_name)
    return explorer.neighbours(picture, k, query_index=index, query_label=label, progress=progress), k, label_name


def build(ctx: TabContext, tab: gr.Tab) -> list[dict]:
    gallery, explorer = ctx.gallery, ctx.explorer
    default_k = min(DEFAULT_K, len(gallery) - 1)

    @gradio_errors
    def retrieve(image, k=default_k, query_index=-1, query_class=UNKNOWN_CLASS, progress=gr.Progress()):
        """Each model's top-k gallery neighbours (cosine), precision@k, and how much the models' lists overlap.

        Parameters:
            image: the query image (ignored when query_index >= 0)
            k: neighbours per model
            query_index: a gallery index to query with that gallery image (itself left out), -1 for the image
            query_class: the uploaded image's class, to score precision@k ("unknown": n/a)
        Returns:
            summary (markdown), one gallery of (image, "label · cosine · #index") per model, Jaccard overlaps
        """
        return retrieve_handler(explorer, image, k, query_index, query_class, progress)

    with gr.Row():
        k = gr.Slider(1, min(50, len(gallery) - 1), value=default_k, step=1, label="k neighbours")
        button = gr.Button("Find neighbours", variant="primary")
    text = gr.Markdown(label="Retrieval summary", elem_id="retrieval-summary")
    views = [gr.Gallery(label=f"{e.label}: top-k (label · cosine · #index)", columns=10, height=170,
                        allow_preview=False, object_fit="contain", format="png", interactive=False,
                        elem_id=f"neighbours-{i}") for i, e in enumerate(ctx.entries)]
    overlap = gr.Dataframe(label="Overlap of the models' top-k sets (Jaccard)", interactive=False,
                           headers=["model", *explorer.labels])
    with gr.Row():
        export_button = gr.Button("Export these neighbours (PNG + CSV)", size="sm")
        files = gr.File(label="Downloads", file_count="multiple", interactive=False, height=80)
    io = dict(fn=retrieve, inputs=[ctx.query, k, ctx.query_index, ctx.query_class],
              outputs=[text, *views, overlap], preprocess=False)
    gr.on([button.click, k.release, ctx.query_index.submit, ctx.query_class.input], api_name="retrieve", **io)
    export_button.click(gradio_errors(lambda *values: retrieve_export(explorer, *values)),
                        [ctx.query, k, ctx.query_index, ctx.query_class], files, preprocess=False,
                        api_visibility="private")
    return [io]
