"""Schedules indexed by global step (pure functions), as in DINO's `cosine_scheduler`.

Every value a run changes over time (learning rate, weight decay, and the objectives' own, such as DINO's teacher
momentum and temperature) is a function of (step, `RunLength`, ...), so a resumed run needs only its step to be
back on every schedule. Torch-free; the trainer and the objectives both read them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RunLength:
    """A run's length in steps, for schedules whose phases are given in epochs."""

    steps_per_epoch: int
    total_steps: int

    def phase_steps(self, epochs: float, at_most_one_in: int) -> int:
        """The steps of an opening phase given in epochs, clipped to 1/`at_most_one_in` of the run so a short run
        keeps the phase in proportion."""
        return min(int(epochs * self.steps_per_epoch), self.total_steps // at_most_one_in)


def cosine(step: int, total_steps: int, start: float, end: float, warmup_steps: int = 0,
           warmup_start: float = 0.0) -> float:
    """Linear warm-up from `warmup_start` to `start` over `warmup_steps`, then cosine from `start` to `end`."""
    if step < warmup_steps:
        return warmup_start + (start - warmup_start) * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * progress))


def linear_warmup(step: int, warmup_steps: int, start: float, end: float) -> float:
    """Linear from `start` to `end` over `warmup_steps`, then constant `end` (DINO's teacher temperature)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps


def scaled_lr(base_lr: float, global_batch_size: int) -> float:
    """DINO's linear scaling rule: lr = base_lr * batch / 256."""
    return base_lr * global_batch_size / 256
