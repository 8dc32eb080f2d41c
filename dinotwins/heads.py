"""Projection heads: the DINO head and the Barlow Twins projector.

DINO head (Caron et al. 2021, sec. 3.1 and appendix): a 3-layer MLP (GELU, hidden 2048, bottleneck 256), L2
normalization, then a weight-normalized linear layer to K prototypes with its norm fixed to 1. The last layer is
kept frozen during the first epoch, which DINO found stabilises early training; the head owns that quirk
(`cancel_last_layer_gradients`).

Barlow Twins projector (Zbontar et al. 2021): Linear-BN-ReLU blocks then a final Linear, 2048-2048-2048 by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DINOHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int = 4096, hidden_dim: int = 2048, bottleneck_dim: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        # Weight normalization with the gain fixed to 1 (DINO's norm_last_layer=True): each prototype is a
        # unit vector, so the logits are cosine similarities.
        self.last_layer = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        nn.init.trunc_normal_(self.last_layer, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        z = F.normalize(self.mlp(x), dim=-1, eps=1e-6)  # (B, bottleneck)
        return F.linear(z, F.normalize(self.last_layer, dim=-1, eps=1e-6))  # (B, K)

    def cancel_last_layer_gradients(self) -> None:
        """Drop the prototypes' gradient (called during the first epoch, before the optimizer step)."""
        self.last_layer.grad = None


class BarlowProjector(nn.Module):
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
