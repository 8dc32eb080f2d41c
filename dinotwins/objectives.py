"""The three self-supervised objectives as one module: a student, an optional EMA teacher, their heads.

`SelfSupervised` holds the student (backbone + the heads its method needs), the momentum teacher (a copy of
the student's backbone and DINO head, no gradients) and the DINO center. `compute_gradients` takes the
augmented views, backpropagates the loss into the student, and returns the loss with its parts and the collapse
signals the trainer logs.

- dino:   student sees all crops; teacher sees the 2 global crops; `dino_loss`.
- barlow: the backbone + projector on the 2 global crops; `barlow_twins_loss`. No teacher.
- hybrid: both heads on one backbone; DINO over all crops, Barlow on the student's 2 global crops;
          `hybrid_loss`. The teacher (for DINO) is the EMA of backbone + DINO head only.

Each crop resolution goes through the backbone in one call (all global crops batched, all local crops batched),
as DINO's MultiCropWrapper does, and by default each resolution's part of the loss is backpropagated as soon as
it is computed (see `SelfSupervised.compute_gradients`). The student is a separate `nn.Module` so the trainer can
wrap it in DDP.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinotwins.training.ema import Center
from dinotwins.heads import BarlowProjector, DINOHead
from dinotwins.models.backbone import create_backbone, embed
from dinotwins.models.config import ModelConfig
from dinotwins.losses import (barlow_twins_terms, dino_cross_entropy_sum, dino_pair_count, dino_teacher_probs,
                              hybrid_loss)

METHODS = ("dino", "barlow", "hybrid")


@dataclass
class DinoConfig:
    """DINO's recipe (Caron et al. 2021), with K reduced for small data."""

    out_dim: int = 4096  # K prototypes; 65536 in the paper is for ImageNet, 4096 suits 10-class-scale data
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    student_temp: float = 0.1
    teacher_temp: float = 0.07  # after warm-up; 0.04 -> 0.07 over the warm-up as in the paper's ViT-S runs
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 30.0  # of 100 in the paper; clipped to the run's length
    momentum_teacher: float = 0.996  # cosine schedule from this value to 1
    center_momentum: float = 0.9
    freeze_last_layer_epochs: float = 1.0


@dataclass
class BarlowConfig:
    """Barlow Twins' recipe (Zbontar et al. 2021)."""

    proj_dims: tuple[int, ...] = (2048, 2048, 2048)
    lambd: float = 0.0051  # off-diagonal weight, the paper's value for D = 8192 projectors


@dataclass
class HybridConfig:
    """DinoTwins weights: loss = w_dino * L_dino + w_barlow * (1 / D) * L_barlow (see `hybrid_loss`)."""

    w_dino: float = 1.0
    w_barlow: float = 1.0


class Student(nn.Module):
    """Backbone plus the heads of one method; forward maps the crops of one resolution to head outputs."""

    def __init__(self, backbone: nn.Module, dino_head: DINOHead | None, projector: BarlowProjector | None):
        super().__init__()
        self.backbone = backbone
        self.dino_head = dino_head
        self.projector = projector

    def forward(self, views: list[Tensor], project: bool = True) -> dict[str, Tensor]:
        """`views`: crops of one size, batched into one backbone call. `project=False` skips the Barlow projector
        (local crops: Barlow Twins sees the global crops only)."""
        feats = embed(self.backbone, torch.cat(views))  # (n_views B, D)
        out: dict[str, Tensor] = {"feats": feats}
        if self.dino_head is not None:
            out["dino"] = self.dino_head(feats)  # (n_views B, K)
        if self.projector is not None and project:
            # One projector call per view, as in Barlow Twins: its BatchNorm layers normalize each view's batch
            # on its own statistics.
            out["barlow"] = torch.cat([self.projector(f) for f in feats.chunk(len(views))])  # (n_views B, D_proj)
        return out


