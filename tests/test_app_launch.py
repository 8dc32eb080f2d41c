"""The app launched for real on 127.0.0.1 (in this process, a background server thread), driven through
gradio_client exactly as the README shows: /attention and /retrieve with just an image, /projection with none."""

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from app.cache import ArtifactCache
from app.gallery import load_gallery
from app.images import MAX_FILE_BYTES
from app.models import ModelCache
from app.ui import build_app
from tests.conftest import launched

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(smoke_runs, tmp_path_factory):
    entries = ModelCache().entries([smoke_runs[m] for m in ("dino", "barlow", "hybrid")])
    gallery, _ = load_gallery("synthetic:1024", 32)
    cache = ArtifactCache(tmp_path_factory.mktemp("app_cache"))
    demo = build_app(entries, gallery, cache=cache, umap_points=128, umap_epochs=20)
    with launched(demo) as (url, options):
        assert options["server_name"] == "127.0.0.1" and options["max_file_size"]
        yield demo, url, entries


@pytest.fixture(scope="module")
def client(server):
    return Client(server[1], verbose=False)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("upload") / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), np.uint8)).save(path)
    return path


def test_attention_endpoint_takes_just_an_image(client, server, photo):
    result = client.predict(handle_file(str(photo)), api_name="/attention")
    *rows, scale, entropy = result
    assert len(rows) == len(server[2])
    for row in rows:
        assert Image.open(row).size[1] > 100
    assert len(entropy["data"]) == len(server[2]) and entropy["headers"][1] == "mean map"


def test_retrieve_endpoint_takes_just_an_image(client, photo):
    summary, *galleries, overlap = client.predict(handle_file(str(photo)), api_name="/retrieve")
    assert "precision@8 n/a" in summary
    assert len(galleries) == 3 and all(len(g) == 8 for g in galleries)
    assert all("·" in item["caption"] for item in galleries[0])
    assert overlap["data"][0][1] == "1.00" and overlap["headers"] == ["model", "dino", "barlow", "hybrid"]


def test_retrieve_a_gallery_image_scores_precision_with_its_own_label(client, photo):
    summary, *_ = client.predict(handle_file(str(photo)), 5, 3, "unknown", api_name="/retrieve")
    assert "Query class" in summary and "n/a" not in summary.split("\n", 1)[1]


def test_projection_endpoint_takes_no_inputs(client):
    plot, table = client.predict(api_name="/projection")
    figure = json.loads(plot["plot"])
    assert len(figure["data"]) >= 3 and "20-NN" in json.dumps(figure["layout"])
    assert table.count("|") > 10


def test_a_bad_upload_is_one_clear_error_and_the_app_keeps_serving(client, tmp_path, photo):
    svg = tmp_path / "drawing.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>')
    with pytest.raises(AppError, match="SVG"):
        client.predict(handle_file(str(svg)), api_name="/attention")
    text = tmp_path / "notes.png"
    text.write_text("not really a png")
    with pytest.raises(AppError, match="not an image"):
        client.predict(handle_file(str(text)), api_name="/attention")
    assert len(client.predict(handle_file(str(photo)), api_name="/attention")) == 5


def test_files_outside_the_upload_folder_are_neither_read_nor_served(server, smoke_runs):
    url = server[1]
    weights = smoke_runs["dino"] / "model.safetensors"
    for path in (weights, "/etc/passwd"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{url}gradio_api/file={path}", timeout=10)
        assert info.value.code in (403, 404)
    body = json.dumps({"data": [{"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}, 0.6]}).encode()
    request = urllib.request.Request(f"{url}gradio_api/call/attention", data=body,
                                     headers={"Content-Type": "application/json"})
    event_id = json.load(urllib.request.urlopen(request, timeout=10))["event_id"]
    stream = urllib.request.urlopen(f"{url}gradio_api/call/attention/{event_id}", timeout=30).read().decode()
    assert "event: error" in stream and "root:" not in stream


def test_the_command_line_reports_a_missing_model_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "app", str(tmp_path / "missing")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: model") and len(result.stderr.strip().splitlines()) == 1


def test_uploads_over_the_size_limit_are_refused_by_the_server(server):
    boundary = "dinotwinsboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + b"\0" * (MAX_FILE_BYTES + 1024) + \
        f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{server[1]}gradio_api/upload", data=body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=30)
    assert info.value.code == 413
