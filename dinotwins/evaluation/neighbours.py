"""What an embedding's nearest neighbours share: on data that records what each image was made from
(`ImageDataset.made_from`; scenes: its object file and background photograph), the share of each test image's k
nearest test images (cosine, itself left out) made from the same thing.

Why: attention and k-NN say how well a model finds the object; this says what it groups images by instead. A model
whose neighbours share background photographs more often than raw pixels' do has learned the backgrounds.

What it is not: a label metric (knn.py); only images with a known source (id >= 0) are queries, and a neighbour
without one never counts as a match.
"""

from __future__ import annotations

import numpy as np
import torch

from dinotwins.evaluation.knn import exact_index, own_neighbours

NEIGHBOURS = 10
_CHUNK = 2048  # queries per search, so the lists stay small for any split


def shared_neighbours(features: np.ndarray, made_from: dict[str, torch.Tensor],
                      k: int = NEIGHBOURS) -> dict[str, float | None]:
    """{name: share of the k nearest neighbours made from the same `name`} (None where no image has one, or with
    fewer than two images)."""
    if len(features) < 2:
        return dict.fromkeys(made_from)
    index = exact_index(features)
    nearest = np.concatenate([ids for _, _, ids in own_neighbours(index, features, k, _CHUNK)])  # (N, k)
    shares: dict[str, float | None] = {}
    for name, ids in made_from.items():
        ids = np.asarray(torch.as_tensor(ids).cpu())
        known = ids >= 0
        shares[name] = float((ids[nearest[known]] == ids[known, None]).mean()) if known.any() else None
    return shares
