"""A patch of gradio, applied once per process by `build_app`: output images written atomically.

What and why is in `atomic_gradio_image_cache`'s docstring; nothing else of gradio is changed.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from dinotwins.files import atomic_write


def atomic_gradio_image_cache() -> None:
    """Make gradio write output images atomically, process-wide (idempotent).

    gradio's `save_pil_to_cache` names each output image by the hash of its bytes and rewrites that file in place
    whenever a request produces the same image again (the same neighbour thumbnail, say), so a download of it
    running at that moment reads a half-written file (seen with 20 concurrent /retrieve calls). This version
    writes a new file through a temporary name in the same folder and `os.replace`, and reuses an existing one,
    touching it because delete_cache ages files by ctime."""
    from gradio import processing_utils

    if getattr(processing_utils.save_pil_to_cache, "atomic", False):
        return

    def save_pil_to_cache(img: Image.Image, cache_dir: str, name: str = "image", format: str = "webp") -> str:
        data = processing_utils.encode_pil_to_bytes(img, format)
        folder = Path(cache_dir) / processing_utils.hash_bytes(data)
        folder.mkdir(exist_ok=True, parents=True)
        path = (folder / f"{name}.{format}").resolve()
        if path.is_file():
            try:
                os.utime(path)
            except OSError:
                pass
            return str(path)
        atomic_write(path, data)
        return str(path)

    save_pil_to_cache.atomic = True  # type: ignore[attr-defined]
    processing_utils.save_pil_to_cache = save_pil_to_cache
