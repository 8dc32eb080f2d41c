"""Linear foreground probe on frozen patch tokens: does each patch's own token tell object from background?

The DINOv2 paper's linear segmentation probe reduced to two classes, on data with exact object masks. A patch is
foreground when the object covers at least half of it. `foreground_probe_iou` standardizes the train patches'
tokens, fits a logistic regression (scikit-learn, C = 1) and returns the intersection over union of the predicted
and the true foreground patches over the whole test set. It reads the patch tokens, where the attention figures
read the CLS token's attention: a model can know where the object is in its patches while its CLS ignores it.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import Tensor

from dinotwins.evaluation.attention_masks import patch_cover

FOREGROUND_COVER = 0.5  # a patch is foreground when the object covers at least this share of it
MAX_ITER = 1000


def patch_foreground(object_masks: Tensor, grid: tuple[int, int]) -> Tensor:
    """bool (N, h, w): the patches of a (h, w) grid the object covers at least `FOREGROUND_COVER` of."""
    return patch_cover(object_masks, grid) >= FOREGROUND_COVER


def foreground_probe_iou(train_tokens: Tensor, train_masks: Tensor, test_tokens: Tensor,
                         test_masks: Tensor) -> float | None:
    """IoU of the test patches predicted foreground with the true ones; tokens (N, h, w, D), masks bool (N, H, W).
    None when the train patches are all of one kind (nothing to fit)."""
    grid = tuple(train_tokens.shape[1:3])
    x = train_tokens.reshape(-1, train_tokens.shape[-1]).double().numpy()
    y = patch_foreground(train_masks, grid).reshape(-1).numpy()
    if y.all() or not y.any():
        return None
    scaler = StandardScaler().fit(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe = LogisticRegression(max_iter=MAX_ITER).fit(scaler.transform(x), y)
    test_grid = tuple(test_tokens.shape[1:3])
    predicted = probe.predict(scaler.transform(test_tokens.reshape(-1, test_tokens.shape[-1]).double().numpy()))
    truth = patch_foreground(test_masks, test_grid).reshape(-1).numpy()
    union = np.logical_or(predicted, truth).sum()
    return float(np.logical_and(predicted, truth).sum() / union) if union else 1.0
