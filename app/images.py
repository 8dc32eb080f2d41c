"""Safe image loading: any upload or array -> a bounded-size 8-bit RGB `PIL.Image`, or one clear `UserError`.

What it guards against:
- decompression bombs: more than `MAX_IMAGE_PIXELS` (50 MP) is refused before decoding; Pillow's own bomb
  warning is raised as an error too (`harden_pil` sets both process-wide, so gradio's decoding obeys them);
- memory: JPEGs are decoded at reduced scale (`Image.draft`), other large images are `reduce`d right after
  decoding, and the result is a thumbnail of at most `MAX_SIDE` px, so nothing large is copied twice;
- unreadable input: SVG, empty, truncated or non-image files raise `UserError` with a one-line reason.

Colour handling (decided here, once):
- EXIF orientation is applied (the table `ImageOps.exif_transpose` uses, applied after downscaling);
- alpha (RGBA, LA, PA, palette or grey with a transparent colour) is composited on WHITE, the background a
  browser and most viewers show behind a transparent image, so the model sees what the user sees;
- 16-bit (I;16*) and 32-bit integer (I) grey is scaled by 1/257 (65535 -> 255), so the full range maps onto
  8 bits instead of clipping everything above 255; float (F) images in [0, 1] are scaled by 255;
- 1-bit, grey, palette, CMYK, YCbCr, HSV become RGB through Pillow's conversions;
- animated GIF/WebP/multi-page TIFF: the first frame.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from dinotwins.errors import UserError

MAX_IMAGE_PIXELS = 50_000_000  # 50 MP: a large camera photo; more is refused before decoding
MAX_FILE_BYTES = 20 * 1024 * 1024  # uploads above this are refused (gradio's max_file_size uses it too)
MAX_SIDE = 1024  # working resolution: every model here looks at <= 224 px, the overlays at 128 px
BACKGROUND = (255, 255, 255)  # what transparent pixels become (see the module docstring)
SUPPORTED = "PNG, JPEG, WebP, GIF, BMP or TIFF"

# EXIF orientation -> the transposition that undoes it (the same table as PIL.ImageOps.exif_transpose).
_UNDO_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_WIDE_GREY_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def harden_pil() -> None:
    """Lower Pillow's bomb limit to `MAX_IMAGE_PIXELS` and make its bomb warning an error, process-wide."""
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def load_image(source: str | Path | bytes | Image.Image | np.ndarray, name: str | None = None) -> Image.Image:
    """Any image source -> RGB `PIL.Image` of at most `MAX_SIDE` px a side. Raises `UserError` if unusable."""
    if isinstance(source, Image.Image):
        return _sanitize(source, name or "image")
    if isinstance(source, np.ndarray):
        return _sanitize(image_from_array(source), name or "array")
    if isinstance(source, bytes):
        return _decode(source, name or "upload")
    path = Path(source)
    label = name or path.name
    if not path.is_file():
        raise UserError(f"{label}: no such file; upload a {SUPPORTED} image")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise UserError(f"{label} is {size / 2**20:.1f} MB; upload an image under {MAX_FILE_BYTES // 2**20} MB")
    return _decode(path.read_bytes(), label)


