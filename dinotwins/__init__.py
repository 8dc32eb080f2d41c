"""DinoTwins Explorer: DINO, Barlow Twins and the DinoTwins hybrid for ViTs, trained and compared.

Public API: `load_model` (run dir, exported .safetensors, or official DINO weights) -> `LoadedModel`
(dinotwins/models/load.py). Both are imported on first use, so the torch-free parts of the package (the config,
the registries, the command lines' --help) stay torch-free. The folders are the parts; see docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LoadedModel", "load_model"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from dinotwins.models import load

        return getattr(load, name)
    raise AttributeError(f"module 'dinotwins' has no attribute {name!r}")
