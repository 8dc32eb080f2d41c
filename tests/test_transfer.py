"""dinotwins/transfer.py: copies to the device that do not wait for it, and constants made once per device."""

import torch

from dinotwins.transfer import constant, to_device


def test_copies_to_the_device_and_cached_constants():
    t = torch.arange(6).view(2, 3)
    assert torch.equal(to_device(t, torch.device("cpu")), t)
    first = constant((0.5, 0.25), torch.device("cpu"), torch.float32)
    assert torch.equal(first, torch.tensor([0.5, 0.25])) and first.dtype == torch.float32
    assert constant((0.5, 0.25), torch.device("cpu"), torch.float32) is first  # made once per device and dtype
    assert constant((0.5, 0.25), torch.device("cpu"), torch.float64) is not first
