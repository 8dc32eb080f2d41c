"""The three self-supervised objectives as one module: a student, an optional EMA teacher, their heads.

`SelfSupervised` holds the student (backbone + the heads its method needs), the momentum teacher (a copy of
the student's backbone and DINO head, no gradients) and the DINO center. `forward` takes the augmented views
and returns the loss with its parts and the collapse signals the trainer logs.

- dino:   student sees all crops; teacher sees the 2 global crops; `dino_loss`.
- barlow: the backbone + projector on the 2 global crops; `barlow_twins_loss`. No teacher.
- hybrid: both heads on one backbone; DINO over all crops, Barlow on the student's 2 global crops;
          `hybrid_loss`. The teacher (for DINO) is the EMA of backbone + DINO head only.

Each crop resolution goes through the backbone in one call (all global crops batched, all local crops batched),
as DINO's MultiCropWrapper does. The student is a separate `nn.Module` so the trainer can wrap it in DDP.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinotwins.backbone import ModelConfig, create_backbone, embed
from dinotwins.ema import Center
from dinotwins.heads import BarlowProjector, DINOHead
from dinotwins.losses import barlow_twins_terms, dino_loss, hybrid_loss

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
    """Backbone plus the heads of one method; forward maps views to head outputs."""

    def __init__(self, backbone: nn.Module, dino_head: DINOHead | None, projector: BarlowProjector | None):
        super().__init__()
        self.backbone = backbone
        self.dino_head = dino_head
        self.projector = projector

    def forward(self, global_views: list[Tensor], local_views: list[Tensor]) -> dict[str, Tensor]:
        global_feats = embed(self.backbone, torch.cat(global_views))  # (2B, D)
        out: dict[str, Tensor] = {"global_feats": global_feats}
        if self.dino_head is not None:
            feats = global_feats
            if local_views:
                feats = torch.cat([global_feats, embed(self.backbone, torch.cat(local_views))])
            out["dino"] = self.dino_head(feats)  # ((2 + n_local) B, K)
        if self.projector is not None:
            out["barlow"] = self.projector(global_feats)  # (2B, D_proj)
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

    def forward(self, student: nn.Module, global_views: list[Tensor], local_views: list[Tensor],
                teacher_temp: float, distributed: bool = False,
                teacher: nn.Module | None = None) -> tuple[Tensor, dict[str, float]]:
        """Loss and logged signals. `student` is `self.student` or its DDP/compiled wrapper; `teacher`
        defaults to `self.teacher` (pass its compiled wrapper to use that)."""
        out = student(global_views, local_views)
        n_global = len(global_views)
        logs: dict[str, float] = {}
        parts: dict[str, Tensor] = {}
        if self.teacher is not None:
            with torch.no_grad():
                self.teacher.eval()
                teacher_logits = (teacher if teacher is not None else self.teacher)(global_views, [])["dino"].float().chunk(n_global)
            student_logits = out["dino"].float().chunk(n_global + len(local_views))
            parts["dino"] = dino_loss(list(student_logits), list(teacher_logits), self.center.center,
                                      self.dino_cfg.student_temp, teacher_temp)
            logs.update(_teacher_signals(teacher_logits, self.center.center, teacher_temp, parts["dino"]))
            self.center.update(list(teacher_logits))
        if "barlow" in out:
            z1, z2 = out["barlow"].float().chunk(2)
            on_diag, off_diag = barlow_twins_terms(z1, z2, distributed)
            parts["barlow"] = on_diag + self.barlow_cfg.lambd * off_diag
            logs["barlow_on_diag"] = on_diag.item()
            logs["barlow_off_diag"] = off_diag.item()
            logs["barlow_diag_rms_error"] = math.sqrt(on_diag.item() / z1.shape[1])  # rms of 1 - C_ii
        if self.method == "dino":
            loss = parts["dino"]
        elif self.method == "barlow":
            loss = parts["barlow"]
        else:
            loss = hybrid_loss(parts["dino"], parts["barlow"], self.hybrid_cfg.w_dino, self.hybrid_cfg.w_barlow,
                               1.0 / self.student.projector.out_dim)
            logs["loss_dino"] = parts["dino"].item()
            logs["loss_barlow"] = parts["barlow"].item()
        logs["embed_std"] = _normalized_std(out["global_feats"].detach())
        return loss, logs


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
