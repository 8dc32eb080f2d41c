"""2-D layouts of embeddings for the Embeddings tab: a seeded subsample, UMAP, and alignment across models.

Every model embeds the same subsample, so point i is the same image in every panel. UMAP's output has an
arbitrary position, scale, rotation and reflection; each layout is centred and scaled to unit RMS radius, then
rotated/reflected onto the first model's layout by an orthogonal Procrustes fit (scipy), so the same images
land in the same place when the models agree, and disagreement shows as scattered colours rather than as an
arbitrary rotation.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.linalg import orthogonal_procrustes

from dinotwins.cpu import torch_threads

UMAP_POINTS = 2000  # points per layout: enough to see clusters, a few seconds of UMAP on a CPU
UMAP_NEIGHBORS = 15
SEED = 0


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
    # Starting its thread pool, numba (under UMAP) can set the OpenMP thread count that torch and faiss share to every
    # core: measured, a process started with `OMP_NUM_THREADS=1` computed with 2 threads after its first layout.
    with warnings.catch_warnings(), torch_threads():
        warnings.simplefilter("ignore")  # "n_jobs overridden by setting random_state", spectral-init notes
        return reducer.fit_transform(embeddings).astype(np.float32)


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
