"""`EpochSampler`: the batches of a run, as index tensors, a pure function of (seed, epoch, position, rank).

Each epoch's permutation depends only on the run's seed and the epoch, so any step's batch can be rebuilt from the
step alone (exact resume), and ranks under torchrun take disjoint slices of every global batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch
from torch import Tensor

from dinotwins.errors import UserError


class EpochSampler:
    """Index batches for distributed training: each epoch's permutation is a pure function of (seed, epoch),
    cut into global batches of batch_size * world_size; rank r takes the r-th slice of each, so ranks are
    disjoint. The last partial global batch is dropped. `batches(epoch, start_batch)` resumes mid-epoch."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}; raise --batch-size")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside a world of {world_size} processes")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = num_samples // (batch_size * world_size)
        if self.batches_per_epoch == 0:
            total = f" ({batch_size} x {world_size} processes)" if world_size > 1 else ""
            raise UserError(f"batch size {batch_size * world_size}{total} larger than dataset of {num_samples} "
                            f"images; lower --batch-size")
        self._cached: tuple[int, Tensor] | None = None

    def permutation(self, epoch: int) -> Tensor:
        """int64 (num_samples,): epoch's order of the whole dataset, the same on every rank."""
        if self._cached is None or self._cached[0] != epoch:
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            self._cached = (epoch, torch.randperm(self.num_samples, generator=generator))
        return self._cached[1]

    def batch_indices(self, epoch: int, position: int) -> Tensor:
        """int64 (batch_size,): this rank's indices for batch `position` of `epoch`."""
        if not 0 <= position < self.batches_per_epoch:
            raise IndexError(f"batch {position} outside an epoch of {self.batches_per_epoch} batches")
        start = (position * self.world_size + self.rank) * self.batch_size
        return self.permutation(epoch)[start:start + self.batch_size]

    def batches(self, epoch: int, start_batch: int = 0) -> Iterator[Tensor]:
        """This rank's batches of `epoch` from `start_batch` on (resume mid-epoch with the step reached)."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} outside an epoch of {self.batches_per_epoch} batches")
        for position in range(start_batch, self.batches_per_epoch):
            yield self.batch_indices(epoch, position)


def epoch_seed(seed: int, epoch: int) -> int:
    """A 32-bit generator seed for (seed, epoch), by hashing: torch's CPU generator keeps only the low 32 bits of
    a seed, so packing the two numbers side by side would make every epoch ignore the run's seed."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{epoch}".encode(), digest_size=4).digest(), "little")

