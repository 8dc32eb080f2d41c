"""Collapse monitor: watches the logged rows and says when a run has collapsed.

A sign must persist for `patience` consecutive logged rows after `warmup_steps`. The signs come from the objective
(`Objective.collapse_signs`: DINO's loss at ln K, its teacher entropy and KL; Barlow's diagonal) plus the one every
objective logs: the std of L2-normalized embeddings far below 1/sqrt(d) (all images map to one point).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping


class CollapseMonitor:
    def __init__(self, embed_dim: int, objective_signs: Callable[[Mapping[str, float]], set[str]],
                 warmup_steps: int, patience: int = 5):
        self.embed_floor = 0.1 / math.sqrt(embed_dim)
        self.objective_signs = objective_signs
        self.warmup_steps = warmup_steps
        self.patience = patience
        self.history: deque[set[str]] = deque(maxlen=patience)

    def reasons(self, row: Mapping[str, float]) -> set[str]:
        """Collapse signs present in one logged row."""
        found = set(self.objective_signs(row))
        if row.get("embed_std", 1.0) < self.embed_floor:
            found.add(f"embedding std {row['embed_std']:.2e} is far below 1/sqrt(d)")
        return found

    def update(self, row: Mapping[str, float]) -> set[str]:
        """Signs that persisted for `patience` rows (empty set when healthy or still warming up)."""
        if row["step"] < self.warmup_steps:
            return set()
        self.history.append(self.reasons(row))
        if len(self.history) < self.patience:
            return set()
        return set.intersection(*self.history)
