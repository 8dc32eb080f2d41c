"""Timing two or more ways of doing one thing against each other, on a machine whose speed drifts.

Every choice the code makes by measuring (`--precision auto`, `attention: auto`, `packed_crops: auto`) and the
benchmarks that compare two forms time their candidates interleaved: one run of each per round, the order
reversed every other round, so a load that comes or goes mid-timing, or a cache warmed by the run before, falls on
every candidate alike. What to keep from the rounds (the best, the sum, the pairs' ratios) is the caller's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping
from contextlib import AbstractContextManager
from typing import TypeVar

import torch
from torch import nn

Key = TypeVar("Key", bound=Hashable)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU), so a timing covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_seconds(candidates: Mapping[Key, Callable[[], object]], rounds: int, warmup: int = 0,
                        device: torch.device = torch.device("cpu"),
                        before_each: Callable[[Key], object] | None = None) -> dict[Key, list[float]]:
    """Each candidate's seconds in each of `rounds` rounds, after `warmup` untimed ones: one call of every candidate
    per round, in the given order in even rounds and reversed in odd ones, the device's queued work waited for
    around each call. `before_each(key)`, untimed, runs just before that candidate's call (a reset)."""
    seconds: dict[Key, list[float]] = {key: [] for key in candidates}
    order = list(candidates)
    for number in range(warmup + rounds):
        for key in order if number % 2 == 0 else reversed(order):
            if before_each is not None:
                before_each(key)
            synchronize(device)
            start = time.perf_counter()
            candidates[key]()
            synchronize(device)
            if number >= warmup:
                seconds[key].append(time.perf_counter() - start)
    return seconds


def best_seconds(candidates: Mapping[Key, Callable[[], object]], rounds: int, **kwargs) -> dict[Key, float]:
    """Each candidate's fastest round of `interleaved_seconds`."""
    return {key: min(times) for key, times in interleaved_seconds(candidates, rounds, **kwargs).items()}


def forward_backward(module: nn.Module, x: torch.Tensor,
                     autocast: Callable[[], AbstractContextManager]) -> Callable[[], None]:
    """A candidate that runs `module(x)` under `autocast()` and backpropagates its sum: a layer's cost in training."""
    def run() -> None:
        with autocast():
            out = module(x)
        out.float().sum().backward()
    return run
