"""Embeddings tab: each model's 2-D UMAP of one seeded gallery subsample, aligned across models, in plotly, with
each model's leave-one-out k-NN accuracy and silhouette on the gallery (the layouts come from app/projection.py,
the scores from app/scores.py, both through the explorer's cache). The title says how many images are projected
(a seeded sample of a large gallery); the current query, when there is one, is marked in every panel, placed
among its most similar projected images (`Explorer.place`).
"""

from __future__ import annotations

import math
from typing import Any

import gradio as gr
import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from app import exports
from app.explorer import Progress, no_progress
from app.images import read_query
from app.tabs.base import TabContext, gradio_errors

TITLE, ID = "Embeddings", "embeddings"
PALETTE = qualitative.D3 + qualitative.Plotly + qualitative.Dark24


def projection_figure(labels_text: list[str], layouts: list[np.ndarray], indices: np.ndarray,
                      point_labels: np.ndarray | None, classes: list[str] | None, titles: list[str],
                      total: int | None = None, query: list[np.ndarray] | None = None) -> go.Figure:
    """Side-by-side scatter panels, one per model, coloured by class with one shared legend; hover shows the
    image's label and gallery index. `total`: the gallery's size when the points are a sample of it; `query`: a
    position per panel where the query is marked."""
    cols = max(len(layouts), 1)
    fig = make_subplots(rows=1, cols=cols, subplot_titles=titles, horizontal_spacing=0.03)
    groups = (np.unique(point_labels) if point_labels is not None else np.array([-1]))
    for col, (model, layout) in enumerate(zip(labels_text, layouts), start=1):
        for g_pos, group in enumerate(groups):
            sel = (point_labels == group) if point_labels is not None else np.ones(len(indices), bool)
            name = (classes[group] if classes and 0 <= group < len(classes) else str(group)) \
                if point_labels is not None else "gallery"
            fig.add_trace(go.Scattergl(
                x=layout[sel, 0], y=layout[sel, 1], mode="markers", name=name, legendgroup=name,
                showlegend=col == 1, marker=dict(size=4, color=PALETTE[g_pos % len(PALETTE)], opacity=0.75),
                customdata=indices[sel], hovertemplate=f"{name}<br>index %{{customdata}}<extra>{model}</extra>",
            ), row=1, col=col)
        if query is not None:
            fig.add_trace(go.Scatter(x=[query[col - 1][0]], y=[query[col - 1][1]], mode="markers", name="query",
                                     legendgroup="query", showlegend=col == 1, hovertemplate="the query<extra></extra>",
                                     marker=dict(symbol="star", size=16, color="black", line=dict(color="white",
                                                                                                   width=1))),
                          row=1, col=col)
        fig.update_xaxes(showticklabels=False, zeroline=False, row=1, col=col)
        fig.update_yaxes(showticklabels=False, zeroline=False, scaleanchor=f"x{col if col > 1 else ''}",
                         row=1, col=col)
    fig.update_layout(height=460, margin=dict(l=10, r=10, t=70, b=10), legend=dict(itemsizing="constant"),
                      title=dict(text=f"UMAP of {_how_many(len(indices), total)}, aligned to {labels_text[0]}"
                                 if labels_text else "no models", x=0.01))
    return fig


def score_title(model: str, knn: float | None, silhouette_value: float | None) -> str:
    """Subplot title: the model, its k-NN accuracy and silhouette (n/a when the gallery has no labels)."""
    knn_text = "n/a" if knn is None or math.isnan(knn) else f"{knn:.1%}"
    sil_text = "n/a" if silhouette_value is None or math.isnan(silhouette_value) else f"{silhouette_value:.3f}"
    return f"<b>{model}</b><br>20-NN acc {knn_text} · silhouette {sil_text}"


def _how_many(shown: int, total: int | None) -> str:
    if total is None or shown >= total:
        return f"{shown} gallery images"
    return f"a seeded sample of {shown:,} of the gallery's {total:,} images"


def projection_handler(explorer, progress: Progress = no_progress, image: Any = None) -> tuple[Any, str]:
    """(plotly figure of the aligned UMAP panels, markdown table of k-NN accuracy and silhouette); with `image`,
    the query is placed in every panel (among its most similar projected images)."""
    result = explorer.projection(progress=progress)
    gallery = explorer.gallery
    titles = [score_title(m, knn, sil) for m, knn, sil in zip(explorer.labels, result.knn, result.silhouette)]
    labels = None if gallery.labels is None else gallery.labels[result.indices]
    picture = read_query(image)
    query = None if picture is None else [explorer.place(i, explorer.embed_images(i, [picture])[0], result)
                                          for i in range(len(explorer.entries))]
    figure = projection_figure(explorer.labels, result.layouts, result.indices, labels, gallery.classes, titles,
                               total=len(gallery), query=query)
    where = "the projected sample" if explorer.collections else "whole gallery"
    table = [f"| model | 20-NN accuracy (leave-one-out, {where}) | silhouette (cosine, subsample) |",
             "|---|---|---|"]
    for model, knn, sil in zip(explorer.labels, result.knn, result.silhouette):
        knn_text = "n/a" if knn is None else f"{knn:.2%}"
        table.append(f"| {model} | {knn_text} | {'n/a' if sil is None else f'{sil:.3f}'} |")
    return figure, "\n".join(table)


def projection_export(explorer) -> list[str]:
    """[CSV of every model's 2-D layout (model, gallery index, label, x, y), JSON of the scores]."""
    result = explorer.projection()
    gallery = explorer.gallery
    rows = [[model, int(i), gallery.label_name(int(i)), round(float(x), 5), round(float(y), 5)]
            for model, layout in zip(explorer.labels, result.layouts) for i, (x, y) in zip(result.indices, layout)]
    scores = [{"model": m, "knn_leave_one_out": k, "silhouette": s}
              for m, k, s in zip(explorer.labels, result.knn, result.silhouette)]
    folder = exports.export_folder()
    return [exports.write_csv(folder, "umap", ["model", "gallery_index", "label", "x", "y"], rows),
            exports.write_json(folder, "umap-scores", scores)]


def build(ctx: TabContext, tab: gr.Tab) -> list[dict]:
    @gradio_errors
    def projection(image=None, progress=gr.Progress()):
        """2-D UMAP of the gallery (or of a seeded sample of a large one) per model, aligned to the first model, with
        k-NN accuracy and silhouette; the query image, when given, placed in every panel.

        Parameters:
            image: an optional query image to place among the projected images
        Returns:
            plotly figure, scores table (markdown)
        """
        return projection_handler(ctx.explorer, progress, image)

    button = gr.Button("Show / refresh the projection")
    plot = gr.Plot(label="UMAP of the gallery, aligned across models", elem_id="projection")
    scores = gr.Markdown(label="Projection scores")
    with gr.Row():
        export_button = gr.Button("Export the layouts (CSV + JSON; the plot's camera icon saves a PNG)", size="sm")
        files = gr.File(label="Downloads", file_count="multiple", interactive=False, height=80)
    gr.on([button.click, tab.select], fn=projection, inputs=[ctx.query], outputs=[plot, scores],
          api_name="projection", preprocess=False)
    export_button.click(gradio_errors(lambda: projection_export(ctx.explorer)), None, files,
                        api_visibility="private")
    return []
