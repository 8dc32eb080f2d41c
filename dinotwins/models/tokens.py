"""A timm ViT's forward pass in two halves, for what `forward_features` cannot do: masked patches (iBOT) and crops
of several sizes packed into one sequence (DINOv2's sequence packing).

- `embed_tokens(backbone, x, masks, mask_token)`: patch embedding, masked patches replaced by `mask_token` (before
  the position embedding, as in iBOT), CLS (and register) tokens, position embedding (interpolated to the crop's
  grid), pre-norm: (B, N, D);
- `run_blocks(backbone, tokens, attn_mask)`: the blocks and the final norm;
- `packed_forward(backbone, groups)`: crops of several sizes (each group (V * B, 3, S, S), view-major as the
  multi-crop makes them) embedded per size, concatenated per image into one sequence, run through the blocks once
  with a block-diagonal attention mask (each crop attends to itself only), and split back: the same tokens as one
  pass per size, up to float rounding (stochastic depth, when on, drops a whole image's crops together).

`embed_tokens` then `run_blocks` equals `backbone.forward_features` (tested); neither changes the weights, so
checkpoints and exports are unaffected.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor


def embed_tokens(backbone: VisionTransformer, x: Tensor, masks: Tensor | None = None,
                 mask_token: Tensor | None = None) -> Tensor:
    """(B, 3, H, W) -> (B, N, D) tokens entering the first block; `masks` bool (B, H/p, W/p) marks the patches
    replaced by `mask_token` (D,)."""
    patches = backbone.patch_embed(x)  # (B, h, w, D): dynamic_img_size keeps the grid
    if masks is not None:
        patches = torch.where(masks[..., None], mask_token.to(patches.dtype), patches)
    tokens = backbone._pos_embed(patches)
    tokens = backbone.patch_drop(tokens)
    return backbone.norm_pre(tokens)


def run_blocks(backbone: VisionTransformer, tokens: Tensor, attn_mask: Tensor | None = None) -> Tensor:
    """The blocks (with `attn_mask`, bool (N, N), True = may attend) and the final norm: (B, N, D) -> (B, N, D)."""
    if attn_mask is None:
        tokens = backbone.blocks(tokens)
    else:
        for block in backbone.blocks:
            tokens = block(tokens, attn_mask=attn_mask)
    return backbone.norm(tokens)


def block_diagonal_mask(lengths: list[int], device: torch.device) -> Tensor:
    """bool (L, L), L = sum(lengths): True inside each segment's own square, False across segments."""
    segment = torch.repeat_interleave(torch.arange(len(lengths), device=device),
                                      torch.tensor(lengths, device=device))
    return segment[:, None] == segment[None, :]


def packed_forward(backbone: VisionTransformer, groups: list[Tensor], batch: int,
                   masks: list[Tensor | None] | None = None, mask_token: Tensor | None = None) -> list[Tensor]:
    """Normed tokens of every group, (V_g * B, N_g, D) each, from one pass of B packed sequences (see the module
    docstring). `masks[g]`, when given, masks group g's patches as in `embed_tokens`."""
    masks = masks or [None] * len(groups)
    embedded = [embed_tokens(backbone, x, m, mask_token) for x, m in zip(groups, masks)]  # (V_g * B, N_g, D)
    views = [e.shape[0] // batch for e in embedded]
    lengths = [e.shape[1] for e, v in zip(embedded, views) for _ in range(v)]
    # Per image: its crops one after another, group by group, view by view: (B, sum V_g N_g, D).
    per_image = [e.view(v, batch, e.shape[1], e.shape[2]).transpose(0, 1).reshape(batch, v * e.shape[1], e.shape[2])
                 for e, v in zip(embedded, views)]
    packed = run_blocks(backbone, torch.cat(per_image, dim=1), block_diagonal_mask(lengths, embedded[0].device))
    out, start = [], 0
    for e, v in zip(embedded, views):
        width = v * e.shape[1]
        part = packed[:, start:start + width].reshape(batch, v, e.shape[1], e.shape[2]).transpose(0, 1)
        out.append(part.reshape(v * batch, e.shape[1], e.shape[2]))
        start += width
    return out
