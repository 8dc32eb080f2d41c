"""The backbone's architecture settings and the input normalization every model here expects.

Torch-free, so a run's config can be read and checked (`dinotwins.config`) without importing torch or timm.
"""

from __future__ import annotations

from dataclasses import dataclass

# timm's ViTs are set up for ImageNet statistics: augmentation, export and loading all default to them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelConfig:
    """Backbone architecture.

    The default is ViT-Tiny (dim 192, depth 12, 3 heads) with 4 px patches on 32 px images: 64 patch tokens,
    the same token count as ViT/16 at 128 px, which keeps a CPU step affordable on Fashion-MNIST/CIFAR-sized data.
    """

    arch: str = "vit_tiny_patch16_224"  # any timm VisionTransformer name
    image_size: int = 32  # size of global crops and of inference inputs
    patch_size: int = 4
    embed_dim: int | None = None  # None: the arch's own width
    depth: int | None = None  # None: the arch's own depth
    num_heads: int | None = None  # None: the arch's own head count
    drop_path_rate: float = 0.1  # stochastic depth, DINO's default for ViT-S
    reg_tokens: int = 0  # register tokens beside CLS ("Vision Transformers Need Registers"); maps leave them out
    pos_embed: str = "learn"  # "learn": timm's learned absolute position embedding; "none": patches carry content only

    def extras(self) -> list[str]:
        """What sets this backbone apart beyond blocks, width, heads and sizes, in words for names and cards."""
        return ([f"{self.reg_tokens} registers"] if self.reg_tokens else []) + \
            (["no position embedding"] if self.pos_embed == "none" else [])
