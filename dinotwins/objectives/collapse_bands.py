"""What collapse looks like, as each objective declares it: a logged column inside a band.

`Objective.collapse_bands` returns an objective's own (DINO's loss at ln K, its teacher entropy and KL; Barlow's
diagonal); `embedding_band` is the one every objective shares: the std of L2-normalized embeddings far below
1/sqrt(d) (all images map to one point). The training's collapse monitor checks logged rows against them
(training/collapse.py) and the explorer draws their ends as threshold lines under each curve. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
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
