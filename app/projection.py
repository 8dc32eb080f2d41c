"""Embeddings tab: each model's 2-D UMAP of one seeded gallery subsample, aligned across models, in plotly.

Every model embeds the same subsample, so point i is the same image in every panel. UMAP's output has an
arbitrary position, scale, rotation and reflection; each layout is centred and scaled to unit RMS radius, then
rotated/reflected onto the first model's layout by an orthogonal Procrustes fit (scipy), so the same images
land in the same place when the models agree, and disagreement shows as scattered colours rather than as an
arbitrary rotation.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.colors import qualitative
from plotly.subplots import make_subplots
from scipy.linalg import orthogonal_procrustes

UMAP_POINTS = 2000  # points per layout: enough to see clusters, a few seconds of UMAP on a CPU
UMAP_NEIGHBORS = 15
SEED = 0
PALETTE = qualitative.D3 + qualitative.Plotly + qualitative.Dark24


def subsample(n_total: int, n: int = UMAP_POINTS, seed: int = SEED) -> np.ndarray:
    """Sorted, seeded sample of min(n, n_total) indices out of range(n_total)."""
    if n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, n, replace=False))


def umap_2d(embeddings: np.ndarray, seed: int = SEED, n_epochs: int | None = None,
            n_neighbors: int = UMAP_NEIGHBORS) -> np.ndarray:
    """(N, D) -> (N, 2) float32 UMAP with cosine distance, seeded (single-threaded, reproducible)."""
    import umap  # numba-compiled on first use: imported only when a layout must be computed

    n = len(embeddings)
    if n < 4:  # UMAP needs a neighbourhood; a handful of points is shown as its first two coordinates
        out = np.zeros((n, 2), np.float32)
        out[:, : min(2, embeddings.shape[1])] = embeddings[:, :2]
        return out
    reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, n - 1), metric="cosine",
                        random_state=seed, n_epochs=n_epochs, init="spectral" if n > 64 else "random")
    with warnings.catch_warnings(), keep_torch_threads():
        warnings.simplefilter("ignore")  # "n_jobs overridden by setting random_state", spectral-init notes
        return reducer.fit_transform(embeddings).astype(np.float32)


@contextlib.contextmanager
def keep_torch_threads():
    """Give torch its thread count back afterwards. Starting its thread pool, numba (under UMAP) can set the
    OpenMP thread count that torch and faiss share to every core: measured, a process started with
    `OMP_NUM_THREADS=1` computed with 2 threads after its first layout."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def standardize(layout: np.ndarray) -> np.ndarray:
    """Centred, scaled to unit root-mean-square distance from the centre."""
    centred = layout - layout.mean(axis=0, keepdims=True)
    scale = math.sqrt(float((centred**2).sum(axis=1).mean())) or 1.0
    return centred / scale


def align_layouts(layouts: list[np.ndarray]) -> list[np.ndarray]:
    """Standardize each layout and rotate/reflect every one onto the first (orthogonal Procrustes)."""
    standard = [standardize(np.asarray(l, np.float64)) for l in layouts]
    if not standard:
        return []
    reference = standard[0]
    aligned = [reference]
    for layout in standard[1:]:
        rotation, _ = orthogonal_procrustes(layout, reference)  # argmin_R ||layout R - reference||, R^T R = I
        aligned.append(layout @ rotation)
    return [a.astype(np.float32) for a in aligned]


def projection_figure(labels_text: list[str], layouts: list[np.ndarray], indices: np.ndarray,
                      point_labels: np.ndarray | None, classes: list[str] | None,
                      titles: list[str]) -> go.Figure:
    """Side-by-side scatter panels, one per model, coloured by class with one shared legend; hover shows the
    image's label and gallery index."""
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
        fig.update_xaxes(showticklabels=False, zeroline=False, row=1, col=col)
        fig.update_yaxes(showticklabels=False, zeroline=False, scaleanchor=f"x{col if col > 1 else ''}",
                         row=1, col=col)
    fig.update_layout(height=460, margin=dict(l=10, r=10, t=70, b=10), legend=dict(itemsizing="constant"),
                      title=dict(text=f"UMAP of {len(indices)} gallery images, aligned to {labels_text[0]}"
                                 if labels_text else "no models", x=0.01))
    return fig


def score_title(model: str, knn: float | None, silhouette_value: float | None) -> str:
    """Subplot title: the model, its k-NN accuracy and silhouette (n/a when the gallery has no labels)."""
    knn_text = "n/a" if knn is None or math.isnan(knn) else f"{knn:.1%}"
    sil_text = "n/a" if silhouette_value is None or math.isnan(silhouette_value) else f"{silhouette_value:.3f}"
    return f"<b>{model}</b><br>20-NN acc {knn_text} · silhouette {sil_text}"
