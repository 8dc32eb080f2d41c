"""Collapse monitor: watches the logged rows and says when a run has collapsed.

A sign of collapse is a logged column inside its `CollapseBand`; the bands come from the objective
(`Objective.collapse_bands`: DINO's loss at ln K, its teacher entropy and KL; Barlow's diagonal) plus the one every
objective logs: the std of L2-normalized embeddings far below 1/sqrt(d) (all images map to one point). A sign must
persist for `patience` consecutive logged rows after `warmup_steps`. The same bands are the threshold lines the
explorer draws under each curve. Torch-free.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CollapseBand:
    """Collapse when the logged `key` lies strictly between `low` and `high` (an open end is +-inf)."""

    key: str
    low: float
    high: float
    meaning: str

    def hit(self, row: Mapping[str, float]) -> bool:
        value = row.get(self.key)
        return isinstance(value, (int, float)) and self.low < value < self.high

    def edges(self) -> list[float]:
        """The band's finite ends: the threshold lines to draw."""
        return [v for v in (self.low, self.high) if math.isfinite(v)]


def embedding_band(embed_dim: int) -> CollapseBand:
    """Every objective's: the std of L2-normalized embeddings below a tenth of 1/sqrt(d)."""
    return CollapseBand("embed_std", -math.inf, 0.1 / math.sqrt(embed_dim),
                        "embedding std is far below 1/sqrt(d) (all images map to one point)")


class CollapseMonitor:
    def __init__(self, bands: Sequence[CollapseBand], warmup_steps: int, patience: int = 5):
        self.bands = tuple(bands)
        self.warmup_steps = warmup_steps
        self.patience = patience
        self.history: deque[set[str]] = deque(maxlen=patience)

    def reasons(self, row: Mapping[str, float]) -> set[str]:
        """Collapse signs present in one logged row."""
        return {band.meaning for band in self.bands if band.hit(row)}

    def update(self, row: Mapping[str, float]) -> set[str]:
        """Signs that persisted for `patience` rows (empty set when healthy or still warming up)."""
        if row["step"] < self.warmup_steps:
            return set()
        self.history.append(self.reasons(row))
        if len(self.history) < self.patience:
            return set()
        return set.intersection(*self.history)
