"""DinoTwins Explorer: DINO, Barlow Twins and the DinoTwins hybrid for ViTs, trained and compared.

Public API: `load_model` (run dir, exported .safetensors, or official DINO weights) -> `LoadedModel`.
"""

from dinotwins.models.load import LoadedModel, load_model

__all__ = ["LoadedModel", "load_model"]
