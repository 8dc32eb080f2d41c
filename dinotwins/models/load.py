"""`load_model`: one way in for every model the app and the evaluation use.

Takes a run directory, an exported `.safetensors` file, or the official DINO files (a backbone state dict
such as `dino_deitsmall16_pretrain.pth`, or a training checkpoint with a `teacher` entry). Returns a
`LoadedModel` with `preprocess`, `embed`, `attention` (of any block), `rollout` and `patch_tokens`.

Safety: nothing is unpickled beyond tensors and plain containers (safetensors, or
`torch.load(weights_only=True)`); weights with NaN/inf are refused; weights that don't fit the architecture
are a `UserError` listing what is missing or unexpected, never a silent partial load.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load as safetensors_load
from torch import Tensor

from dinotwins.errors import UserError
from dinotwins.models import maps
from dinotwins.models.backbone import create_backbone, embed, patch_size_of
from dinotwins.models.config import IMAGENET_MEAN, IMAGENET_STD, ModelConfig
from dinotwins.models.export import EXPORT_NAME
from dinotwins.models.preprocess import eval_transform


class LoadedModel:
    """A frozen backbone with its preprocessing; everything runs in eval mode without gradients."""

    def __init__(self, backbone: torch.nn.Module, config: ModelConfig, *, name: str, metadata: dict[str, Any],
                 weights_hash: str, run_dir: Path | None = None, device: str | torch.device = "cpu",
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD):
        self.device = torch.device(device)
        self.backbone = backbone.float().eval().requires_grad_(False).to(self.device)
        self.config = config
        self.name = name
        self.metadata = metadata
        self.weights_hash = weights_hash
        self.run_dir = run_dir
        self.mean, self.std = tuple(mean), tuple(std)
        self.image_size = config.image_size
        self.patch_size = patch_size_of(backbone)
        self.embed_dim = int(backbone.num_features)
        self.num_heads = int(backbone.blocks[-1].attn.num_heads)
        self.depth = len(backbone.blocks)

    def __repr__(self) -> str:
        return (f"LoadedModel({self.name!r}, dim={self.embed_dim}, heads={self.num_heads}, "
                f"patch={self.patch_size}, size={self.image_size})")

    def input_size(self, scale: float = 1.0) -> int:
        """The input side for `scale` times the training size, rounded to whole patches (at least one patch).
        Position embeddings are interpolated to it (timm's dynamic_img_size), so maps get finer with scale."""
        if not scale > 0:
            raise UserError(f"inference scale must be positive, got {scale}")
        return max(1, round(self.image_size * scale / self.patch_size)) * self.patch_size

    def preprocess(self, images: list[Image.Image], size: int | None = None) -> Tensor:
        """(B, 3, size, size) on the model's device: each image as RGB through `eval_transform`, the one
        preprocessing of the evaluation and the app (a square resize to `size`, default the training size, bilinear
        and antialiased when shrinking; the model's mean and std)."""
        size = size or self.image_size
        batch = [eval_transform(torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)[None], size,
                                self.mean, self.std) for img in images]
        return torch.cat(batch).to(self.device)

    @torch.inference_mode()
    def embed(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, D) float32: the CLS token after the final norm."""
        return embed(self.backbone, x.to(self.device, torch.float32)).float()

    def block_index(self, block: int) -> int:
        """The 0-based index of block number `block` as people count them (1 = first); 0 or past this model's
        depth: the last block (-1). The convention of the Attention tab's Layer control and `--attention-layer`."""
        return block - 1 if 0 < block <= self.depth else -1

    @torch.inference_mode()
    def attention(self, x: Tensor, layer: int = -1) -> Tensor:
        """(B, 3, H, W) -> (B, heads, H/p, W/p): CLS-to-patch softmax weights per head of block `layer` (0-based,
        negative from the end; default the last)."""
        return maps.cls_attention(self.backbone, self._whole_patches(x), layer).float()

    @torch.inference_mode()
    def rollout(self, x: Tensor, head_fusion: str = "mean", discard_ratio: float = 0.0) -> Tensor:
        """(B, 3, H, W) -> (B, H/p, W/p): attention rollout through every block (`maps.attention_rollout`)."""
        return maps.attention_rollout(self.backbone, self._whole_patches(x), head_fusion, discard_ratio).float()

    @torch.inference_mode()
    def patch_tokens(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, H/p, W/p, D): last-layer patch tokens after the final norm."""
        return maps.patch_tokens(self.backbone, self._whole_patches(x)).float()

    def _whole_patches(self, x: Tensor) -> Tensor:
        """x on the device in float32, resized down to whole patches where its sides are not multiples of p."""
        x = x.to(self.device, torch.float32)
        p = self.patch_size
        if x.shape[-1] % p or x.shape[-2] % p:
            x = F.interpolate(x, size=(x.shape[-2] // p * p, x.shape[-1] // p * p), mode="bilinear",
                              align_corners=False)
        return x

    @classmethod
    def random_like(cls, other: "LoadedModel", seed: int = 0) -> "LoadedModel":
        """A randomly initialized backbone of the same architecture: the evaluation's baseline."""
        torch.manual_seed(seed)
        backbone = create_backbone(other.config)
        model = cls(backbone, other.config, name="", metadata={"method": "random"},
                    weights_hash=f"random-{seed}-{_config_hash(other.config)}", device=other.device,
                    mean=other.mean, std=other.std)
        extras = "".join(f", {part}" for part in other.config.extras())
        model.name = (f"random-init {other.config.arch} ({len(backbone.blocks)} blocks, dim {model.embed_dim}, "
                      f"{model.num_heads} heads, {model.image_size} px / patch {model.patch_size}{extras})")
        return model


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a run directory, an exported .safetensors, or official DINO weights (.pth)."""
    path = Path(path).expanduser()
    run_dir = None
    if path.is_dir():
        run_dir = path
        path = path / EXPORT_NAME
        if not path.is_file():
            raise UserError(f"run directory {run_dir} has no {EXPORT_NAME}; train it to the end or pass the "
                            f"weights file")
    if not path.is_file():
        raise UserError(f"model {path} does not exist; pass a run directory, a .safetensors or a .pth file")
    raw = path.read_bytes()
    weights_hash = hashlib.sha256(raw).hexdigest()
    if raw[:2] == b"PK" or path.suffix in (".pth", ".pt", ".bin"):
        state, metadata, config = _from_torch_file(path)
    else:
        state, metadata, config = _from_safetensors(path, raw)
    _check_finite(state, path)
    backbone = create_backbone(config)
    _strict_load(backbone, state, path)
    name = run_dir.name if run_dir is not None else path.stem
    if run_dir is None and path.name == EXPORT_NAME:
        name = path.parent.name
        run_dir = path.parent if (path.parent / "metrics.jsonl").is_file() else None
    return LoadedModel(backbone, config, name=name, metadata=metadata, weights_hash=weights_hash, run_dir=run_dir,
                       device=device, mean=tuple(metadata.get("mean", IMAGENET_MEAN)),
                       std=tuple(metadata.get("std", IMAGENET_STD)))


def _from_safetensors(path: Path, raw: bytes) -> tuple[dict[str, Tensor], dict[str, Any], ModelConfig]:
    try:
        state = safetensors_load(raw)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the same user error
        raise UserError(f"{path} is not a readable safetensors file ({str(exc)[:120]})") from None
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    meta = header.get("__metadata__", {}) or {}
    if "dinotwins" in meta:
        metadata = json.loads(meta["dinotwins"])
        model = metadata.get("model", {})
        model["arch"] = model.get("arch", "vit_tiny_patch16_224")
        config = ModelConfig(**model)
        return state, metadata, config
    config = infer_config(state, path)
    return state, {"method": "unknown", "source": str(path)}, config


def _from_torch_file(path: Path) -> tuple[dict[str, Tensor], dict[str, Any], ModelConfig]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a refused or broken file is one user error
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"refusing to load {path}: not a plain tensor file ({reason[:160]})") from None
    metadata: dict[str, Any] = {"method": "dino (official)", "source": str(path)}
    if isinstance(obj, dict) and "teacher" in obj and isinstance(obj["teacher"], dict):
        obj = obj["teacher"]
        metadata["note"] = "official DINO training checkpoint: loaded its teacher"
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise UserError(f"{path} holds no backbone state dict; pass DINO backbone weights or a run directory")
    state: dict[str, Tensor] = {}
    dropped = []
    for key, value in obj.items():
        key = re.sub(r"^(module\.)?(backbone\.)?", "", key)
        if key.startswith("head") and not key.startswith("head_drop"):
            dropped.append(key)
            continue
        state[key] = value
    if dropped:
        metadata["dropped_keys"] = len(dropped)
        metadata["note"] = metadata.get("note", "") + f"; dropped {len(dropped)} projection-head keys"
    return state, metadata, infer_config(state, path)


def infer_config(state: dict[str, Tensor], path: Path) -> ModelConfig:
    """Architecture of a plain ViT state dict: width and patch from patch_embed, depth from blocks,
    heads = width / 64 (DINO's and timm's ViT-S/B convention), image size from pos_embed."""
    try:
        proj = state["patch_embed.proj.weight"]  # (D, 3, p, p)
        pos = state["pos_embed"]  # (1, 1 + n*n, D)
    except KeyError:
        raise UserError(f"{path} does not look like ViT weights (no patch_embed.proj.weight / pos_embed)") from None
    dim, patch = int(proj.shape[0]), int(proj.shape[-1])
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    grid = int(round((pos.shape[1] - 1) ** 0.5))
    return ModelConfig(arch="vit_small_patch16_224", image_size=grid * patch, patch_size=patch, embed_dim=dim,
                       depth=depth, num_heads=max(dim // 64, 1), drop_path_rate=0.0)


def _check_finite(state: dict[str, Tensor], path: Path) -> None:
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise UserError(f"{path} has NaN or inf values in {key}; the weights are broken, re-export them")


def _strict_load(backbone: torch.nn.Module, state: dict[str, Tensor], path: Path) -> None:
    expected = backbone.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of wrong shape (e.g. {k}: {tuple(state[k].shape)} vs "
                         f"{tuple(expected[k].shape)})")
        raise UserError(f"weights in {path} don't fit the architecture: {'; '.join(parts)}")
    backbone.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)


def _config_hash(config: ModelConfig) -> str:
    return hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode()).hexdigest()[:16]
