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
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager

import torch

from dinotwins.timing import interleaved_seconds

TRIALS = 3  # timed rounds (one run of each form), after one untimed round


def packed_is_faster(objective, global_views: list[torch.Tensor], local_views: list[torch.Tensor],
                     values: Mapping[str, float], autocast: Callable[[], AbstractContextManager]) -> bool:
    """Whether `compute_gradients(packed=True)` beats the separate passes on these views, by their total over
    TRIALS interleaved rounds (`dinotwins.timing`) after one untimed round."""
    trial = copy.deepcopy(objective)

    def gradients(packed: bool) -> Callable[[], object]:
        return lambda: trial.compute_gradients(trial.student, global_views, local_views, values, autocast=autocast,
                                               packed=packed)

    seconds = interleaved_seconds({False: gradients(False), True: gradients(True)}, TRIALS, warmup=1,
                                  device=global_views[0].device,
                                  before_each=lambda _: trial.student.zero_grad(set_to_none=True))
    return sum(seconds[True]) < sum(seconds[False])
