"""Scores shown beside each model's projection: leave-one-out k-NN accuracy and silhouette.

k-NN follows the DINO paper's weighted vote (Wu et al. 2018): the k most cosine-similar gallery images vote for
their label with weight exp(similarity / T), k = 20, T = 0.07. With a gallery only (no separate memory bank)
every image is classified by the others (leave-one-out). Silhouette is scikit-learn's, with cosine distance, on
the embeddings of the projected subsample (so it scores the model, not the 2-D picture).
"""

from __future__ import annotations

import faiss
import numpy as np
from sklearn.metrics import silhouette_score

from dinotwins.evaluation.knn import KNN_K, KNN_TEMPERATURE, knn_vote, own_neighbours, topk_accuracy


def knn_accuracy_leave_one_out(index: faiss.Index, embeddings: np.ndarray, labels: np.ndarray,
                               k: int = KNN_K, temperature: float = KNN_TEMPERATURE, chunk: int = 2048) -> float:
    """Share of gallery images whose k nearest other images (weighted vote) give their own label."""
    n = len(labels)
    k = min(k, n - 1)
    if k < 1:
        return float("nan")
    num_classes = int(labels.max()) + 1
    correct = 0.0
    for start, sims, ids in own_neighbours(index, embeddings, k, chunk):
        votes = knn_vote(sims, labels[ids], num_classes, temperature)
        correct += topk_accuracy(votes, labels[start:start + len(ids)], 1) * len(ids)
    return correct / n


def silhouette(embeddings: np.ndarray, labels: np.ndarray) -> float:
    """Cosine silhouette in [-1, 1]; nan when fewer than two classes or every point is its own class."""
    n_labels = len(np.unique(labels))
    if n_labels < 2 or n_labels >= len(labels):
        return float("nan")
    return float(silhouette_score(embeddings, labels, metric="cosine"))
