"""DinoTwins (arXiv 2508.17509): DINO and Barlow Twins on one backbone, their losses weighted and summed.

- `HybridConfig`, the config.yaml section `hybrid` (the weights); the `dino` and `barlow` sections configure the
  two halves;
- the student has both heads (DINO head, then Barlow projector); the teacher is DINO's, the EMA of the backbone and
  DINO head only; every per-step value (teacher momentum and temperature, last-layer freeze) is DINO's;
- the loss: DINO over all crops plus Barlow Twins on the student's two global crops,
  w_dino * L_dino + w_barlow * (1 / D) * L_barlow (`losses.hybrid_loss`);
- logged: both halves' signals plus `loss_dino` and `loss_barlow`; collapse: both halves' signs.

What it is not: a copy of either half. It is DINO (dino.py) with the Barlow projector and term (barlow.py) added.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dinotwins.errors import UserError
from dinotwins.models.config import ModelConfig
from dinotwins.objectives.barlow import BarlowConfig, BarlowProjector, barlow_collapse_bands, barlow_terms
from dinotwins.objectives.collapse_bands import CollapseBand
from dinotwins.objectives.dino import DINO, DinoConfig, TeacherTargets, dino_collapse_bands
from dinotwins.objectives.dinov2 import IBotConfig
from dinotwins.objectives.losses import hybrid_loss


@dataclass
class HybridConfig:
    """DinoTwins weights: loss = w_dino * L_dino + w_barlow * (1 / D) * L_barlow (see `hybrid_loss`)."""

    w_dino: float = 1.0
    w_barlow: float = 1.0

    def validate(self) -> None:
        if not (self.w_dino >= 0 and self.w_barlow >= 0):
            raise UserError("hybrid weights must be >= 0")


class DinoTwins(DINO):
    config_class = HybridConfig

    def __init__(self, model: ModelConfig, dino: DinoConfig, barlow: BarlowConfig, hybrid: HybridConfig,
                 ibot: IBotConfig | None = None):
        projector = lambda width: {"projector": BarlowProjector(width, tuple(barlow.proj_dims))}  # noqa: E731
        super().__init__(model, dino, extra_heads=projector, ibot=ibot)
        self.barlow_cfg, self.weights = barlow, hybrid

    @classmethod
    def from_config(cls, cfg) -> DinoTwins:
        sections = cfg.objectives
        return cls(cfg.model, sections["dino"], sections["barlow"], sections["hybrid"], sections["ibot"])

    @classmethod
    def collapse_bands(cls, cfg) -> list[CollapseBand]:
        return dino_collapse_bands(cfg.objectives["dino"].out_dim, loss_key="loss_dino") + barlow_collapse_bands()

    def loss_parts(self, out: dict[str, Tensor], n_views: int, first_view: int, is_global: bool,
                   targets: TeacherTargets, distributed: bool) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        parts, signals = super().loss_parts(out, n_views, first_view, is_global, targets, distributed)
        if is_global:  # the projector sees the global crops only
            barlow, barlow_signals = barlow_terms(out["projector"], self.barlow_cfg.lambd, distributed)
            parts.update(barlow)
            signals.update(barlow_signals)
        return parts, signals

    def combine(self, parts: dict[str, Tensor]) -> Tensor:
        """Linear in both terms; a resolution without a Barlow term (the local crops) adds zero of it."""
        barlow = parts.get("barlow", torch.zeros((), device=parts["dino"].device))
        return self.with_dinov2_terms(hybrid_loss(parts["dino"], barlow, self.weights.w_dino, self.weights.w_barlow,
                                                  1.0 / self.student.projector.out_dim), parts)

    def finish_step(self, sums: dict[str, Tensor], targets: TeacherTargets) -> dict[str, Tensor]:
        return {**super().finish_step(sums, targets), "loss_dino": sums["dino"].detach(),
                "loss_barlow": sums["barlow"].detach()}
