"""Example queries: photos bundled with scikit-image, then one gallery image per class.

The photos are never seen in training: the `scenes` data keeps scikit-image's photos out of its backgrounds. The
first five (a cat, a coffee cup, a person, a rocket, a motorcycle) are the README's attention figure; the logo
is RGBA (it shows the alpha-on-white rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from app.gallery import Gallery
from app.images import load_image

GALLERY_EXAMPLES = 12


@dataclass(frozen=True)
class Example:
    caption: str
    image: Image.Image  # RGB
    gallery_index: int | None  # set when the example is a gallery image (retrieval then excludes it)


def skimage_photos() -> list[tuple[str, np.ndarray]]:
    """(name, array) of the bundled photos this scikit-image has, figure photos first."""
    import skimage.data

    loaders = {"chelsea": skimage.data.chelsea, "coffee": skimage.data.coffee,
               "astronaut": skimage.data.astronaut, "rocket": getattr(skimage.data, "rocket", None),
               "motorcycle": lambda: skimage.data.stereo_motorcycle()[0], "camera": skimage.data.camera,
               "logo": skimage.data.logo}
    photos = []
    for name, loader in loaders.items():
        try:
            photos.append((name, loader()))
        except Exception:  # noqa: BLE001 - a photo this scikit-image lacks (or cannot find) is left out
            continue
    return photos


def example_queries(gallery: Gallery) -> list[Example]:
    """The bundled photos then the first gallery image of each class."""
    examples = [Example(name, load_image(array, name), None) for name, array in skimage_photos()]
    for index in gallery.first_of_each_class(GALLERY_EXAMPLES):
        examples.append(Example(f"#{index} {gallery.label_name(index)}", gallery.image(index), index))
    return examples
