"""Example queries: scikit-image's bundled photos and one gallery image per class."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from app.gallery import Gallery
from app.images import load_image

SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry",
                  "hubble_deep_field", "logo")  # logo is RGBA: shows the alpha-on-white rule
GALLERY_EXAMPLES = 10


@dataclass(frozen=True)
class Example:
    caption: str
    image: Image.Image  # RGB
    gallery_index: int | None  # set when the example is a gallery image (retrieval then excludes it)


def example_queries(gallery: Gallery) -> list[Example]:
    """The bundled photos (those this scikit-image has) then the first gallery image of each class."""
    import skimage.data

    examples = []
    for name in SKIMAGE_PHOTOS:
        loader = getattr(skimage.data, name, None)
        if loader is not None:
            examples.append(Example(name, load_image(loader(), name), None))
    for index in gallery.first_of_each_class(GALLERY_EXAMPLES):
        examples.append(Example(f"#{index} {gallery.label_name(index)}", gallery.image(index), index))
    return examples
