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

NEIGHBOURS = 10
_CHUNK = 1024  # query rows per similarity block, so memory stays O(chunk x N)


def shared_neighbours(features: np.ndarray, made_from: dict[str, torch.Tensor],
                      k: int = NEIGHBOURS) -> dict[str, float | None]:
    """{name: share of the k nearest neighbours made from the same `name`} (None where no image has one)."""
    feats = torch.nn.functional.normalize(torch.as_tensor(features, dtype=torch.float32), dim=1)
    k = min(k, len(feats) - 1)
    nearest = []
    for start in range(0, len(feats), _CHUNK):
        sims = feats[start:start + _CHUNK] @ feats.T
        rows = torch.arange(start, start + len(sims))
        sims[torch.arange(len(sims)), rows] = -float("inf")  # not itself
        nearest.append(sims.topk(k, dim=1).indices)
    nearest = torch.cat(nearest) if k > 0 else torch.empty(len(feats), 0, dtype=torch.long)
    shares: dict[str, float | None] = {}
    for name, ids in made_from.items():
        ids = torch.as_tensor(ids).cpu()
        known = ids >= 0
        if not known.any() or k == 0:
            shares[name] = None
            continue
        same = ids[nearest[known]] == ids[known, None]
        shares[name] = same.float().mean().item()
    return shares
