"""A run's batches, step after step, made ahead of the step that needs them.

`StepBatches(dataset, sampler, steps_per_epoch)` gives the uint8 images of step s: the sampler's batch for
(epoch, position) = divmod(s, steps_per_epoch), gathered by `dataset.training_batch` (decoded from files for a
large folder, rendered for a large generated set, all renderings of a paired one). `prefetched(batches, start,
stop, workers)` iterates them in step order: with `workers` > 0 through a torch DataLoader whose worker processes
decode `prefetch` batches ahead of the training step, overlapping the two; with 0 in this process, one batch when
asked. A batch is a function of its step only, so the workers change the speed, never the images (exact resume
holds either way). Augmentation stays in the training process, on the decoded batch (data/augment.py: batched
tensor ops, seeded by the step).

`workers_for(setting, dataset)`: `auto` (-1) is no worker for data held in memory (nothing to decode) and
`AUTO_WORKERS` (at most the CPU count) for data decoded or rendered per batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch import Tensor

from dinotwins.data.dataset import ImageDataset
from dinotwins.data.sampler import EpochSampler

AUTO_WORKERS = 4
PREFETCH = 2  # batches each worker keeps ready


class StepBatches(torch.utils.data.Dataset):
    """Item s: uint8 (B, C, S, S) or (B, R, C, S, S), the images of training step s (see the module docstring)."""

    def __init__(self, dataset: ImageDataset, sampler: EpochSampler, steps_per_epoch: int):
        self.dataset, self.sampler, self.steps_per_epoch = dataset, sampler, steps_per_epoch

    def __getitem__(self, step: int) -> Tensor:
        epoch, position = divmod(step, self.steps_per_epoch)
        return self.dataset.training_batch(self.sampler.batch_indices(epoch, position))


def workers_for(setting: int, dataset: ImageDataset) -> int:
    if setting >= 0:
        return setting
    return 0 if dataset.images is not None else min(AUTO_WORKERS, os.cpu_count() or 1)


def prefetched(batches: StepBatches, start: int, stop: int, workers: int,
               prefetch: int = PREFETCH) -> Iterator[Tensor]:
    """The batches of steps start .. stop - 1, in order (see the module docstring)."""
    if workers == 0:
        for step in range(start, stop):
            yield batches[step]
        return
    loader = torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(start, stop), num_workers=workers,
                                         prefetch_factor=prefetch, persistent_workers=False)
    yield from loader
