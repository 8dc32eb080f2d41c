"""Collapse monitor: watches the logged signals and says when a run has collapsed.

Signals (each must persist for `patience` consecutive logged rows after `warmup_steps`):
- DINO loss at ln K (teacher and student both uniform: nothing is learned);
- teacher entropy near 0 (one prototype wins for every image) or near ln K (uniform teacher);
- KL(teacher || student) near 0 (the student copies a trivial teacher);
- std of L2-normalized embeddings far below 1/sqrt(d) (all images map to one point);
- Barlow diagonal far from 1 (rms of 1 - C_ii above 0.9: the views no longer agree on any feature).
"""

from __future__ import annotations

import math
from collections import deque


class CollapseMonitor:
    def __init__(self, out_dim: int | None, embed_dim: int, warmup_steps: int, patience: int = 5):
        self.log_k = math.log(out_dim) if out_dim else None
        self.embed_floor = 0.1 / math.sqrt(embed_dim)
        self.warmup_steps = warmup_steps
        self.patience = patience
        self.history: deque[set[str]] = deque(maxlen=patience)

    def reasons(self, row: dict[str, float]) -> set[str]:
        """Collapse signs present in one logged row."""
        found = set()
        if self.log_k is not None and "teacher_entropy" in row:
            loss_dino = row.get("loss_dino", row.get("loss"))
            if loss_dino is not None and abs(loss_dino - self.log_k) < 0.01 * self.log_k:
                found.add(f"DINO loss sits at ln K = {self.log_k:.2f}")
            if row["teacher_entropy"] < 0.01 * self.log_k:
                found.add("teacher entropy went to 0")
            if row["teacher_entropy"] > 0.99 * self.log_k:
                found.add("teacher entropy went to ln K (uniform teacher)")
            if abs(row.get("kl_teacher_student", 1.0)) < 1e-4:
                found.add("KL(teacher||student) went to 0")
        if row.get("embed_std", 1.0) < self.embed_floor:
            found.add(f"embedding std {row['embed_std']:.2e} is far below 1/sqrt(d)")
        if row.get("barlow_diag_rms_error", 0.0) > 0.9:
            found.add("Barlow cross-correlation diagonal drifted far from 1")
        return found

    def update(self, row: dict[str, float]) -> set[str]:
        """Signs that persisted for `patience` rows (empty set when healthy or still warming up)."""
        if row["step"] < self.warmup_steps:
            return set()
        self.history.append(self.reasons(row))
        if len(self.history) < self.patience:
            return set()
        return set.intersection(*self.history)
