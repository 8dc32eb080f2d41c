"""End to end in headless Chromium: upload an image, see an attention row for every model.

Uses Debian's /usr/bin/chromium through the playwright package (no `playwright install`); `make setup` installs
both. The screenshot lands in the test's tmp_path."""

from pathlib import Path

import pytest
import skimage.data
from PIL import Image

from app.cache import ArtifactCache
from app.gallery import load_gallery
from app.models import ModelCache
from app.ui import build_app
from tests.conftest import launched

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app_url(smoke_runs, tmp_path_factory):
    entries = ModelCache().entries([smoke_runs[m] for m in ("dino", "barlow", "hybrid")])
    gallery, _ = load_gallery("synthetic:1024", 32)
    demo = build_app(entries, gallery, cache=ArtifactCache(tmp_path_factory.mktemp("browser_cache")),
                     umap_points=128, umap_epochs=20)
    with launched(demo) as (url, _):
        yield url, [e.label for e in entries]


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM.exists(), "no /usr/bin/chromium: run `make setup` as root (apt-get install -y chromium)"
    import playwright.sync_api as sync_api
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_with_upload(browser, url: str, tmp_path, photo: str):
    """A new page of the app with scikit-image's `photo` uploaded as the query."""
    upload = tmp_path / f"{photo}.png"
    Image.fromarray(getattr(skimage.data, photo)()).save(upload)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url, wait_until="networkidle")
    page.locator("#query input[type=file]").set_input_files(str(upload))
    return page


def test_uploading_an_image_shows_an_attention_row_for_every_model(app_url, browser, tmp_path):
    url, labels = app_url
    page = open_with_upload(browser, url, tmp_path, "astronaut")
    for i in range(len(labels)):
        row = page.locator(f"#attention-row-{i} img")
        row.wait_for(state="visible", timeout=60_000)
        assert row.evaluate("img => img.naturalWidth") > 300
    for label in labels:
        assert page.get_by_text(label, exact=True).first.is_visible()
    page.screenshot(path=str(tmp_path / "attention.png"), full_page=True)
    assert (tmp_path / "attention.png").stat().st_size > 10_000
    page.close()


def test_clicking_a_gallery_example_fills_the_query_and_finds_neighbours(app_url, browser, tmp_path):
    url, labels = app_url
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url, wait_until="networkidle")
    page.locator("#examples button").last.click()
    page.get_by_role("tab", name="Retrieval").click()
    for i in range(len(labels)):
        page.locator(f"#neighbours-{i} img").first.wait_for(state="visible", timeout=60_000)
    assert "Query class" in page.locator("#retrieval-summary").inner_text()
    page.screenshot(path=str(tmp_path / "retrieval.png"), full_page=True)
    page.close()


def test_clicking_a_patch_of_the_query_shows_each_models_similarity_map(app_url, browser, tmp_path):
    url, labels = app_url
    page = open_with_upload(browser, url, tmp_path, "coffee")
    page.get_by_role("tab", name="Patches").click()
    target = page.locator("#patch-click img")
    target.wait_for(state="visible", timeout=60_000)
    box = target.bounding_box()
    target.click(position={"x": box["width"] * 0.3, "y": box["height"] * 0.6})
    for i in range(len(labels)):
        row = page.locator(f"#similarity-row-{i} img")
        row.wait_for(state="visible", timeout=60_000)
        assert row.evaluate("img => img.naturalWidth") == 4 * 128
    page.get_by_role("button", name="Patch PCA as RGB").click()
    page.locator("#pca-row-0 img").wait_for(state="visible", timeout=60_000)
    page.screenshot(path=str(tmp_path / "patches.png"), full_page=True)
    page.close()
