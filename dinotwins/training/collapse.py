"""Collapse monitor: watches the logged rows and says when a run has collapsed.

A sign of collapse is a logged column inside one of the objective's `CollapseBand`s (objectives/collapse_bands.py)
or the band every objective shares (`embedding_band`). A sign must persist for `patience` consecutive logged rows
after `warmup_steps`. Torch-free.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

from dinotwins.objectives.collapse_bands import CollapseBand


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
