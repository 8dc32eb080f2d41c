"""Exported models: a backbone's weights as safetensors, with its config and provenance in the metadata.

The file holds only tensors (no pickle), so anyone can load it safely; the metadata (strings) holds
`dinotwins` = JSON of {model config, normalization, method, data, steps, git commit, created}.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_save
from torch import nn

from dinotwins.files import atomic_write

EXPORTS_DIR = "exports"  # a run's weights kept every `export_every` steps, as exports/step_XXXXXXXX.safetensors


def export_path(run_dir: Path, step: int) -> Path:
    """Where a run keeps its weights of `step` (train.py --export-every; ship --exports; the Over training tab)."""
    return Path(run_dir) / EXPORTS_DIR / f"step_{step:08d}.safetensors"
from dinotwins.models.config import IMAGENET_MEAN, IMAGENET_STD, ModelConfig

FORMAT = "dinotwins/1"
EXPORT_NAME = "model.safetensors"  # a run's exported weights, in its folder


def git_commit(cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def export_backbone(backbone: nn.Module, model_cfg: ModelConfig, path: Path, *, method: str, data: str,
                    steps: int, dtype: torch.dtype = torch.float32, extra: dict[str, Any] | None = None,
                    mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> Path:
    """Write `backbone`'s state dict to `path` (atomically) with config and provenance."""
    tensors = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
               for k, v in backbone.state_dict().items()}
    info = {
        "format": FORMAT,
        "model": asdict(model_cfg),
        "mean": list(mean),
        "std": list(std),
        "method": method,
        "data": data,
        "steps": steps,
        "git_commit": git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }
    atomic_write(path, safetensors_save(tensors, metadata={"dinotwins": json.dumps(info)}))
    return path
