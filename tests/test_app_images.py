"""app.images: every upload becomes a bounded 8-bit RGB image, or one clear UserError."""

import io
import warnings

import numpy as np
import pytest
from PIL import Image, ImageOps

from app import images
from app.images import MAX_SIDE, harden_pil, image_from_array, load_image, to_rgb
from dinotwins.errors import UserError


def saved(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def pixel(im: Image.Image, xy=(0, 0)) -> tuple:
    assert im.mode == "RGB"
    return im.getpixel(xy)


def test_rgba_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    rgba.putpixel((1, 1), (255, 0, 0, 255))
    rgba.putpixel((2, 2), (0, 0, 0, 128))  # half-transparent black over white: mid grey
    out = load_image(saved(rgba, "PNG"))
    assert pixel(out) == (255, 255, 255)
    assert pixel(out, (1, 1)) == (255, 0, 0)
    assert all(abs(c - 127) <= 1 for c in pixel(out, (2, 2)))


def test_la_image_becomes_grey_on_white():
    la = Image.new("LA", (2, 2), (0, 0))
    la.putpixel((1, 0), (50, 255))
    out = load_image(saved(la, "PNG"))
    assert pixel(out) == (255, 255, 255) and pixel(out, (1, 0)) == (50, 50, 50)


def test_palette_with_a_transparent_index_is_composited_on_white():
    p = Image.new("P", (2, 1))
    p.putpalette([0, 0, 255] + [0, 255, 0] + [0] * 762)
    p.putpixel((1, 0), 1)
    out = load_image(saved(p, "PNG", transparency=0))
    assert pixel(out) == (255, 255, 255) and pixel(out, (1, 0)) == (0, 255, 0)


def test_palette_without_transparency_keeps_its_colours():
    p = Image.new("P", (1, 1))
    p.putpalette([10, 20, 30] + [0] * 765)
    assert pixel(load_image(saved(p, "PNG"))) == (10, 20, 30)


def test_cmyk_becomes_rgb():
    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))  # no cyan, full magenta and yellow: red
    assert pixel(load_image(saved(cmyk, "TIFF"))) == (255, 0, 0)


@pytest.mark.parametrize("value,expected", [(0, 0), (257, 1), (32896, 128), (65535, 255)])
def test_16bit_grey_is_scaled_by_1_over_257_not_clipped(value, expected):
    im = Image.fromarray(np.full((2, 2), value, np.uint16))
    assert im.mode == "I;16"
    assert pixel(load_image(saved(im, "PNG"))) == (expected,) * 3


def test_32bit_integer_grey_is_scaled_like_16bit():
    im = Image.fromarray(np.array([[0, 65535]], np.int32))
    assert im.mode == "I"
    out = to_rgb(im)
    assert pixel(out) == (0, 0, 0) and pixel(out, (1, 0)) == (255, 255, 255)


def test_1bit_image_becomes_black_and_white_rgb():
    bw = Image.new("1", (2, 1), 0)
    bw.putpixel((1, 0), 1)
    out = load_image(saved(bw, "PNG"))
    assert pixel(out) == (0, 0, 0) and pixel(out, (1, 0)) == (255, 255, 255)


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = saved(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    r, g, b = pixel(load_image(data))
    assert r > 200 and b < 50


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_imageops_exif_transpose(orientation):
    base = Image.fromarray(np.arange(6 * 4 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = saved(base, "PNG", exif=exif.tobytes())
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    out = load_image(data)
    assert out.size == expected.size
    assert np.array_equal(np.asarray(out), np.asarray(expected))


@pytest.mark.parametrize("data,needle", [
    (b"", "empty"),
    (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "SVG"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "SVG"),
    (b"just some text, not an image", "not an image"),
])
def test_unusable_files_raise_one_clear_user_error(data, needle):
    with pytest.raises(UserError, match=needle) as info:
        load_image(data, name="upload.bin")
    assert "\n" not in str(info.value)


def test_truncated_image_is_refused():
    data = saved(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)), "PNG")
    with pytest.raises(UserError, match="truncated or corrupted"):
        load_image(data[: len(data) // 2])


def test_decompression_bomb_is_refused_before_decoding():
    bomb = saved(Image.new("1", (8000, 8000)), "PNG")  # 64 MP in a few kB
    assert len(bomb) < 100_000
    with pytest.raises(UserError, match="over the 50 MP limit"):
        load_image(bomb)


def test_large_jpeg_is_decoded_at_reduced_scale_and_bounded(tmp_path, monkeypatch):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (4800, 3200), (0, 128, 255)).save(path, quality=70)
    decoded = []
    monkeypatch.setattr(images, "to_rgb", lambda im: decoded.append(im.size) or to_rgb(im))
    out = load_image(path)
    assert decoded == [(1200, 800)]  # JPEG draft mode decoded at 1/4 scale: never 15 MP in memory
    assert out.size == (MAX_SIDE, round(MAX_SIDE * 2 / 3))


def test_large_png_is_reduced_right_after_decoding(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (4800, 3200), (0, 128, 255)).save(path)
    decoded = []
    monkeypatch.setattr(images, "to_rgb", lambda im: decoded.append(im.size) or to_rgb(im))
    assert load_image(path).size == (MAX_SIDE, round(MAX_SIDE * 2 / 3))
    assert decoded == [(2400, 1600)]


def test_file_over_the_upload_limit_is_refused(tmp_path):
    path = tmp_path / "huge.png"
    with open(path, "wb") as f:
        f.truncate(images.MAX_FILE_BYTES + 1)
    with pytest.raises(UserError, match="MB"):
        load_image(path)


def test_harden_pil_lowers_the_limit_and_makes_the_bomb_warning_an_error(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    with warnings.catch_warnings():
        harden_pil()
        assert Image.MAX_IMAGE_PIXELS == images.MAX_IMAGE_PIXELS
        big = saved(Image.new("1", (7500, 7500)), "PNG")  # 56 MP: above the limit, below twice the limit
        with pytest.raises(Image.DecompressionBombWarning):
            Image.open(io.BytesIO(big))


@pytest.mark.parametrize("array,expected", [
    (np.full((2, 2), 65535, np.uint16), (255, 255, 255)),
    (np.full((2, 2, 3), 0.5, np.float32), (128, 128, 128)),
    (np.full((2, 2, 1), 7, np.uint8), (7, 7, 7)),
    (np.ones((2, 2), bool), (255, 255, 255)),
    (np.concatenate([np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2, 1), np.uint8)], axis=-1), (255, 255, 255)),
])
def test_arrays_of_any_common_layout_become_rgb(array, expected):
    assert pixel(load_image(array)) == expected


def test_bad_arrays_are_user_errors():
    with pytest.raises(UserError, match="shape"):
        image_from_array(np.zeros((2, 2, 5), np.uint8))
    with pytest.raises(UserError, match="dtype"):
        image_from_array(np.zeros((2, 2), np.complex64))