def image_from_array(array: np.ndarray) -> Image.Image:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array of bool, uint8, uint16 or float in [0, 1] -> PIL image."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)) or 0 in a.shape:
        raise UserError(f"image array of shape {a.shape} is not (H, W), (H, W, 3) or (H, W, 4)")
    if a.shape[0] * a.shape[1] > MAX_IMAGE_PIXELS:
        raise UserError(f"image of {a.shape[1]}x{a.shape[0]} px is over the {MAX_IMAGE_PIXELS // 10**6} MP limit")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = _scale_16bit(a)
    elif a.dtype.kind == "f":
        a = np.clip(np.nan_to_num(a) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise UserError(f"image array of dtype {a.dtype} is not bool, uint8, uint16 or float")
    return Image.fromarray(np.ascontiguousarray(a))  # uint8 (H, W) -> L, (H, W, 3) -> RGB, (H, W, 4) -> RGBA


def _decode(data: bytes, label: str) -> Image.Image:
    if not data:
        raise UserError(f"{label} is an empty file; upload a {SUPPORTED} image")
    if _looks_like_svg(data):
        raise UserError(f"{label} is an SVG (vector) image, which is not supported; upload a {SUPPORTED} image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                _check_pixels(im.size, label)
                im.seek(0)  # first frame of an animation or multi-page file
                return _sanitize(im, label)
    except UserError:
        raise
    except UnidentifiedImageError:
        raise UserError(f"{label} is not an image Pillow can read; upload a {SUPPORTED} image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(f"{label} is too large: over the {MAX_IMAGE_PIXELS // 10**6} MP limit; upload a smaller "
                        f"image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
        raise UserError(f"{label} is truncated or corrupted ({reason}); upload the file again or another one") \
            from None


def _sanitize(im: Image.Image, label: str) -> Image.Image:
    """Decode (at reduced scale where possible), orient, convert to RGB, bound the size."""
    _check_pixels(im.size, label)
    orientation = im.getexif().get(0x0112, 1)  # read before any conversion drops the metadata
    if im.format == "JPEG" and max(im.size) > MAX_SIDE:
        shrink = MAX_SIDE / max(im.size)  # draft keeps both sides >= the box: give it the box of the target
        im.draft(im.mode, (max(1, round(im.width * shrink)), max(1, round(im.height * shrink))))
    im.load()
    factor = max(im.size) // (2 * MAX_SIDE)
    if factor >= 2 and im.mode in ("L", "RGB", "RGBA", "LA", "I", "F", "CMYK"):
        im = im.reduce(factor)  # box-downscale right away: later steps copy a small image, not the full one
    rgb = to_rgb(im)
    rgb.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BICUBIC)
    if orientation in _UNDO_ORIENTATION:
        rgb = rgb.transpose(_UNDO_ORIENTATION[orientation])
    return rgb


def to_rgb(im: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, following the rules in the module docstring."""
    mode = im.mode
    if mode in _WIDE_GREY_MODES:
        return Image.fromarray(_scale_16bit(np.asarray(im))).convert("RGB")
    if mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float32))
        a = a * 255.0 if a.max(initial=0.0) <= 1.0 else a / 257.0
        return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if mode == "1":
        return im.convert("L").convert("RGB")
    if mode == "RGB":
        return im.copy()
    try:
        return im.convert("RGB")
    except ValueError:
        raise UserError(f"images in colour mode {mode} are not supported; save it as 8-bit RGB") from None


def _scale_16bit(a: np.ndarray) -> np.ndarray:
    """Integer grey of 16-bit range -> uint8 by /257 (65535 -> 255, 257 -> 1); values outside 0..65535 clip."""
    return np.clip((a.astype(np.float32) / 257.0) + 0.5, 0, 255).astype(np.uint8)


def _check_pixels(size: tuple[int, int], label: str) -> None:
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise UserError(f"{label} is {width}x{height} px, over the {MAX_IMAGE_PIXELS // 10**6} MP limit; "
                        f"upload a smaller image")
    if width == 0 or height == 0:
        raise UserError(f"{label} has no pixels ({width}x{height}); upload a {SUPPORTED} image")


def _looks_like_svg(data: bytes) -> bool:
    head = data[:2048].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith(b"<svg") or (head.startswith((b"<?xml", b"<!doctype")) and b"<svg" in head)


def read_query(value: Any) -> Image.Image | None:
    """A query as a handler gets it - a gr.Image FileData dict (gradio's preprocessing is off), a path, a PIL
    image, an array, or None - as an RGB PIL image (or None), through `load_image`."""
    if value is None:
        return None
    if isinstance(value, (Image.Image, np.ndarray)):
        return load_image(value)
    path = value.get("path") if isinstance(value, dict) else value
    if not path:
        return None
    name = value.get("orig_name") if isinstance(value, dict) else None
    return load_image(Path(path), name=name or Path(path).name)
