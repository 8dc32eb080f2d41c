"""Two collapse measures of a set of embeddings (N, D).

- `effective_rank` (Roy & Vetterli 2007): exp of the Shannon entropy of the singular values of the centered
  feature matrix, normalized to sum one. D for D equally strong directions, 1 when everything lies on a line,
  0 when every row is the same point (nothing left after centering).
- `embedding_std`: the mean over dimensions of the per-dimension std of the L2-normalized embeddings (the
  trainer logs the same signal as `embed_std`). Healthy spread gives about 1 / sqrt(D); collapse gives 0.

Pure numpy; float64 throughout.
"""

from __future__ import annotations

import numpy as np


def singular_values(features: np.ndarray) -> np.ndarray:
    """Singular values of the centered (N, D) matrix, from the eigenvalues of its smaller Gram matrix."""
    x = np.asarray(features, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    gram = x.T @ x if x.shape[0] >= x.shape[1] else x @ x.T  # (min(N, D), min(N, D))
    return np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0.0, None))


def effective_rank(features: np.ndarray) -> float:
    """exp(H(p)), p = singular values / their sum, of the centered features; 0 for a single repeated point."""
    features = np.asarray(features, dtype=np.float64)
    sigma = singular_values(features)
    # Rows equal up to rounding leave only rounding noise after centering: that is rank 0, not noise's rank.
    rounding = 1e-10 * np.abs(features).max(initial=0.0) * np.sqrt(features.size)
    if sigma.max(initial=0.0) <= rounding:
        return 0.0
    p = sigma[sigma > 0] / sigma.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def embedding_std(features: np.ndarray) -> float:
    """Mean over dimensions of the std (over rows, ddof 1) of the L2-normalized rows."""
    x = np.asarray(features, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return float(x.std(axis=0, ddof=1).mean()) if len(x) > 1 else 0.0
