"""The ViT backbone: a timm VisionTransformer plus last-layer attention extraction.

What it is: `create_backbone` builds any timm ViT by name with the patch size, image size and width/depth
overrides a small-data run needs, always with `dynamic_img_size=True` so that 32 px global crops and 16 px
local crops pass through the same network. `last_layer_attention` returns the per-head CLS-to-patch softmax
weights of the final block.

What it is not: no custom transformer. `set_fused_attention` only picks between timm's two code paths for the
same maths (fused scaled-dot-product attention, which never materialises the weights, or explicit
softmax(q k^T) v); the attention maps are recomputed from the last block's own q/k projections on demand, so
asking for maps never slows training or changes the forward pass.
"""

from __future__ import annotations

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from dinotwins.errors import UserError
from dinotwins.models.config import ModelConfig


def create_backbone(cfg: ModelConfig) -> VisionTransformer:
    """Build the timm ViT described by `cfg`, with no classifier head (`num_classes=0`)."""
    if cfg.arch not in timm.list_models("vit_*") and cfg.arch not in timm.list_models("deit_*"):
        raise UserError(f"unknown ViT arch {cfg.arch!r}; use a timm ViT name such as vit_tiny_patch16_224")
    if cfg.image_size % cfg.patch_size:
        raise UserError(
            f"image size {cfg.image_size} is not a multiple of patch size {cfg.patch_size}; change one of them"
        )
    overrides = {k: v for k, v in (("embed_dim", cfg.embed_dim), ("depth", cfg.depth),
                                   ("num_heads", cfg.num_heads)) if v is not None}
    model = timm.create_model(
        cfg.arch,
        pretrained=False,
        num_classes=0,
        img_size=cfg.image_size,
        patch_size=cfg.patch_size,
        dynamic_img_size=True,
        drop_path_rate=cfg.drop_path_rate,
        **overrides,
    )
    if not isinstance(model, VisionTransformer):
        raise UserError(f"{cfg.arch!r} is not a VisionTransformer; use a timm ViT name")
    return model


def set_fused_attention(model: torch.nn.Module, fused: bool) -> int:
    """Switch every timm attention module under `model` to the fused (SDPA) or explicit path; returns how many
    modules were switched. Both compute softmax(q k^T * scale) v; they differ only in speed per device."""
    switched = 0
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused
            switched += 1
    return switched


def fused_attention_for(requested: str, device: torch.device) -> bool:
    """`auto` -> fused on CUDA, explicit elsewhere; `fused`/`explicit` as asked."""
    return device.type == "cuda" if requested == "auto" else requested == "fused"


def embed(model: VisionTransformer, x: Tensor) -> Tensor:
    """CLS token after the final norm: (B, 3, H, W) -> (B, D)."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


def last_layer_attention(model: VisionTransformer, x: Tensor) -> Tensor:
    """Per-head CLS-to-patch attention of the last block: (B, 3, H, W) -> (B, heads, H/p, W/p).

    The last block's input is captured with a forward pre-hook; its attention weights are then recomputed
    from the block's own norm and qkv projection, softmax(q k^T * scale). The weights over all keys sum to
    one; the returned map drops the CLS and register tokens, so it sums to slightly less than one.
    """
    block = model.blocks[-1]
    captured: dict[str, Tensor] = {}
    handle = block.register_forward_pre_hook(lambda _m, args: captured.__setitem__("x", args[0]))
    try:
        model.forward_features(x)
    finally:
        handle.remove()
    tokens = block.norm1(captured["x"])  # (B, N, D)
    attn = block.attn
    batch, num_tokens, dim = tokens.shape
    qkv = attn.qkv(tokens).reshape(batch, num_tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])  # (B, heads, N, head_dim)
    weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, heads, N, N)
    prefix = model.num_prefix_tokens
    cls_to_patches = weights[:, :, 0, prefix:]  # (B, heads, N - prefix)
    grid_h, grid_w = x.shape[-2] // patch_size_of(model), x.shape[-1] // patch_size_of(model)
    return cls_to_patches.reshape(batch, attn.num_heads, grid_h, grid_w)


def patch_size_of(model: VisionTransformer) -> int:
    return int(model.patch_embed.patch_size[0])
