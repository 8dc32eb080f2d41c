"""The objectives' losses as pure functions, called by the objective files (dino.py, barlow.py, hybrid.py).

- `dino_loss` follows DINO (Caron et al. 2021, Algorithm 1): cross-entropy between the teacher's centered,
  sharpened softmax and the student's softmax, over every (teacher view, different student view) pair.
- `barlow_twins_loss` follows Barlow Twins (Zbontar et al. 2021, Algorithm 1): the cross-correlation of the two
  views' batch-normalized embeddings, divided by the batch size, pushed to the identity.
- `hybrid_loss` is DinoTwins (arXiv 2508.17509): a weighted sum of both.

Nothing here holds state: the center, the teacher and the schedules live in the objective files. Gathering
across processes is opt-in (`distributed=True`), so the default runs on one CPU with no process group.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def dino_loss(student_out: list[Tensor], teacher_out: list[Tensor], center: Tensor,
              student_temp: float, teacher_temp: float) -> Tensor:
    """Mean over (teacher view i, student view j != i) pairs and the batch of -sum p_t log p_s.

    student_out[i] and teacher_out[i] come from the same view (the teacher sees only the first
    len(teacher_out) views, the global ones); each tensor is (B, K) logits.
    """
    if len(teacher_out) == 0 or len(student_out) < 2:
        raise ValueError("dino_loss needs at least one teacher view and two student views")
    teacher_probs = dino_teacher_probs(teacher_out, center, teacher_temp)
    total = dino_cross_entropy_sum(student_out, teacher_probs, student_temp)
    return total / dino_pair_count(len(teacher_out), len(student_out))


def dino_teacher_probs(teacher_out: list[Tensor], center: Tensor, teacher_temp: float) -> list[Tensor]:
    """The teacher's centered, sharpened softmax per view: DINO's targets (no gradient)."""
    return [F.softmax((t - center) / teacher_temp, dim=-1).detach() for t in teacher_out]


def dino_pair_count(n_teacher: int, n_student: int) -> int:
    """Number of (teacher view, different student view) pairs; the teacher's views are the first student views."""
    return n_teacher * n_student - min(n_teacher, n_student)


def dino_cross_entropy_sum(student_out: list[Tensor], teacher_probs: list[Tensor], student_temp: float,
                           first_view: int = 0) -> Tensor:
    """Sum over pairs (teacher view i, student view j), i != j, of the batch-mean -sum p_t log p_s, where
    student_out[k] is view `first_view + k`. Summing it over a split of the student views (for example one call
    per crop resolution) gives the sum over all pairs."""
    total = student_out[0].new_zeros(())
    for k, s in enumerate(student_out):
        logp_s = F.log_softmax(s / student_temp, dim=-1)
        for i, p_t in enumerate(teacher_probs):
            if i != first_view + k:
                total = total + torch.sum(-p_t * logp_s, dim=-1).mean()
    return total


def barlow_twins_loss(z1: Tensor, z2: Tensor, lambd: float, distributed: bool = False) -> Tensor:
    """sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2 with C = bn(z1)^T bn(z2) / N.

    With `distributed=True` the batch statistics and C are all-reduced (with gradients) across the
    process group, so the loss is the one of the global batch.
    """
    on_diag, off_diag = barlow_twins_terms(z1, z2, distributed)
    return on_diag + lambd * off_diag


def barlow_twins_terms(z1: Tensor, z2: Tensor, distributed: bool = False) -> tuple[Tensor, Tensor]:
    """(sum_i (1 - C_ii)^2, sum_{i != j} C_ij^2): the invariance and redundancy terms, unweighted."""
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"barlow_twins_loss needs two (N, D) tensors of one shape, got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}")
    c = cross_correlation(z1.float(), z2.float(), distributed)  # (D, D)
    diag = torch.diagonal(c)
    on_diag = (1 - diag).pow(2).sum()
    off_diag = c.pow(2).sum() - diag.pow(2).sum()
    return on_diag, off_diag


def cross_correlation(z1: Tensor, z2: Tensor, distributed: bool = False) -> Tensor:
    """Cross-correlation matrix of the batch-normalized embeddings (affine-free BN, biased variance)."""
    rows = z1.shape[0] * (dist.get_world_size() if distributed and dist.is_available() and dist.is_initialized()
                          else 1)  # every rank holds the same number (a slice of each global batch)
    if rows < 2:
        raise ValueError("barlow_twins_loss needs a batch of at least two samples")
    n = torch.full((), float(rows), device=z1.device)  # a fill, not a copy from the host
    sum1, sum2 = z1.sum(0), z2.sum(0)
    if distributed:
        sum1, sum2 = _all_reduce(sum1), _all_reduce(sum2)
    c1, c2 = z1 - sum1 / n, z2 - sum2 / n
    var1, var2 = c1.pow(2).sum(0), c2.pow(2).sum(0)
    cross = c1.T @ c2  # (D, D)
    if distributed:
        var1, var2, cross = _all_reduce(var1), _all_reduce(var2), _all_reduce(cross)
    eps = 1e-5  # BatchNorm1d's eps
    std1, std2 = torch.sqrt(var1 / n + eps), torch.sqrt(var2 / n + eps)
    return cross / n / (std1[:, None] * std2[None, :])


def hybrid_loss(loss_dino: Tensor, loss_barlow: Tensor, w_dino: float, w_barlow: float,
                barlow_scale: float) -> Tensor:
    """DinoTwins: w_dino * L_dino + w_barlow * s * L_barlow.

    The scale s is 1 / D (D = projector output width): L_barlow is a sum over D diagonal and D^2 - D
    off-diagonal entries and starts near D, while L_dino starts near ln K (about 8 for K = 4096); dividing by D
    puts both terms at order one, so the weights mean what they say.
    """
    return w_dino * loss_dino + w_barlow * barlow_scale * loss_barlow


def _all_reduce(t: Tensor) -> Tensor:
    if not (dist.is_available() and dist.is_initialized()):
        return t
    import torch.distributed.nn.functional as dist_fn

    return dist_fn.all_reduce(t)
