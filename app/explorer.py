"""The app's shared state: its models, its gallery, and what is derived from them (embeddings, FAISS indexes,
scores, UMAP layouts), each computed once, on first use, and kept in memory and in the on-disk cache.

Two kinds of gallery: one held in memory, embedded by the app itself (the evaluation's features, an exact index);
or a prebuilt collection per model (`collections`: extraction folders with their indexes, memory-mapped, opened at
once, for galleries of millions), where nothing is embedded in the app and the projection's scores are measured on
its seeded sample.

One `Explorer` per built app (no module globals). Handlers for every tab take it as their first argument.
Work is serialized by a lock (one for embeddings/indexes/scores, one for the long UMAP work): two browser tabs
asking for the same embeddings compute them once.
`progress(fraction, desc=...)` callbacks (gr.Progress fits) report first-time work.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import faiss
import numpy as np
from PIL import Image

from app import projection, scores
from app.cache import ArtifactCache, cache_key
from app.gallery import Gallery
from app.models import ModelEntry
from dinotwins.evaluation.features import embed_batch, extract_features
from dinotwins.evaluation.knn import exact_index, l2_normalize, search

Progress = Callable[..., None]


def no_progress(*_args, **_kwargs) -> None:
    return None


def _share(progress: Progress, part: int, parts: int) -> Progress:
    """Progress of part `part` of `parts`, reported as a share of the whole."""
    def report(fraction: float, desc: str = "") -> None:
        progress((part + fraction) / parts, desc=desc)
    return report


@dataclass
class Neighbours:
    """One model's answer to one query."""

    model: str
    indices: np.ndarray  # (k,) gallery indices, most similar first
    similarities: np.ndarray  # (k,) cosine
    precision: float | None  # precision@k, None when the query has no label


@dataclass
class Projection:
    """Aligned 2-D layouts of one subsample, with per-model scores."""

    indices: np.ndarray  # (n,) gallery indices
    layouts: list[np.ndarray]  # per model (n, 2), aligned to the first
    knn: list[float | None]  # leave-one-out k-NN accuracy on the whole gallery (a collection: on the subsample)
    silhouette: list[float | None]  # cosine silhouette of the subsample's embeddings


