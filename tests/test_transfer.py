"""dinotwins/transfer.py: copies to the device that do not wait for it, and constants made once per device."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dinotwins.objectives import METHODS
from dinotwins.transfer import constant, to_device
from tests.test_model_api import TEMP, build


def test_copies_to_the_device_and_cached_constants():
    t = torch.arange(6).view(2, 3)
    assert torch.equal(to_device(t, torch.device("cpu")), t)
    first = constant((0.5, 0.25), torch.device("cpu"), torch.float32)
    assert torch.equal(first, torch.tensor([0.5, 0.25])) and first.dtype == torch.float32
    assert constant((0.5, 0.25), torch.device("cpu"), torch.float32) is first  # made once per device and dtype
    assert constant((0.5, 0.25), torch.device("cpu"), torch.float64) is not first


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("packed", [False, True])
def test_a_step_forward_and_backward_reads_no_value_from_the_device(method, packed):
    """compute_gradients keeps every signal on the device (on a GPU a read makes the host wait); the trainer reads
    them once, with the loss. Counted here as reads of a tensor's value, which a CPU makes too."""
    torch.manual_seed(0)
    ssl = build(method, dino={"koleo_weight": 0.1}, ibot={"weight": 1.0})
    views = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    local = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    with CountReads() as reads:
        loss, logs = ssl.compute_gradients(ssl.student, views, local, TEMP, packed=packed)
    assert reads.count == 0
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in logs.values()) and "embed_std" in logs


class CountReads(TorchDispatchMode):
    """Counts aten._local_scalar_dense, the op behind .item(), float(t), bool(t) and `if t:`."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))
