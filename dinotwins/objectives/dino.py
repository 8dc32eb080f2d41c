"""DINO (Caron et al. 2021): a student ViT matches a momentum teacher's centered, sharpened softmax over K prototypes.

Everything DINO adds to a backbone lives here:
- `DinoConfig`, the config.yaml section `dino`;
- the head (heads.py: MLP, L2 normalization, K unit-norm prototypes), its last layer kept frozen during the first
  epoch, which DINO found stabilises early training;
- the teacher: a copy of the student's backbone and DINO head, moved by an EMA of them after every update (momentum
  cosine from `momentum_teacher` to 1), and the `Center` it subtracts before sharpening;
- per step: the teacher momentum, the teacher temperature (linear warm-up), the last-layer freeze;
- the loss: the student sees all crops, the teacher the 2 global crops; cross-entropy over every (teacher view,
  other student view) pair (`losses.dino_loss`);
- logged signals (the teacher's entropy per image and of its batch mean, KL(teacher || student)) and the collapse
  bands they are checked against;
- DINOv2's options (dinov2.py): KoLeo, Sinkhorn-Knopp centering, iBOT.

What it is not: the loss maths (losses.py), the shared multi-crop forward and backward (base.py), the EMA update
and the schedule shapes (ema.py, dinotwins/schedules.py), which it calls.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dinotwins.errors import UserError
from dinotwins.models.backbone import create_backbone
from dinotwins.models.config import ModelConfig
from dinotwins.objectives.base import Objective, Student
from dinotwins.objectives.collapse_bands import CollapseBand
from dinotwins.objectives.dinov2 import IBotConfig, IBotHead, ibot_loss, koleo_loss, random_patch_masks, sinkhorn_knopp
from dinotwins.objectives.ema import ema_update
from dinotwins.objectives.heads import DINOHead
from dinotwins.objectives.losses import dino_cross_entropy_sum, dino_pair_count, dino_teacher_probs
from dinotwins.schedules import RunLength, cosine, linear_warmup


CENTERINGS = ("ema", "sinkhorn_knopp")


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
    # DINOv2's options (dinov2.py): the KoLeo regularizer's weight (0: off) and the teacher's centering.
    koleo_weight: float = 0.0
    centering: str = "ema"  # ema (DINO's running center) | sinkhorn_knopp (DINOv2)

    def validate(self) -> None:
        if not 0 <= self.momentum_teacher <= 1:
            raise UserError(f"dino.momentum_teacher must be in [0, 1], got {self.momentum_teacher}")
        if not (self.student_temp > 0 and self.teacher_temp > 0):
            raise UserError("dino temperatures must be positive")
        if self.koleo_weight < 0:
            raise UserError(f"dino.koleo_weight must be >= 0 (0: off), got {self.koleo_weight}")
        if self.centering not in CENTERINGS:
            raise UserError(f"dino.centering must be {' or '.join(CENTERINGS)}, got {self.centering!r}")


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
        count = torch.full((), float(batch.shape[0]), device=batch.device)  # a fill, not a copy from the host
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
            dist.all_reduce(count)
        self.center.mul_(self.momentum).add_(total / count, alpha=1 - self.momentum)


@dataclass
class TeacherTargets:
    """One step's teacher: logits and centered, sharpened softmax per global view ((B, K) each); with iBOT, the
    masks and the teacher's logits and targets at the masked patches ((M, K))."""

    logits: list[Tensor]
    probs: list[Tensor]
    temperature: float
    n_pairs: int  # (teacher view, other student view) pairs the loss averages over
    masks: Tensor | None = None
    patch_logits: Tensor | None = None
    patch_probs: Tensor | None = None


