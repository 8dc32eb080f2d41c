"""Weighted k-NN classification of frozen features, the DINO paper's protocol (Caron et al. 2021, after Wu et al.
2018).

Features are L2-normalized, so inner product = cosine similarity. Each query finds its k most similar labeled
images (exact search, `faiss.IndexFlatIP`); neighbour j votes for its own label with weight exp(s_j / T); the
votes are summed per class. DINO uses k = 20, T = 0.07.

Top-k accuracy (`topk_accuracy`) counts ties against the query: a query is right at k when fewer than k other
classes score at least as high as its true class. So a query no neighbour voted for is never "right by luck" of
a sort order, while with k >= the number of classes every query is right (all classes are listed).

`exact_index` and `search` are the one nearest-neighbour search of the project: the k-NN vote here and the app's
retrieval, the app's leave-one-out scores and what neighbours share (neighbours.py) use them. What it is not: no
feature extraction (features.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import faiss
import numpy as np

KNN_K = 20  # DINO's k
KNN_TEMPERATURE = 0.07  # DINO's T


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm, float32 and C-contiguous (as FAISS wants); all-zero rows stay zero."""
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return np.ascontiguousarray(features / np.maximum(norms, 1e-12))


def exact_index(features: np.ndarray) -> faiss.IndexFlatIP:
    """Exact inner-product FAISS index over the L2-normalized rows of `features` (N, D): inner product = cosine."""
    index = faiss.IndexFlatIP(features.shape[1])
    index.add(l2_normalize(features))
    return index


def search(index: faiss.Index, queries: np.ndarray, k: int, exclude: int | np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (cosine similarities, indices), each (Q, k), of the normalized `queries`, most similar first;
    `exclude` drops one indexed item from every list (a query that is itself in the index): one id for all
    queries, or one per query, (Q,), for queries that are the index's own items (leave-one-out)."""
    k = max(1, min(k, index.ntotal - (exclude is not None)))
    similarities, ids = index.search(l2_normalize(queries), k + (exclude is not None))
    if exclude is None:
        return similarities, ids
    keep = ids != np.reshape(exclude, (-1, 1))
    keep[keep.sum(axis=1) > k, -1] = False  # the query was not among the k + 1: drop the last instead
    return similarities[keep].reshape(len(ids), k), ids[keep].reshape(len(ids), k)


def own_neighbours(index: faiss.Index, features: np.ndarray, k: int, chunk: int = 2048
                   ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Leave-one-out: for each chunk of `features`, which are the index's own items in order, (first row, cosine
    similarities, indices) of each row's top k other items; chunked so memory stays O(chunk x k)."""
    for start in range(0, len(features), chunk):
        queries = features[start:start + chunk]
        yield (start, *search(index, queries, k, exclude=np.arange(start, start + len(queries))))


def knn_vote(similarities: np.ndarray, neighbour_labels: np.ndarray, num_classes: int,
             temperature: float = KNN_TEMPERATURE) -> np.ndarray:
    """Class scores (Q, C) float64: sum over each query's neighbours of exp(similarity / T), per neighbour label.

    similarities (Q, k) cosine similarities, neighbour_labels (Q, k) ints in [0, num_classes).
    """
    weights = np.exp(np.asarray(similarities, dtype=np.float64) / temperature)  # (Q, k)
    neighbour_labels = np.asarray(neighbour_labels)
    scores = np.zeros((weights.shape[0], num_classes), dtype=np.float64)
    rows = np.arange(weights.shape[0])
    for j in range(weights.shape[1]):  # one neighbour rank at a time: each row gets one index, no collisions
        scores[rows, neighbour_labels[:, j]] += weights[:, j]
    return scores


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of rows whose true class is in the top k of `scores` (Q, C); ties count against the row."""
    labels = np.asarray(labels)
    true_scores = scores[np.arange(len(labels)), labels][:, None]  # (Q, 1)
    rivals = (scores >= true_scores).sum(axis=1) - 1  # other classes scoring at least as high
    return float(np.mean(rivals < k))


def knn_scores(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray, *, k: int = KNN_K,
               temperature: float = KNN_TEMPERATURE, num_classes: int | None = None) -> np.ndarray:
    """(Q, C) weighted-vote class scores of every test feature against the labeled train features.

    k is capped at the number of train features.
    """
    train_labels = np.asarray(train_labels, dtype=np.int64)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    k = min(k, len(train_labels))
    num_classes = num_classes or int(train_labels.max()) + 1
    similarities, neighbours = search(exact_index(train_feats), test_feats, k)  # (Q, k) each
    return knn_vote(similarities, train_labels[neighbours], num_classes, temperature)


def knn_classify(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray,
                 test_labels: np.ndarray, *, k: int = KNN_K,
                 temperature: float = KNN_TEMPERATURE) -> tuple[float, float]:
    """(top-1, top-5) accuracy of the weighted k-NN vote on the test features, using every train label."""
    test_labels = np.asarray(test_labels, dtype=np.int64)
    num_classes = int(max(np.max(train_labels), np.max(test_labels))) + 1
    scores = knn_scores(train_feats, train_labels, test_feats, k=k, temperature=temperature,
                        num_classes=num_classes)
    return topk_accuracy(scores, test_labels, 1), topk_accuracy(scores, test_labels, 5)
