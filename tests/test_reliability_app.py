"""Reliability of the app under hostile files and load: decoding edge cases (200-MP and 10000x10000 PNGs in
bounded memory, truncated JPEG, CMYK JPEG, 16-bit RGB, APNG), every kind of bad file through the launched
server, EXIF-rotated retrieval, rebuilt caches, pickle-payload models, 20 concurrent requests, and requests
for files outside the app's own assets. The images tests in test_app_images.py cover the rest in-process."""

from __future__ import annotations

import functools
import http.client
import io
import json
import os
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from app.__main__ import main as app_main
from app.cache import ArtifactCache
from app.explorer import Explorer
from app.gallery import load_gallery
from app.images import MAX_SIDE, load_image
from app.models import ModelCache
from app.ui import build_app
from dinotwins.errors import UserError
from dinotwins.evaluation import features
from dinotwins.files import read_verified, write_with_checksum
from tests.conftest import launched

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------- files
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, row: bytes) -> bytes:
    """A valid PNG written row by row (so a 200-MP image costs a few kB and no pixel buffer here)."""
    compressor = zlib.compressobj(6)
    line = b"\0" + row  # filter type 0
    idat = b"".join(compressor.compress(line) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def saved(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def noise(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), np.uint8))


@functools.cache
def png_200mp() -> bytes:
    return png_bytes(20_000, 10_000, 1, 0, b"\0" * 2_500)  # 1-bit grey: 25 MB of rows, ~25 kB on disk


@functools.cache
def png_10k() -> bytes:
    return png_bytes(10_000, 10_000, 8, 2, b"\x80" * 30_000)  # 8-bit RGB, 100 MP, ~300 kB on disk


