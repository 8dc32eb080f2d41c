"""The self-supervised objectives, one file each, registered here by name (the `--method` and the config.yaml
section of each).

- dino.py: DINO (Caron et al. 2021), a student matching an EMA teacher over K prototypes;
- barlow.py: Barlow Twins (Zbontar et al. 2021), two views' cross-correlation pushed to the identity;
- hybrid.py: DinoTwins (arXiv 2508.17509), both on one backbone.

Each file owns its config section dataclass, heads, teacher, per-step values, loss terms, logged signals and
collapse checks behind the `Objective` interface (base.py); pure loss maths is in losses.py. The trainer asks
`build_objective(cfg)` for the method's objective and never asks which one it runs.

The registry names each class by module path, so reading it (the CLI's --method choices, the config's section names)
imports no torch; a module is imported the first time its objective or its config section is needed.

Add an objective: a new file here with a config dataclass and an `Objective` subclass, and one line in `OBJECTIVES`.
An ingredient objectives share (iBOT) may add a config section of its own in `EXTRA_SECTIONS`.
"""

from __future__ import annotations

import importlib
from typing import Any

OBJECTIVES = {  # method name (also its config.yaml section) -> "module:class"
    "dino": "dinotwins.objectives.dino:DINO",
    "barlow": "dinotwins.objectives.barlow:BarlowTwins",
    "hybrid": "dinotwins.objectives.hybrid:DinoTwins",
}
METHODS = tuple(OBJECTIVES)
# config.yaml sections beside the objectives' own: ingredients an objective may read (DINOv2's iBOT, dinov2.py).
EXTRA_SECTIONS = {"ibot": "dinotwins.objectives.dinov2:IBotConfig"}
SECTIONS = (*METHODS, *EXTRA_SECTIONS)


def objective_class(method: str) -> Any:
    """The `Objective` subclass registered as `method` (imports its module)."""
    return _resolve(OBJECTIVES[method])


def section_class(name: str) -> type:
    """The dataclass of config section `name` (one of `SECTIONS`; imports its module)."""
    return objective_class(name).config_class if name in OBJECTIVES else _resolve(EXTRA_SECTIONS[name])


def _resolve(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def build_objective(cfg: Any) -> Any:
    """The objective of a `TrainConfig`'s method, built from its config."""
    return objective_class(cfg.method).from_config(cfg)
