"""Host-to-device copies inside a training step that do not make the host wait for the device.

A plain `tensor.to("cuda")` from ordinary (pageable) host memory waits until the GPU has finished the work queued
before it, so each small copy inside a step (crop parameters, patch masks, constants) stalls the host that should
be queueing the next kernels. `to_device` copies through pinned memory without waiting on a GPU (torch's pinned
allocator keeps the buffer until the copy is done) and is plain `.to` elsewhere; `constant` copies a small constant
to each device once.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """`tensor` on `device`; from host memory to a GPU asynchronously, through pinned memory."""
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


@lru_cache(maxsize=64)
def constant(values: tuple, device: torch.device, dtype: torch.dtype) -> Tensor:
    """`torch.tensor(values, dtype)` on `device`, made once per (values, device, dtype); never modify it in place."""
    return to_device(torch.tensor(values, dtype=dtype), device)
