"""Momentum-teacher state: the EMA update (a pure in-place function) and the DINO center (a small class)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- m * teacher + (1 - m) * student, for every parameter, in two fused foreach kernels.

    m = 0 copies the student; m = 1 leaves the teacher unchanged. Buffers (BatchNorm statistics) are copied.
    """
    t_params = [p for p in teacher.parameters()]
    s_params = [p.detach() for p in student.parameters()]
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student differ in their parameters")
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
    for t_buf, s_buf in zip(teacher.buffers(), student.buffers()):
        t_buf.copy_(s_buf)


class Center(nn.Module):
    """DINO's center: an EMA (momentum 0.9) of the teacher's mean output, subtracted before sharpening.

    It is a buffer of this module so it is saved and loaded with the rest of the state; with a process group
    the batch mean is all-reduced so every rank keeps the same center.
    """

    def __init__(self, dim: int, momentum: float = 0.9):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, dim))

    @torch.no_grad()
    def update(self, teacher_out: list[Tensor]) -> None:
        batch = torch.cat(teacher_out).float()
        total = batch.sum(dim=0, keepdim=True)
        count = torch.tensor(float(batch.shape[0]), device=batch.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
            dist.all_reduce(count)
        self.center.mul_(self.momentum).add_(total / count, alpha=1 - self.momentum)
