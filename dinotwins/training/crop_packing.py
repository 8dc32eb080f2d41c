"""`packed_crops: auto`: packed or separate crop passes, whichever computes a step's gradients faster here.

Both give the same loss and gradients (tests/test_dinov2.py); which is faster depends on the CPU or GPU, the dtype
and the crop sizes (on the project's bf16 CPU, packing measured from 1.4x faster to no faster at the scenes
preset's shape and slower at the bench preset's, README Performance). So `auto` times both, once, when a run
starts: forward and backward of the run's own objective on its first batch, interleaved, on a copy of the
objective so the run's state is untouched. A few steps' time, once per run; a resumed run reads the choice from
its config.yaml.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager

import torch

from dinotwins.training.distributed import synchronize

TRIALS = 3  # timed rounds (one run of each form), after one untimed round


def packed_is_faster(objective, global_views: list[torch.Tensor], local_views: list[torch.Tensor],
                     values: Mapping[str, float], autocast: Callable[[], AbstractContextManager]) -> bool:
    """Whether `compute_gradients(packed=True)` beats the separate passes on these views: TRIALS rounds of one run
    of each, interleaved (so a machine whose speed drifts slows both alike), after one untimed round."""
    trial = copy.deepcopy(objective)
    seconds = {False: 0.0, True: 0.0}
    for attempt in range(TRIALS + 1):
        for packed in (False, True):
            trial.student.zero_grad(set_to_none=True)
            synchronize(global_views[0].device)
            start = time.perf_counter()
            trial.compute_gradients(trial.student, global_views, local_views, values, autocast=autocast,
                                    packed=packed)
            synchronize(global_views[0].device)
            if attempt:
                seconds[packed] += time.perf_counter() - start
    return seconds[True] < seconds[False]