class DINO(Objective):
    config_class = DinoConfig

    def __init__(self, model: ModelConfig, dino: DinoConfig,
                 extra_heads: Callable[[int], dict[str, nn.Module]] | None = None, ibot: IBotConfig | None = None):
        """`extra_heads(width)`: heads beside the DINO head, built after it (the hybrid's Barlow projector);
        `ibot`: DINOv2's masked-patch objective, on when its weight is positive (its head then comes last)."""
        super().__init__()
        self.dino_cfg = dino
        self.ibot_cfg = ibot if ibot is not None and ibot.weight > 0 else None
        backbone = create_backbone(model)
        heads = {"dino_head": DINOHead(backbone.num_features, dino.out_dim, dino.hidden_dim, dino.bottleneck_dim)}
        heads.update(extra_heads(backbone.num_features) if extra_heads else {})
        mirrored = ["dino_head"]  # the heads the teacher copies
        if self.ibot_cfg is not None:
            heads["ibot_head"] = IBotHead(backbone.num_features, self.ibot_cfg)
            mirrored.append("ibot_head")
        self.student = Student(backbone, heads)
        # Teacher: same backbone (no drop path) and DINO head, weights copied from the student, never trained directly.
        teacher_backbone = create_backbone(dataclasses.replace(model, drop_path_rate=0.0))
        teacher_backbone.load_state_dict(backbone.state_dict())
        self.teacher = Student(teacher_backbone, {name: copy.deepcopy(heads[name]) for name in mirrored})
        self.teacher.requires_grad_(False)
        self.center = Center(dino.out_dim, dino.center_momentum)
        if self.ibot_cfg is not None:
            self.ibot_center = Center(self.ibot_cfg.out_dim, dino.center_momentum)

    @classmethod
    def from_config(cls, cfg) -> DINO:
        return cls(cfg.model, cfg.objectives["dino"], ibot=cfg.objectives["ibot"])

    # ------------------------------------------------------------------------------------------- per step
    def step_values(self, step: int, length: RunLength) -> dict[str, float]:
        cfg = self.dino_cfg
        temp_warmup = length.phase_steps(cfg.warmup_teacher_temp_epochs, at_most_one_in=3)
        return {"momentum": cosine(step, length.total_steps, cfg.momentum_teacher, 1.0),
                "teacher_temp": linear_warmup(step, temp_warmup, cfg.warmup_teacher_temp, cfg.teacher_temp)}

    def freeze_last_layer_steps(self, length: RunLength) -> int:
        """Steps during which the DINO head's last layer is kept fixed: `dino.freeze_last_layer_epochs`, clipped
        to a tenth of the run like the lr warm-up (1 of 100 epochs in the paper; unclipped, a 2-epoch run would
        freeze it for half its length)."""
        return length.phase_steps(self.dino_cfg.freeze_last_layer_epochs, at_most_one_in=10)

    def before_optimizer_step(self, step: int, length: RunLength) -> None:
        if step < self.freeze_last_layer_steps(length):
            self.student.dino_head.cancel_last_layer_gradients()

    def after_optimizer_step(self, values: Mapping[str, float]) -> None:
        # The teacher mirrors the student's backbone and its own heads (DINO's, iBOT's), in that order; nothing
        # else (no projector).
        mirrored = nn.ModuleDict({"backbone": self.student.backbone,
                                  **{name: getattr(self.student, name) for name in self.teacher.head_names}})
        ema_update(self.teacher, mirrored, values["momentum"])

    @classmethod
    def collapse_bands(cls, cfg) -> list[CollapseBand]:
        return dino_collapse_bands(cfg.objectives["dino"].out_dim)

    # ------------------------------------------------------------------------------------------- the loss
    def patch_masks(self, global_views: list[Tensor]) -> Tensor | None:
        if self.ibot_cfg is None:
            return None
        x = global_views[0]
        patch = int(self.student.backbone.patch_embed.patch_size[0])
        grid = (x.shape[-2] // patch, x.shape[-1] // patch)
        return random_patch_masks(len(global_views) * x.shape[0], grid, self.ibot_cfg.mask_ratio, device=x.device)

    def targets(self, global_views: list[Tensor], n_local: int, values: Mapping[str, float], teacher: nn.Module,
                autocast: Callable[[], AbstractContextManager], masks: Tensor | None = None) -> TeacherTargets:
        with torch.no_grad(), autocast():
            self.teacher.eval()
            out = teacher(global_views, **({"select": masks} if masks is not None else {}))
        logits = list(out["dino_head"].float().chunk(len(global_views)))
        temperature = values["teacher_temp"]
        if self.dino_cfg.centering == "sinkhorn_knopp":
            probs = list(sinkhorn_knopp(torch.cat(logits), temperature, distributed=_distributed()).chunk(len(logits)))
        else:
            probs = dino_teacher_probs(logits, self.center.center, temperature)
        targets = TeacherTargets(logits, probs, temperature,
                                 dino_pair_count(len(global_views), len(global_views) + n_local), masks)
        if masks is not None:
            targets.patch_logits = out["ibot_head"].float()
            targets.patch_probs = (sinkhorn_knopp(targets.patch_logits, temperature, distributed=_distributed())
                                   if self.dino_cfg.centering == "sinkhorn_knopp" else
                                   dino_teacher_probs([targets.patch_logits], self.ibot_center.center, temperature)[0])
        return targets

    def loss_parts(self, out: dict[str, Tensor], n_views: int, first_view: int, is_global: bool,
                   targets: TeacherTargets, distributed: bool) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        logits = list(out["dino_head"].float().chunk(n_views))
        dino = dino_cross_entropy_sum(logits, targets.probs, self.dino_cfg.student_temp, first_view)
        parts = {"dino": dino / targets.n_pairs}
        if is_global and self.dino_cfg.koleo_weight > 0:  # one batch per global view, as DINOv2
            parts["koleo"] = sum(koleo_loss(f, distributed) for f in out["feats"].chunk(n_views))
        if is_global and targets.masks is not None:
            parts["ibot"] = ibot_loss(out["ibot_head"], targets.patch_probs, targets.masks, self.dino_cfg.student_temp)
        return parts, {}

    def combine(self, parts: dict[str, Tensor]) -> Tensor:
        return self.with_dinov2_terms(parts["dino"], parts)

    def with_dinov2_terms(self, loss: Tensor, parts: dict[str, Tensor]) -> Tensor:
        """`loss` plus the weighted KoLeo and iBOT terms of `parts` that are there (none on the local crops)."""
        if "koleo" in parts:
            loss = loss + self.dino_cfg.koleo_weight * parts["koleo"]
        if "ibot" in parts:
            loss = loss + self.ibot_cfg.weight * parts["ibot"]
        return loss

    def finish_step(self, sums: dict[str, Tensor], targets: TeacherTargets) -> dict[str, Tensor]:
        logs = teacher_signals(targets.probs, sums["dino"])
        logs.update({f"loss_{name}": sums[name].detach() for name in ("koleo", "ibot") if name in sums})
        if self.dino_cfg.centering == "ema":
            self.center.update(targets.logits)
            if targets.patch_logits is not None:
                self.ibot_center.update([targets.patch_logits])
        return logs


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def teacher_signals(teacher_probs: list[Tensor], loss_dino: Tensor) -> dict[str, Tensor]:
    """The teacher's mean entropy per image, the entropy of its batch-mean distribution (this process's batch) and
    KL(teacher || student). A sharp teacher has a per-image entropy near 0 and, when healthy, a batch mean spread
    over many prototypes; only when one prototype wins for every image does the batch mean's entropy go to 0 too.
    Each teacher view meets the same number of student views, so the mean cross-entropy minus the mean teacher
    entropy is exactly the mean KL over the pairs."""
    with torch.no_grad():
        probs = torch.cat(teacher_probs)
        entropy = _entropy(probs).mean()
        return {"teacher_entropy": entropy, "teacher_marginal_entropy": _entropy(probs.mean(0)),
                "kl_teacher_student": loss_dino.detach() - entropy}


def _entropy(probs: Tensor) -> Tensor:
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1)


def dino_collapse_bands(out_dim: int, loss_key: str = "loss") -> list[CollapseBand]:
    """DINO's collapse zones: its loss (`loss_key`) within 1 % of ln K (teacher and student both uniform: nothing is
    learned); the entropy of the teacher's batch-mean distribution below 1 % of ln K (one prototype wins for every
    image; a low entropy per image alone is a sharp teacher, not a collapse); the teacher's entropy per image above
    99 % of ln K (uniform teacher); KL(teacher || student) within 1e-4 of 0 (the student copies a trivial
    teacher)."""
    log_k = math.log(out_dim)
    return [CollapseBand(loss_key, 0.99 * log_k, 1.01 * log_k, f"DINO loss sits at ln K = {log_k:.2f}"),
            CollapseBand("teacher_marginal_entropy", -math.inf, 0.01 * log_k,
                         "one prototype wins for every image (entropy of the teacher's batch mean went to 0)"),
            CollapseBand("teacher_entropy", 0.99 * log_k, math.inf, "teacher entropy went to ln K (uniform teacher)"),
            CollapseBand("kl_teacher_student", -1e-4, 1e-4, "KL(teacher||student) went to 0")]
