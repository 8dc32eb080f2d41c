"""Retrieval tab: a query image -> each model's top-k gallery neighbours by cosine similarity (FAISS).

Cosine similarity is an inner product of L2-normalized embeddings, searched exactly with `IndexFlatIP`.
Precision@k is the share of the k neighbours with the query's label; it needs a query label: a gallery query
uses its own label (and is excluded from its own neighbours), an uploaded query uses the class the user picks,
else precision is n/a. The models' lists are compared by the Jaccard index of their neighbour sets.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
from PIL import Image

DEFAULT_K = 8
TILE = 96  # neighbour thumbnails, px


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32 (zero rows stay zero)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def build_index(embeddings: np.ndarray) -> faiss.IndexFlatIP:
    """Exact inner-product index over L2-normalized `embeddings` (N, D): inner product = cosine."""
    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(l2_normalize(embeddings))
    return index


def search(index: faiss.Index, queries: np.ndarray, k: int, exclude: int | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (similarities, indices), each (Q, k), of normalized `queries`; `exclude` drops one gallery index
    (the query itself) from every list."""
    k = max(1, min(k, index.ntotal - (exclude is not None)))
    sims, ids = index.search(l2_normalize(queries), k + (exclude is not None))
    if exclude is None:
        return sims, ids
    keep = ids != exclude
    keep[keep.sum(axis=1) > k, -1] = False  # the query was not among the k + 1: drop the last instead
    return sims[keep].reshape(len(ids), k), ids[keep].reshape(len(ids), k)


def precision_at_k(neighbour_labels: np.ndarray, query_label: int) -> float:
    return float(np.mean(neighbour_labels == query_label))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|A ∩ B| / |A ∪ B| of two index lists (1.0 for two empty lists)."""
    set_a, set_b = set(np.asarray(a).tolist()), set(np.asarray(b).tolist())
    union = set_a | set_b
    return len(set_a & set_b) / len(union) if union else 1.0


@dataclass
class Neighbours:
    """One model's answer to one query."""

    model: str
    indices: np.ndarray  # (k,) gallery indices, most similar first
    similarities: np.ndarray  # (k,) cosine
    precision: float | None  # precision@k, None when the query has no label


def overlap_matrix(results: list[Neighbours]) -> list[list[str]]:
    """Rows of a table: model, then the Jaccard overlap with every model (1.00 on the diagonal)."""
    return [[a.model] + [f"{jaccard(a.indices, b.indices):.2f}" for b in results] for a in results]


def thumbnails(gallery, result: Neighbours) -> list[tuple[Image.Image, str]]:
    """(image, caption) per neighbour, for a gr.Gallery: 'label · cosine · #index'."""
    items = []
    for index, sim in zip(result.indices.tolist(), result.similarities.tolist()):
        tile = gallery.image(index).resize((TILE, TILE), Image.Resampling.NEAREST)
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