@dataclass
class Explorer:
    entries: list[ModelEntry]
    gallery: Gallery
    cache: ArtifactCache
    umap_points: int = projection.UMAP_POINTS
    umap_epochs: int | None = None  # None: UMAP's default (200 epochs for > 10k points, else 500)
    seed: int = projection.SEED
    collections: list | None = None  # one opened `Collection` per model: a prebuilt gallery (see the docstring)
    _embeddings: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    _indexes: dict[int, faiss.Index] = field(default_factory=dict, repr=False)
    _scores: dict[int, dict] = field(default_factory=dict, repr=False)
    _projection: Projection | None = field(default=None, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)  # embeddings, indexes, scores
    _projection_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # UMAP: long, apart

    @property
    def labels(self) -> list[str]:
        return [e.label for e in self.entries]

    def key(self, i: int) -> str:
        """Cache key of model i on this gallery (its index, layouts, scores): weights, gallery pixels and labels,
        preprocessing."""
        m = self.entries[i].model
        preprocessing = {"transform": "eval_transform", "image_size": m.image_size, "mean": list(m.mean),
                         "std": list(m.std), "gallery_size": self.gallery.size}
        return cache_key(weights=m.weights_hash, gallery=self.gallery.key, gallery_spec=self.gallery.spec,
                         preprocessing=preprocessing)

    # ----------------------------------------------------------------------------------------- embeddings
    def embed_images(self, i: int, images: list[Image.Image]) -> np.ndarray:
        """(len(images), D) L2-normalized embeddings by model i, taken as the gallery's are (`embed_batch`)."""
        model = self.entries[i].model
        return l2_normalize(embed_batch(model, model.preprocess(images)))

    def embeddings(self, i: int, progress: Progress = no_progress) -> np.ndarray:
        """(N, D) L2-normalized float32 embeddings of the whole gallery by model i: the evaluation's features
        (`extract_features`, its cache under the app's cache folder)."""
        with self._lock:
            if i not in self._embeddings:
                progress(0.0, desc=f"embedding the gallery with {self.entries[i].label}")
                features = extract_features(self.entries[i].model, self.gallery.as_dataset(),
                                            cache_dir=self.cache.root / "features", progress=False)
                self._embeddings[i] = l2_normalize(features)
            return self._embeddings[i]

    def rows(self, i: int, indices: np.ndarray) -> np.ndarray:
        """(len(indices), D) L2-normalized float32 embeddings of those gallery images by model i."""
        if self.collections:
            return l2_normalize(self.collections[i].take(np.asarray(indices)))
        return self.embeddings(i)[indices]

    def index(self, i: int, progress: Progress = no_progress) -> faiss.Index:
        """Cosine (inner-product) FAISS index over model i's gallery: the collection's own (memory-mapped, tuned)
        or an exact one over the app's embeddings."""
        with self._lock:
            if i in self._indexes:
                return self._indexes[i]
            if self.collections:
                from dinotwins.collection.index import open_index

                self._indexes[i] = open_index(self.collections[i])[0]
                return self._indexes[i]
            embeddings = self.embeddings(i, progress)
            key = self.key(i)
            index = self.cache.load_index(key, "index.faiss", ntotal=len(embeddings), dim=embeddings.shape[1])
            if index is None:
                index = exact_index(embeddings)
                self.cache.save_index(key, "index.faiss", index)
            self._indexes[i] = index
            return index

    def place(self, i: int, query: np.ndarray, result: Projection, k: int = 10) -> np.ndarray:
        """(2,) position of a query embedding (D,) in model i's aligned layout: the mean of its k most similar
        projected images' positions, weighted by similarity (an out-of-sample placement; UMAP is not refitted)."""
        sims = self.rows(i, result.indices) @ l2_normalize(query[None])[0]
        nearest = np.argsort(-sims)[:k]
        weights = np.maximum(sims[nearest], 1e-6)
        return (result.layouts[i][nearest] * weights[:, None]).sum(0) / weights.sum()

    def prepare(self, progress: Progress = no_progress) -> None:
        """Embeddings and indexes of every model (what retrieval needs), with progress."""
        for i in range(len(self.entries)):
            self.index(i, _share(progress, i, len(self.entries)))

    # ----------------------------------------------------------------------------------------- retrieval
    def neighbours(self, image: Image.Image | None, k: int, query_index: int | None = None,
                   query_label: int | None = None, progress: Progress = no_progress) -> list[Neighbours]:
        """Each model's top-k. A gallery query (query_index) uses its cached embedding and label and is left
        out of its own list; an uploaded query uses `query_label` (None: no precision)."""
        if query_index is not None:
            query_label = int(self.gallery.labels[query_index]) if self.gallery.labels is not None else None
        results = []
        for i, entry in enumerate(self.entries):
            index = self.index(i, _share(progress, i, len(self.entries)))
            if query_index is not None:
                query = self.rows(i, np.array([query_index]))
            else:
                query = self.embed_images(i, [image])
            sims, ids = search(index, query, k, exclude=query_index)
            precision = None
            if query_label is not None and self.gallery.labels is not None:
                precision = float(np.mean(self.gallery.labels[ids[0]] == query_label))
            results.append(Neighbours(entry.label, ids[0], sims[0], precision))
        return results

    # ----------------------------------------------------------------------------------------- projection
    def scores(self, i: int, indices: np.ndarray, progress: Progress = no_progress) -> dict:
        """{'knn': LOO k-NN accuracy, 'silhouette': on the subsample}; None values without labels."""
        with self._lock:
            if i in self._scores:
                return self._scores[i]
            name = f"scores-n{len(indices)}-s{self.seed}.json"
            key = self.key(i)
            value = self.cache.load_json(key, name)
            if value is None or set(value) != {"knn", "silhouette"}:
                value = {"knn": None, "silhouette": None}
                if self.gallery.labels is not None:
                    progress(0.0, desc=f"k-NN accuracy of {self.entries[i].label}")
                    if self.collections:  # millions of images: the vote among the projected sample only
                        sample, labels = self.rows(i, indices), self.gallery.labels[indices]
                        value["knn"] = scores.knn_accuracy_leave_one_out(exact_index(sample), sample, labels)
                    else:
                        embeddings = self.embeddings(i, progress)
                        value["knn"] = scores.knn_accuracy_leave_one_out(self.index(i), embeddings,
                                                                         self.gallery.labels)
                    value["silhouette"] = scores.silhouette(self.rows(i, indices), self.gallery.labels[indices])
                self.cache.save_json(key, name, value)
            self._scores[i] = {k: (None if v is None else float(v)) for k, v in value.items()}
            return self._scores[i]

    def projection(self, progress: Progress = no_progress) -> Projection:
        """Aligned UMAP layouts of the seeded subsample for every model, and their scores. Holds its own lock, so
        retrieval keeps answering while a first-time UMAP runs."""
        with self._projection_lock:
            if self._projection is not None:
                return self._projection
            indices = projection.subsample(len(self.gallery), self.umap_points, self.seed)
            name = f"umap-n{len(indices)}-s{self.seed}-e{self.umap_epochs or 'auto'}.npy"
            layouts, knn, silhouette = [], [], []
            for i, entry in enumerate(self.entries):
                step = _share(progress, i, len(self.entries))
                key = self.key(i)
                layout = self.cache.load_array(key, name, shape=(len(indices), 2), dtype=np.float32)
                if layout is None:
                    sample = self.rows(i, indices)
                    step(0.5, desc=f"UMAP of {len(indices)} images for {entry.label} (first time only)")
                    layout = projection.umap_2d(sample, seed=self.seed, n_epochs=self.umap_epochs)
                    self.cache.save_array(key, name, layout)
                layouts.append(layout)
                value = self.scores(i, indices, step)
                knn.append(value["knn"])
                silhouette.append(value["silhouette"])
            self._projection = Projection(indices, projection.align_layouts(layouts), knn, silhouette)
            return self._projection
