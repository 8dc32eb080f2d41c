"""DINO's projection head: an MLP, L2 normalization, then K unit-norm prototypes (Caron et al. 2021, sec. 3.1).

DINO puts it on the CLS embedding (dino.py); iBOT's head (dinov2.py) has the same shape on patch tokens. Its last
layer can be kept frozen during DINO's first epoch (`cancel_last_layer_gradients`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DINOHead(nn.Module):
    """MLP, L2 normalization, then K unit-norm prototypes: cosine-similarity logits (see the module docstring)."""

    global_only = False  # local crops go through it too

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

    def forward_views(self, feats: Tensor, n_views: int) -> Tensor:
        return self(feats)  # (n_views B, K): each row is its own image

    def cancel_last_layer_gradients(self) -> None:
        """Drop the prototypes' gradient (called during the first epoch, before the optimizer step)."""
        self.last_layer.grad = None
