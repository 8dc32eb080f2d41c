"""The multi-crop recipe's settings (`AugmentConfig`), torch-free so a run's config can be read and checked
without importing torch; the augmentation itself is augment.py."""

from __future__ import annotations

from dataclasses import dataclass

from dinotwins.errors import UserError
from dinotwins.models.config import IMAGENET_MEAN, IMAGENET_STD


@dataclass
class AugmentConfig:
    """The multi-crop recipe. Probabilities are per image; the triples and pairs are per view as noted."""

    global_size: int = 32  # global crops; equals the model's image size
    local_size: int = 16  # half the global size, close to DINO's 96 / 224
    n_local: int = 6  # DINO's ViT-S recipe uses 10; 6 keeps a CPU step affordable
    global_scale: tuple[float, float] = (0.4, 1.0)  # DINO's default with local crops (global crops keep context)
    local_scale: tuple[float, float] = (0.05, 0.4)  # small parts of the image: the local-to-global task
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect range (log-uniform), as RandomResizedCrop
    flip_p: float = 0.5  # left-right symmetry is a free invariance for natural images
    color_jitter_p: float = 0.8  # BYOL / DINO: jitter most views so color alone can't match them
    brightness: float = 0.4  # factor ~ U(1 - b, 1 + b)
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1  # shift ~ U(-h, h) of a full turn
    grayscale_p: float = 0.2  # BYOL / DINO
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)  # global view 1, global view 2, local views (BYOL)
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # pixels at 224 px; scaled by global_size / 224
    solarize_p: tuple[float, float] = (0.0, 0.2)  # global view 1, global view 2 (BYOL's asymmetry)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def validate(self) -> None:
        """UserError naming the first out-of-range field."""
        probabilities = {"flip_p": (self.flip_p,), "color_jitter_p": (self.color_jitter_p,),
                         "grayscale_p": (self.grayscale_p,), "blur_p": self.blur_p, "solarize_p": self.solarize_p}
        for name, values in probabilities.items():
            if not all(0.0 <= p <= 1.0 for p in values):
                raise UserError(f"augment.{name} must be probabilities in [0, 1], got {values}")
        for name in ("global_scale", "local_scale"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi <= 1.0:
                raise UserError(f"augment.{name} must be (min, max) with 0 < min <= max <= 1, got ({lo}, {hi})")
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise UserError(f"augment.ratio must be (min, max) with 0 < min <= max, got {self.ratio}")
        if self.global_size < 1 or self.local_size < 1 or self.n_local < 0:
            raise UserError(f"augment sizes must be positive and n_local >= 0, got global_size {self.global_size}, "
                            f"local_size {self.local_size}, n_local {self.n_local}")
        if not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise UserError(f"augment.blur_sigma must be (min, max) with 0 < min <= max, got {self.blur_sigma}")
        if min(self.brightness, self.contrast, self.saturation) < 0 or not 0 <= self.hue <= 0.5:
            raise UserError("augment brightness, contrast and saturation must be >= 0 and hue in [0, 0.5]")
