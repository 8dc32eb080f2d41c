"""The ViT backbone: a timm VisionTransformer, built for small data.

What it is: `create_backbone` builds any timm ViT by name with the patch size, image size and width/depth
overrides a small-data run needs, always with `dynamic_img_size=True` so that 32 px global crops and 16 px
local crops pass through the same network (and a model runs at a multiple of its training size, its position
embeddings interpolated); `embed` is its CLS embedding.

What it is not: no custom transformer. `set_fused_attention` only picks between timm's two code paths for the
same maths (fused scaled-dot-product attention, which never materialises the weights, or explicit
softmax(q k^T) v), and `PatchProjection` computes timm's patch convolution as the same matrix product where that
is faster; attention maps, rollout and patch tokens are read off the model in maps.py.
"""

from __future__ import annotations

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torch.nn import functional as F

from dinotwins.errors import UserError
from dinotwins.models.config import ModelConfig
from dinotwins.timing import best_seconds, forward_backward


def create_backbone(cfg: ModelConfig) -> VisionTransformer:
    """Build the timm ViT described by `cfg`, with no classifier head (`num_classes=0`)."""
    if cfg.arch not in timm.list_models("vit_*") and cfg.arch not in timm.list_models("deit_*"):
        raise UserError(f"unknown ViT arch {cfg.arch!r}; use a timm ViT name such as vit_tiny_patch16_224")
    if cfg.image_size % cfg.patch_size:
        raise UserError(
            f"image size {cfg.image_size} is not a multiple of patch size {cfg.patch_size}; change one of them"
        )
    overrides = {k: v for k, v in (("embed_dim", cfg.embed_dim), ("depth", cfg.depth), ("num_heads", cfg.num_heads),
                                   ("reg_tokens", cfg.reg_tokens or None),
                                   ("pos_embed", None if cfg.pos_embed == "learn" else cfg.pos_embed)) if v is not None}
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
    model.patch_embed.proj = PatchProjection.replacing(model.patch_embed.proj)
    return model


class PatchProjection(nn.Conv2d):
    """timm's patch embedding convolution (kernel = stride = patch, no padding, so each output is one patch's
    pixels times the weights). Under CPU bf16 autocast it runs as that matrix product over the unfolded patches,
    which oneDNN computes faster than its bf16 convolution over 3 input channels (`python -m dinotwins.bench
    --patch-embedding PAIRS`); in fp32 and on a GPU it is the convolution. Same parameters and state-dict keys as
    the `nn.Conv2d` it replaces."""

    @classmethod
    def replacing(cls, conv: nn.Conv2d) -> nn.Conv2d:
        """`conv` as a PatchProjection with its weights (no new random draws), or `conv` itself if it is not a
        patch convolution."""
        if conv.kernel_size != conv.stride or conv.padding != (0, 0) or conv.dilation != (1, 1) or conv.groups != 1:
            return conv
        projection = uninitialized_like(cls, conv)
        projection.load_state_dict(conv.state_dict())
        return projection

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu") or \
                torch.get_autocast_dtype("cpu") != torch.bfloat16:
            return super().forward(x)
        (ph, pw), (b, c, height, width) = self.kernel_size, x.shape
        h, w = height // ph, width // pw
        patches = x.reshape(b, c, h, ph, w, pw).permute(0, 2, 4, 1, 3, 5).reshape(b * h * w, c * ph * pw)
        out = F.linear(patches, self.weight.reshape(self.out_channels, -1), self.bias)
        return out.reshape(b, h, w, self.out_channels).permute(0, 3, 1, 2)  # NCHW, as the convolution returns


def uninitialized_like(cls: type[nn.Conv2d], conv: nn.Conv2d) -> nn.Conv2d:
    """A `cls` of `conv`'s geometry, dtype and device, its parameters left uninitialized (no random draws)."""
    return torch.nn.utils.skip_init(cls, conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                                    bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)


def set_fused_attention(model: torch.nn.Module, fused: bool) -> int:
    """Switch every timm attention module under `model` to the fused (SDPA) or explicit path; returns how many
    modules were switched. Both compute softmax(q k^T * scale) v; they differ only in speed per device."""
    switched = 0
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused
            switched += 1
    return switched


def fused_attention_for(requested: str, device: torch.device, model: VisionTransformer | None = None,
                        tokens: int = 65, batch: int = 128, dtype: torch.dtype | None = None,
                        compiled: bool = False) -> bool:
    """`fused`/`explicit` as asked; `auto`: fused on CUDA, and on a CPU whichever path times faster, forward and
    backward of one of `model`'s attention layers on (batch, tokens) in `dtype` (None: fp32), measured here (a few
    tenths of a second): which one wins depends on the CPU, the dtype and the sequence length. A `compiled` model
    on a CPU takes explicit: the compiler fuses its softmax, while the eager timing here would not show that."""
    if requested != "auto":
        return requested == "fused"
    if device.type == "cuda" or model is None:
        return device.type == "cuda"
    if compiled:
        return False
    attn = model.blocks[-1].attn
    key = (str(device), str(dtype), tokens, batch, model.embed_dim, attn.num_heads)
    if key in _MEASURED:  # once per process and shape: every trainer of a process computes the same way
        return _MEASURED[key]
    x = torch.randn(batch, tokens, model.embed_dim, device=device, requires_grad=True)
    run = forward_backward(attn, x, lambda: torch.autocast(device.type, dtype=dtype or torch.float32,
                                                           enabled=dtype is not None))

    def use(fused: bool) -> None:
        attn.fused_attn = fused

    # interleaved, so a load that starts or stops mid-timing falls on both paths
    times = best_seconds({True: run, False: run}, 3, device=device, before_each=use)
    attn.zero_grad(set_to_none=True)
    _MEASURED[key] = times[True] < times[False]
    return _MEASURED[key]


_MEASURED: dict[tuple, bool] = {}


def embed(model: VisionTransformer, x: Tensor) -> Tensor:
    """CLS token after the final norm: (B, 3, H, W) -> (B, D)."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


def patch_size_of(model: VisionTransformer) -> int:
    return int(model.patch_embed.patch_size[0])
