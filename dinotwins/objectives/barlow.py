"""Barlow Twins (Zbontar et al. 2021): the cross-correlation of two views' embeddings is pushed to the identity.

Everything Barlow Twins adds to a backbone lives here:
- `BarlowConfig`, the config.yaml section `barlow`;
- the projector: Linear-BN-ReLU blocks then a final Linear, 2048-2048-2048 by default, called once per view so its
  BatchNorm layers normalize each view's batch on its own statistics, as in the paper;
- the loss on the two global crops (no teacher, no local crops): sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2
  (`losses.barlow_twins_terms`), gathered over processes under torchrun;
- logged signals (both terms and the rms of 1 - C_ii) and the collapse sign they show.

`barlow_terms` and `barlow_collapse_bands` are shared with the hybrid (hybrid.py). What it is not: the loss maths
(losses.py) or the shared forward and backward (base.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dinotwins.errors import UserError
from dinotwins.models.backbone import create_backbone
from dinotwins.models.config import ModelConfig
from dinotwins.objectives.base import Objective, Student
from dinotwins.objectives.collapse_bands import CollapseBand
from dinotwins.objectives.losses import barlow_twins_terms


@dataclass
class BarlowConfig:
    """Barlow Twins' recipe (Zbontar et al. 2021)."""

    proj_dims: tuple[int, ...] = (2048, 2048, 2048)
    lambd: float = 0.0051  # off-diagonal weight, the paper's value for D = 8192 projectors

    def validate(self) -> None:
        if not self.proj_dims or min(self.proj_dims) < 1:
            raise UserError(f"barlow.proj_dims must be a non-empty list of widths, got {list(self.proj_dims)}")


class BarlowProjector(nn.Module):
    """Linear-BN-ReLU blocks then a final Linear, applied to each view's batch on its own."""

    global_only = True  # Barlow Twins compares the two global crops only

    def __init__(self, in_dim: int, dims: tuple[int, ...] = (2048, 2048, 2048)):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_dim
        for dim in dims[:-1]:
            layers += [nn.Linear(prev, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True)]
            prev = dim
        layers.append(nn.Linear(prev, dims[-1], bias=False))
        self.net = nn.Sequential(*layers)
        self.out_dim = dims[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def forward_views(self, feats: Tensor, n_views: int) -> Tensor:
        # One call per view, as in Barlow Twins: the BatchNorm layers normalize each view's batch on its own.
        return torch.cat([self(f) for f in feats.chunk(n_views)])  # (n_views B, D_proj)


class BarlowTwins(Objective):
    config_class = BarlowConfig
    uses_local_crops = False

    def __init__(self, model: ModelConfig, barlow: BarlowConfig):
        super().__init__()
        self.barlow_cfg = barlow
        backbone = create_backbone(model)
        self.student = Student(backbone, {"projector": BarlowProjector(backbone.num_features, tuple(barlow.proj_dims))})

    @classmethod
    def from_config(cls, cfg) -> BarlowTwins:
        return cls(cfg.model, cfg.objectives["barlow"])

    def loss_parts(self, out: dict[str, Tensor], n_views: int, first_view: int, is_global: bool, targets: None,
                   distributed: bool) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        return barlow_terms(out["projector"], self.barlow_cfg.lambd, distributed)

    def combine(self, parts: dict[str, Tensor]) -> Tensor:
        return parts["barlow"]

    @classmethod
    def collapse_bands(cls, cfg) -> list[CollapseBand]:
        return barlow_collapse_bands()


def barlow_terms(projected: Tensor, lambd: float, distributed: bool) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """({"barlow": loss}, signals) of the projector's output on the two global crops, (2B, D)."""
    z1, z2 = projected.float().chunk(2)
    on_diag, off_diag = barlow_twins_terms(z1, z2, distributed)
    on, off = on_diag.detach(), off_diag.detach()  # logged as tensors: read once per step, with the loss
    signals = {"barlow_on_diag": on, "barlow_off_diag": off,
               "barlow_diag_rms_error": (on / z1.shape[1]).sqrt()}  # rms of 1 - C_ii
    return {"barlow": on_diag + lambd * off_diag}, signals


def barlow_collapse_bands() -> list[CollapseBand]:
    """The Barlow diagonal far from 1 (rms of 1 - C_ii above 0.9: the views no longer agree on any feature)."""
    return [CollapseBand("barlow_diag_rms_error", 0.9, math.inf, "Barlow cross-correlation diagonal drifted far from 1")]