class SelfSupervised(nn.Module):
    """Student, teacher and center for one of `METHODS`."""

    def __init__(self, method: str, model: ModelConfig, dino: DinoConfig, barlow: BarlowConfig,
                 hybrid: HybridConfig):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}")
        self.method, self.dino_cfg, self.barlow_cfg, self.hybrid_cfg = method, dino, barlow, hybrid
        backbone = create_backbone(model)
        dim = backbone.num_features
        uses_dino = method in ("dino", "hybrid")
        dino_head = DINOHead(dim, dino.out_dim, dino.hidden_dim, dino.bottleneck_dim) if uses_dino else None
        projector = BarlowProjector(dim, tuple(barlow.proj_dims)) if method in ("barlow", "hybrid") else None
        self.student = Student(backbone, dino_head, projector)
        self.teacher: Student | None = None
        self.center: Center | None = None
        if uses_dino:
            # Teacher: same backbone and DINO head, weights copied from the student, never trained directly.
            teacher_backbone = create_backbone(ModelConfig(**{**model.__dict__, "drop_path_rate": 0.0}))
            teacher_backbone.load_state_dict(backbone.state_dict())
            self.teacher = Student(teacher_backbone, copy.deepcopy(dino_head), None)
            self.teacher.requires_grad_(False)
            self.center = Center(dino.out_dim, dino.center_momentum)

    def export_backbone(self) -> nn.Module:
        """The backbone users get: the teacher's for DINO and the hybrid (DINO evaluates the teacher), else
        the student's."""
        return (self.teacher or self.student).backbone

    def compute_gradients(self, student: nn.Module, global_views: list[Tensor], local_views: list[Tensor],
                          teacher_temp: float, *, distributed: bool = False, teacher: nn.Module | None = None,
                          autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
                          no_sync: Callable[[], AbstractContextManager] | None = None,
                          per_resolution: bool = True) -> tuple[Tensor, dict[str, float]]:
        """Forward and backward of the loss: leaves the gradients in the student's `.grad` (accumulated, so zero
        them first) and returns the loss (detached) with the logged signals.

        The loss is a sum of two parts: the global crops' (DINO over their pairs, plus Barlow Twins) and the local
        crops' (DINO over every (teacher view, local crop) pair). The teacher's targets carry no gradient, so with
        `per_resolution` each part is backpropagated right after its forward: the gradients are those of one
        backward of the sum, but only one resolution's activations are alive at a time. The global crops go
        first, so the local crops' smaller tensors reuse the memory they freed. `per_resolution=False` does one
        backward of the sum (the reference the tests compare with).

        `student` is `self.student` or its DDP/compiled wrapper; `teacher` defaults to `self.teacher` (pass its
        compiled wrapper to use that). `autocast` opens the precision context for each forward (backward runs
        outside it). `no_sync` is DDP's `no_sync`: every forward but the last runs under it, so gradients are
        all-reduced once, in the backward after the last forward, which must reach every parameter; under DDP
        the local crops go first and the global crops, which reach the Barlow projector too, last.
        """
        n_global = len(global_views)
        logs: dict[str, float] = {}
        teacher_probs: list[Tensor] = []
        if self.teacher is not None:
            with torch.no_grad(), autocast():
                self.teacher.eval()
                teacher_out = (teacher if teacher is not None else self.teacher)(global_views, project=False)
                teacher_logits = list(teacher_out["dino"].float().chunk(n_global))
            teacher_probs = dino_teacher_probs(teacher_logits, self.center.center, teacher_temp)
            n_pairs = dino_pair_count(n_global, n_global + len(local_views))
        # (views, index of their first view, is_global)
        groups = [(global_views, 0, True)]
        if self.student.dino_head is not None and local_views:
            groups.insert(0 if no_sync is not None else 1, (local_views, n_global, False))
        sums: dict[str, Tensor] = {}  # each part of the loss summed over the groups
        for index, (views, first_view, is_global) in enumerate(groups):
            last = index == len(groups) - 1  # under DDP, the synchronized backward
            with no_sync() if no_sync is not None and not last else contextlib.nullcontext():
                with autocast():
                    out = student(views, project=is_global)
                    part: dict[str, Tensor] = {}
                    if teacher_probs:
                        logits = list(out["dino"].float().chunk(len(views)))
                        part["dino"] = dino_cross_entropy_sum(logits, teacher_probs, self.dino_cfg.student_temp,
                                                              first_view) / n_pairs
                    if is_global and "barlow" in out:
                        z1, z2 = out["barlow"].float().chunk(2)
                        on_diag, off_diag = barlow_twins_terms(z1, z2, distributed)
                        part["barlow"] = on_diag + self.barlow_cfg.lambd * off_diag
                        logs["barlow_on_diag"] = on_diag.item()
                        logs["barlow_off_diag"] = off_diag.item()
                        logs["barlow_diag_rms_error"] = math.sqrt(on_diag.item() / z1.shape[1])  # rms of 1 - C_ii
                    if is_global:
                        logs["embed_std"] = _normalized_std(out["feats"].detach())
                if per_resolution:
                    self._combine(part).backward()
                    part = {name: value.detach() for name, value in part.items()}
            for name, value in part.items():
                sums[name] = sums[name] + value if name in sums else value
        total = self._combine(sums)
        if not per_resolution:
            total.backward()
        if teacher_probs:
            logs.update(_teacher_signals(teacher_logits, self.center.center, teacher_temp, sums["dino"]))
            self.center.update(teacher_logits)
        if self.method == "hybrid":
            logs["loss_dino"] = sums["dino"].item()
            logs["loss_barlow"] = sums["barlow"].item()
        return total.detach(), logs

    def _combine(self, part: dict[str, Tensor]) -> Tensor:
        """The method's loss from its parts (over all views, or over one resolution's share of them): the loss is
        linear in the DINO part, so the parts of a split add up to the loss of the whole."""
        if self.method == "dino":
            return part["dino"]
        if self.method == "barlow":
            return part["barlow"]
        barlow = part.get("barlow", torch.zeros((), device=part["dino"].device))
        return hybrid_loss(part["dino"], barlow, self.hybrid_cfg.w_dino, self.hybrid_cfg.w_barlow,
                           1.0 / self.student.projector.out_dim)


def _teacher_signals(teacher_logits: tuple[Tensor, ...], center: Tensor, teacher_temp: float,
                     loss_dino: Tensor) -> dict[str, float]:
    """Teacher entropy and KL(teacher || student). Each teacher view meets the same number of student views,
    so the mean cross-entropy minus the mean teacher entropy is exactly the mean KL over the loss's pairs."""
    with torch.no_grad():
        probs = F.softmax((torch.cat(teacher_logits) - center) / teacher_temp, dim=-1)
        entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1).mean().item()
    return {"teacher_entropy": entropy, "kl_teacher_student": loss_dino.item() - entropy}


def _normalized_std(feats: Tensor) -> float:
    """Mean per-dimension std of L2-normalized embeddings: about 1/sqrt(D) when healthy, 0 when collapsed."""
    return F.normalize(feats.float(), dim=-1).std(dim=0).mean().item()
