"""What a ViT looks at, read off a timm VisionTransformer: attention weights of any block, CLS attention maps,
attention rollout, and last-layer patch tokens.

Attention weights are recomputed from a block's own input (captured by a forward pre-hook), norm and qkv
projection, softmax(q k^T * scale): the same maths as either of timm's attention paths, so asking for maps never
changes or slows the forward pass (fused attention never materialises the weights).

- `cls_attention(model, x, layer)`: per head, the CLS token's attention to the patches of one block (DINO's maps);
- `attention_rollout(model, x, head_fusion, discard_ratio)`: Abnar & Zuidema (2020): each block's attention, its
  heads fused (mean, max or min), the smallest `discard_ratio` of each row's weights dropped (the CLS column
  kept), plus the identity for the residual, rows renormalized; multiplied from the first block to the last; the
  CLS row of the product, over the patches;
- `patch_tokens(model, x)`: the last layer's patch tokens after the final norm (DINOv2's PCA picture, patch
  similarity), as a (B, h, w, D) grid.

Maps drop the CLS and register tokens, so CLS attention sums to slightly less than one over the patches.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

HEAD_FUSIONS = ("mean", "max", "min")


def grid_of(model: VisionTransformer, x: Tensor) -> tuple[int, int]:
    """(h, w) patches of an input x (B, 3, H, W)."""
    patch = int(model.patch_embed.patch_size[0])
    return x.shape[-2] // patch, x.shape[-1] // patch


def attention_weights(model: VisionTransformer, x: Tensor, layers: list[int]) -> dict[int, Tensor]:
    """{layer: (B, heads, N, N) softmax weights} of the given blocks (negative indices count from the end)."""
    depth = len(model.blocks)
    wanted = sorted({layer % depth for layer in layers})
    captured: dict[int, Tensor] = {}
    handles = [model.blocks[i].register_forward_pre_hook(lambda _m, args, i=i: captured.__setitem__(i, args[0]))
               for i in wanted]
    try:
        model.forward_features(x)
    finally:
        for handle in handles:
            handle.remove()
    out = {}
    for i in wanted:
        block = model.blocks[i]
        tokens = block.norm1(captured[i])  # (B, N, D)
        attn = block.attn
        batch, num_tokens, _ = tokens.shape
        qkv = attn.qkv(tokens).reshape(batch, num_tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])  # (B, heads, N, head_dim)
        out[i] = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, heads, N, N)
    return {layer: out[layer % depth] for layer in layers}


def cls_attention(model: VisionTransformer, x: Tensor, layer: int = -1) -> Tensor:
    """Per-head CLS-to-patch attention of one block: (B, 3, H, W) -> (B, heads, h, w)."""
    weights = attention_weights(model, x, [layer])[layer]
    h, w = grid_of(model, x)
    return weights[:, :, 0, model.num_prefix_tokens:].reshape(weights.shape[0], weights.shape[1], h, w)


def attention_rollout(model: VisionTransformer, x: Tensor, head_fusion: str = "mean",
                      discard_ratio: float = 0.0) -> Tensor:
    """Attention rollout (see the module docstring): (B, 3, H, W) -> (B, h, w), the CLS row over the patches."""
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    weights = attention_weights(model, x, list(range(len(model.blocks))))
    rollout = None
    for layer in range(len(model.blocks)):
        fused = getattr(weights[layer], head_fusion)(dim=1)  # (B, N, N)
        fused = fused.values if head_fusion != "mean" else fused
        if discard_ratio > 0:
            fused = _discard_lowest(fused, discard_ratio, model.num_prefix_tokens)
        eye = torch.eye(fused.shape[-1], device=fused.device, dtype=fused.dtype)
        step = fused + eye  # the residual connection
        step = step / step.sum(dim=-1, keepdim=True)
        rollout = step if rollout is None else step @ rollout
    h, w = grid_of(model, x)
    return rollout[:, 0, model.num_prefix_tokens:].reshape(-1, h, w)


def patch_tokens(model: VisionTransformer, x: Tensor) -> Tensor:
    """Last-layer patch tokens after the final norm: (B, 3, H, W) -> (B, h, w, D)."""
    tokens = model.forward_features(x)[:, model.num_prefix_tokens:]  # (B, h*w, D)
    h, w = grid_of(model, x)
    return tokens.reshape(tokens.shape[0], h, w, tokens.shape[-1])


def _discard_lowest(weights: Tensor, ratio: float, prefix: int = 1) -> Tensor:
    """Zero the smallest `ratio` of each row's patch weights (B, N, N), never the `prefix` columns (CLS, registers)."""
    n = weights.shape[-1]
    drop = int(ratio * (n - prefix))
    if drop == 0:
        return weights
    patches = weights[..., prefix:]
    threshold = patches.kthvalue(drop, dim=-1, keepdim=True).values  # (B, N, 1)
    kept = torch.where(patches <= threshold, torch.zeros_like(patches), patches)
    return torch.cat([weights[..., :prefix], kept], dim=-1)
