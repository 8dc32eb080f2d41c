"""`packed_crops: auto`: packed or separate crop passes, whichever computes a step's gradients faster here.

Both give the same loss and gradients (tests/test_dinov2.py); which is faster depends on the CPU or GPU, the dtype
and the crop sizes (on the project's bf16 CPU, packing is 1.4x faster at the scenes preset's shape and slower at
the bench preset's, README Performance). So `auto` times both, once, when a run starts: forward and backward of
the run's own objective on its first batch, on a copy of the objective so the run's state is untouched. A few
steps' time, once per run; a resumed run reads the choice from its config.yaml.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager

import torch

TRIALS = 2  # timed runs per form, after one untimed warm-up run


def packed_is_faster(objective, global_views: list[torch.Tensor], local_views: list[torch.Tensor],
                     values: Mapping[str, float], autocast: Callable[[], AbstractContextManager]) -> bool:
    """Whether `compute_gradients(packed=True)` beats the separate passes on these views (best of TRIALS each)."""
    trial = copy.deepcopy(objective)
    times = {}
    for packed in (False, True):
        best = float("inf")
        for attempt in range(TRIALS + 1):
            trial.student.zero_grad(set_to_none=True)
            _sync(global_views[0].device)
            start = time.perf_counter()
            trial.compute_gradients(trial.student, global_views, local_views, values, autocast=autocast,
                                    packed=packed)
            _sync(global_views[0].device)
            if attempt:
                best = min(best, time.perf_counter() - start)
        times[packed] = best
    return times[True] < times[False]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