def hostile_files() -> dict[str, tuple[bytes, str | None]]:
    """{file name: (bytes, None if it must render, else the error text it must give)}."""
    jpeg = saved(noise(64, 64), "JPEG")
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    palette = Image.new("P", (16, 16))
    palette.putpalette([0, 0, 255] * 256)
    gif = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated or corrupted"),
        "empty.png": (b"", "empty file"),
        "notes.png": (b"this is text renamed to .png\n" * 10, "not an image"),
        "drawing.svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"><rect/></svg>', "SVG"),
        "10000x10000.png": (png_10k(), "50 MP limit"),
        "200mp.png": (png_200mp(), "50 MP limit"),
        "cmyk.jpg": (saved(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"), None),
        "rgba.png": (saved(rgba, "PNG"), None),
        "la.png": (saved(Image.new("LA", (16, 16), (40, 128)), "PNG"), None),
        "palette.png": (saved(palette, "PNG"), None),
        "16bit.png": (saved(Image.fromarray(np.full((16, 16), 40000, np.uint16)), "PNG"), None),
        "1bit.png": (saved(Image.new("1", (16, 16), 1), "PNG"), None),
        "animated.gif": (saved(gif[0], "GIF", save_all=True, append_images=gif[1:], duration=50), None),
        "rotated.jpg": (saved(noise(24, 40), "JPEG", exif=exif.tobytes()), None),
    }


# ------------------------------------------------------------------------------------------------- decoding
def test_huge_pngs_are_refused_before_decoding_in_bounded_memory(tmp_path):
    for name, data in (("200mp.png", png_200mp()), ("10000x10000.png", png_10k())):
        (tmp_path / name).write_bytes(data)
    data = png_200mp()
    assert struct.unpack(">II", data[16:24]) == (20_000, 10_000)  # a real 200-MP image: its rows all decompress
    (idat_length,) = struct.unpack(">I", data[33:37])
    assert len(zlib.decompress(data[41:41 + idat_length])) == 10_000 * (1 + 2_500)
    # A fresh process, so its peak memory says what loading these files costs: decoding either would take
    # 200-400 MB (Pillow keeps 1-bit as a byte per pixel, RGB as 4).
    code = ("import resource, sys\n"
            "from app.images import load_image\n"
            "from dinotwins.errors import UserError\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "for path in sys.argv[1:]:\n"
            "    try:\n"
            "        load_image(path)\n"
            "        print('decoded', path)\n"
            "    except UserError as exc:\n"
            "        print('refused', exc)\n"
            "print('grew_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n")
    files = [str(tmp_path / "200mp.png"), str(tmp_path / "10000x10000.png")]
    r = subprocess.run([sys.executable, "-c", code, *files], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("refused ") and "50 MP limit" in line for line in lines[:2]), lines
    assert "200mp.png" in lines[0] and "10000x10000.png" in lines[1]
    assert int(lines[2].split()[1]) < 64 * 1024, lines[2]  # well under one decoded copy


def test_truncated_jpeg_at_any_length_is_one_clear_error():
    data = saved(noise(64, 64), "JPEG")
    for cut in (10, 100, len(data) // 2, len(data) - 2):
        with pytest.raises(UserError, match="photo.jpg is truncated or corrupted") as info:
            load_image(data[:cut], name="photo.jpg")
        assert "\n" not in str(info.value)


def test_cmyk_jpeg_and_16bit_rgb_and_16bit_grey_alpha_render_in_rgb():
    cmyk = load_image(saved(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG", quality=100))
    assert cmyk.mode == "RGB" and cmyk.getpixel((0, 0)) == (255, 0, 0)
    rgb16 = png_bytes(2, 2, 16, 2, struct.pack(">HHH", 65535, 32896, 0) * 2)
    assert load_image(rgb16).getpixel((1, 1)) == (255, 128, 0)
    la16 = png_bytes(2, 2, 16, 4, struct.pack(">HH", 0, 65535) * 2)  # opaque black, 16-bit grey + alpha
    assert load_image(la16).getpixel((0, 0)) == (0, 0, 0)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_animated_png_and_webp_give_their_first_frame(fmt):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    out = load_image(saved(frames[0], fmt, save_all=True, append_images=frames[1:], lossless=True))
    r, g, b = out.getpixel((4, 4))
    assert out.mode == "RGB" and r > 200 and b < 50


def test_a_big_exif_rotated_jpeg_is_bounded_and_upright(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: 3000 wide x 2000 high, shown 2000 wide x 3000 high
    path = tmp_path / "phone.jpg"
    Image.new("RGB", (3000, 2000), (10, 200, 30)).save(path, quality=80, exif=exif.tobytes())
    out = load_image(path)
    assert out.size == (round(MAX_SIDE * 2 / 3), MAX_SIDE) and out.mode == "RGB"


# ------------------------------------------------------------------------------------------------- app fixtures
@pytest.fixture(scope="module")
def entries(smoke_runs):
    return ModelCache().entries([smoke_runs[m] for m in ("dino", "barlow", "hybrid")])


@pytest.fixture(scope="module")
def gallery():
    return load_gallery("synthetic:1024", 32)[0]


@pytest.fixture(scope="module")
def server(entries, gallery, tmp_path_factory):
    demo = build_app(entries, gallery, cache=ArtifactCache(tmp_path_factory.mktemp("app_cache")), umap_points=64,
                     umap_epochs=20)
    with launched(demo) as (url, options):
        yield url, options["server_port"]


@pytest.fixture(scope="module")
def client(server):
    return Client(server[0], verbose=False)


def write_gallery_image(gallery, index: int, folder: Path) -> Path:
    path = folder / f"gallery-{index}.png"
    gallery.image(index).save(path)
    return path


def top1(galleries: list) -> list[tuple[int, float]]:
    """(index, cosine) of each model's first neighbour, read from the captions 'label · cosine · #index'."""
    out = []
    for items in galleries:
        _, cosine, index = items[0]["caption"].split(" · ")
        out.append((int(index.lstrip("#")), float(cosine)))
    return out


# ------------------------------------------------------------------------------------------------- the server
@pytest.mark.slow
def test_every_hostile_file_gets_a_rendering_or_a_clear_error_and_the_app_keeps_serving(client, tmp_path):
    photo = tmp_path / "photo.png"
    noise(40, 48, seed=1).save(photo)
    for name, (data, error) in hostile_files().items():
        path = tmp_path / name
        path.write_bytes(data)
        if error is None:
            *rows, scale, entropy = client.predict(handle_file(str(path)), api_name="/attention")
            assert len(rows) == 3 and all(Image.open(row).mode == "RGB" for row in rows), name
        else:
            with pytest.raises(AppError) as info:
                client.predict(handle_file(str(path)), api_name="/attention")
            message = str(info.value)
            assert error in message and name in message and "Traceback" not in message, (name, message)
        # Still serving after each one.
        summary, *_ = client.predict(handle_file(str(photo)), api_name="/retrieve")
        assert "precision@8" in summary, name


def test_an_exif_rotated_copy_of_a_gallery_image_retrieves_the_original_first(client, gallery, tmp_path):
    # How a camera stores an upright scene for each orientation tag (the inverse of what a viewer applies).
    stored_as = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}
    for index, orientation in ((3, 6), (77, 8), (150, 3)):
        original = gallery.image(index)
        stored = original.transpose(stored_as[orientation])
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"rotated-{index}.jpg"
        stored.save(path, quality=100, subsampling=0, exif=exif.tobytes())
        assert not np.array_equal(np.asarray(stored), np.asarray(original))  # the pixels really are turned
        summary, *galleries, overlap = client.predict(handle_file(str(path)), api_name="/retrieve")
        for found, cosine in top1(galleries):
            assert found == index and cosine >= 0.999, (index, orientation, found, cosine)


@pytest.mark.slow
def test_20_concurrent_requests_are_queued_and_each_gets_its_own_answer(client, gallery, tmp_path):
    client.predict(handle_file(str(write_gallery_image(gallery, 0, tmp_path))), api_name="/retrieve")  # warm-up
    svg = tmp_path / "bad.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    indices = [int(i) for i in np.linspace(1, len(gallery) - 1, 20)]
    jobs = []
    for n, index in enumerate(indices):
        if n % 5 == 4:  # a bad upload among them must not disturb the others
            jobs.append((None, client.submit(handle_file(str(svg)), api_name="/retrieve")))
        else:
            path = write_gallery_image(gallery, index, tmp_path)
            jobs.append((index, client.submit(handle_file(str(path)), api_name="/retrieve")))
    start = time.monotonic()
    for index, job in jobs:
        if index is None:
            with pytest.raises(AppError, match="SVG"):
                job.result(timeout=240)
            continue
        summary, *galleries, overlap = job.result(timeout=240)
        assert [found for found, _ in top1(galleries)] == [index] * 3  # its own image, not a neighbour's
        assert all(cosine > 0.9999 for _, cosine in top1(galleries))
    assert time.monotonic() - start < 240


def raw_get(port: int, path: str) -> tuple[int, bytes]:
    """GET exactly `path` (no client-side normalization of `..` or escapes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def upload(url: str, name: str, data: bytes) -> str:
    boundary = "reliabilityboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{url}gradio_api/upload", data=body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    return json.load(urllib.request.urlopen(request, timeout=30))[0]


def test_requests_for_files_outside_the_apps_own_files_are_refused(server, smoke_runs):
    url, port = server
    secret = smoke_runs["dino"] / "checkpoints" / "step_00000002.pt"
    secret_head = secret.read_bytes()[:64]
    uploaded = upload(url, "mine.png", b"my own upload")
    # Control: the route serves what was uploaded to this app, so the refusals below are refusals.
    assert raw_get(port, f"/gradio_api/file={uploaded}") == (200, b"my own upload")
    upload_dir = uploaded.rsplit("/", 1)[0]
    up = "../" * 12
    variants = [
        f"/gradio_api/file={secret}", f"/gradio_api/file={secret.parent}", f"/gradio_api/file={str(secret).upper()}",
        f"/gradio_api/file={str(secret).replace('/', '%2F')}", f"/gradio_api/file={smoke_runs['dino'] / 'config.yaml'}",
        f"/gradio_api/file={ROOT / 'app' / 'ui.py'}", f"/gradio_api/file={upload_dir}/{up}{str(secret).lstrip('/')}",
        f"/gradio_api/file={upload_dir}/{up}etc/passwd", f"/gradio_api/file={uploaded}/../../../../../etc/passwd",
        f"/gradio_api/file={upload_dir.upper()}/{uploaded.rsplit('/', 1)[1]}",
        "/gradio_api/file=/etc/passwd", "/gradio_api/file=/ETC/PASSWD", "/gradio_api/file=/etc/Passwd",
        "/gradio_api/file=//etc/passwd", "/gradio_api/file=file:///etc/passwd", "/gradio_api/file=%2Fetc%2Fpasswd",
        f"/gradio_api/file={up}etc/passwd", "/gradio_api/file=" + "%2e%2e%2f" * 12 + "etc%2fpasswd",
        "/gradio_api/file=" + "%2E%2E/" * 12 + "etc/passwd",
        "/gradio_api/file=" + "%252e%252e%252f" * 12 + "etc/passwd",
        "/gradio_api/file=" + "..%5c" * 12 + "etc%5cpasswd", "/gradio_api/file=/proc/self/environ",
        f"/gradio_api/file=/tmp/../{up}etc/passwd", "/file=/etc/passwd", "/static/" + up + "etc/passwd",
        "/assets/" + up + "etc/passwd", "/gradio_api/" + up + "etc/passwd",
    ]
    for path in variants:
        status, body = raw_get(port, path)
        assert status in (400, 403, 404), (path, status, body[:200])
        assert b"root:" not in body and secret_head not in body, path
    # The same files named as an input to the API: an error event, their contents never read or echoed.
    for name in (str(secret), f"{upload_dir}/{up}etc/passwd", "/ETC/passwd", str(secret).upper()):
        body = json.dumps({"data": [{"path": name, "meta": {"_type": "gradio.FileData"}}, 0.6]}).encode()
        request = urllib.request.Request(f"{url}gradio_api/call/attention", data=body,
                                         headers={"Content-Type": "application/json"})
        event_id = json.load(urllib.request.urlopen(request, timeout=30))["event_id"]
        stream = urllib.request.urlopen(f"{url}gradio_api/call/attention/{event_id}", timeout=60).read()
        assert b"event: error" in stream and b"root:" not in stream and secret_head not in stream, name


# ------------------------------------------------------------------------------------------------- caches
def test_corrupted_and_stale_cached_embeddings_and_indexes_are_rebuilt_never_served(entries, gallery, tmp_path,
                                                                                     monkeypatch):
    cache = ArtifactCache(tmp_path)
    first = Explorer(entries, gallery, cache)
    want = first.embeddings(0).copy()
    _, want_ids = first.index(0).search(want[:5], 4)
    key = first.key(0)
    (embeddings,) = (tmp_path / "features").glob("*.npy")  # the evaluation's feature cache, under the app's
    index = cache.path(key, "index.faiss")

    computed = []
    real = features.compute_features
    monkeypatch.setattr(features, "compute_features", lambda *a, **k: computed.append(1) or real(*a, **k))

    def fresh():
        return Explorer(entries, gallery, cache)

    # A valid cache is served as is.
    assert np.array_equal(fresh().embeddings(0), want) and computed == []
    # A flipped byte in the embeddings and garbage in the index: both rebuilt, identical to the originals.
    data = bytearray(embeddings.read_bytes())
    data[-3] ^= 0x40
    embeddings.write_bytes(bytes(data))
    index.write_bytes(b"\0" * 100)
    again = fresh()
    assert np.array_equal(again.embeddings(0), want) and computed == [1]
    _, ids = again.index(0).search(want[:5], 4)
    assert np.array_equal(ids, want_ids)
    assert read_verified(embeddings) is not None and read_verified(index) is not None  # rewritten whole
    # Truncated (a crash mid-write by an older version) and stale (another gallery's shape under this name).
    embeddings.write_bytes(embeddings.read_bytes()[:200])
    assert np.array_equal(fresh().embeddings(0), want) and computed == [1, 1]
    buffer = io.BytesIO()
    np.save(buffer, want[:10])
    write_with_checksum(embeddings, buffer.getvalue())
    assert np.array_equal(fresh().embeddings(0), want) and computed == [1, 1, 1]
    # Another model's weights never share an entry.
    assert Explorer(entries, gallery, cache).key(1) != key


# ------------------------------------------------------------------------------------------------- models
class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_the_app_refuses_a_pickle_payload_model_and_never_runs_it(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "official.pth"
    torch.save({"teacher": Payload(marker)}, evil)
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"pos_embed": Payload(marker)}, run / "model.safetensors")  # a zip pickle under the export's name
    for spec in (evil, run):
        with pytest.raises(UserError, match="refusing to load"):
            ModelCache().get(spec)
        assert app_main([str(spec), "--cache-dir", str(tmp_path / "cache"), "--gallery", "synthetic:64"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: refusing to load") and len(err.strip().splitlines()) == 1, err
    assert not marker.exists()


def test_the_demo_flag_reaches_the_model_choice_and_a_bad_one_is_one_line(tmp_path, capsys, monkeypatch):
    import app.models

    chosen = []

    def record(specs, gallery, **kw):
        chosen.append(kw["demo"])
        raise UserError("stop here")

    from app.__main__ import build_parser

    demo_flag = next(a for a in build_parser()._actions if a.dest == "demo")
    assert tuple(demo_flag.choices) == app.models.DEMO_SETS  # the cheap parser and the model choice agree
    monkeypatch.setattr(app.models, "open_models_and_gallery", record)
    for argv, demo in (([], "scenes"), (["--demo", "fashion-mnist"], "fashion-mnist")):
        assert app_main(argv + ["--cache-dir", str(tmp_path / "cache")]) == 2
        assert chosen[-1] == demo
    capsys.readouterr()
    assert app_main(["--demo", "imagenet"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'imagenet'" in err and len(err.strip().splitlines()) == 1, err
