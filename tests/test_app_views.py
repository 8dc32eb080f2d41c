"""The explorer's views beyond last-layer CLS attention, as plain functions: patch similarity, patch PCA,
attention of any block, rollout, and attention over training time. Smoke-trained models, a synthetic gallery."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.cache import ArtifactCache
from app.explorer import Explorer
from app.gallery import load_gallery
from app.models import ModelCache
from app.tabs import attention, patches, rollout, steps
from app.ui import build_app
from dinotwins.errors import UserError
from tests.conftest import smoke_config


@pytest.fixture(scope="module")
def explorer(smoke_runs, tmp_path_factory):
    entries = ModelCache().entries([smoke_runs[m] for m in ("dino", "barlow", "hybrid")])
    gallery, _ = load_gallery("synthetic:256", 32)
    return Explorer(entries, gallery, ArtifactCache(tmp_path_factory.mktemp("cache")), umap_points=64,
                    umap_epochs=20)


@pytest.fixture(scope="module")
def photo():
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8))


def test_the_clicked_patch_is_most_similar_to_itself_in_every_model(explorer, photo):
    for m in patches.similarity_maps(explorer, photo, x=0.9, y=0.1, scale=1.0):
        h, w = m["query"].shape
        assert m["patch"] == (0, w - 1)
        assert m["query"][m["patch"]] == pytest.approx(1.0, abs=1e-4) and m["query"].max() <= 1.0 + 1e-4
        assert m["neighbour"].shape == (h, w) and 0 <= m["neighbour_index"] < len(explorer.gallery)


def test_patch_similarity_of_a_gallery_query_leaves_the_query_out_of_its_neighbours(explorer):
    image = explorer.gallery.image(3)
    assert all(m["neighbour_index"] != 3 for m in patches.similarity_maps(explorer, image, 0.5, 0.5, 1.0, 3))


def test_patch_similarity_handler_gives_a_row_per_model_and_refuses_bad_points(explorer, photo):
    *rows, bar = patches.patch_similarity_handler(explorer, photo, 0.2, 0.7, 1.5)
    assert len(rows) == 3 and all(r.width == 4 * 128 for r in rows) and bar.mode == "RGB"
    with pytest.raises(UserError, match="fractions"):
        patches.patch_similarity_handler(explorer, photo, 1.5, 0.5)
    with pytest.raises(UserError, match="no image"):
        patches.patch_similarity_handler(explorer, None)


def test_patches_export_holds_both_views_and_the_numbers_behind_them(explorer, photo):
    png, numbers = patches.patches_export(explorer, photo, 0.9, 0.1, True, 1.0)
    values = json.loads(Path(numbers).read_text())
    assert [m["model"] for m in values["similarity"]] == [m["model"] for m in values["pca"]] == explorer.labels
    first = values["similarity"][0]
    assert np.asarray(first["query"])[tuple(first["patch"])] == pytest.approx(1.0, abs=1e-4)  # the patch itself
    rgb, foreground = np.asarray(values["pca"][0]["rgb"]), np.asarray(values["pca"][0]["foreground"])
    assert rgb.shape[:3] == foreground.shape and len(rgb) == 1 + patches.PCA_NEIGHBOURS
    assert (rgb[~foreground] == 0).all()
    assert Image.open(png).height >= 2 * len(explorer.labels) * 128  # a similarity and a PCA row per model
    with pytest.raises(UserError, match="fractions"):
        patches.patches_export(explorer, photo, -0.1, 0.5)


def test_pca_foreground_is_the_smaller_side_and_colours_are_in_range():
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(2, 4, 4, 8))
    tokens[:, :1] += 5.0  # one row of patches stands apart: the foreground
    rgb, foreground = patches.pca_rgb(tokens)
    assert rgb.shape == (2, 4, 4, 3) and 0 <= rgb.min() and rgb.max() <= 1
    assert foreground[:, 0].all() and not foreground[:, 1:].any()
    assert (rgb[~foreground] == 0).all()


def test_pca_components_are_the_svd_ones_up_to_sign():
    x = np.random.default_rng(1).normal(size=(300, 16)) * np.linspace(4, 1, 16)  # distinct variances
    ours = patches._components(x, 3)
    centred = x - x.mean(axis=0)
    reference = centred @ np.linalg.svd(centred, full_matrices=False)[2][:3].T
    np.testing.assert_allclose(np.abs(ours), np.abs(reference), atol=1e-8)
    assert patches._components(x[:2], 3).shape == (2, 3)  # fewer rows than components: padded


def test_patch_pca_handler_shows_the_query_and_its_neighbours_per_model(explorer, photo):
    rows = patches.patch_pca_handler(explorer, photo, True, 1.0)
    assert len(rows) == 3 and rows[0].width == 2 * (1 + patches.PCA_NEIGHBOURS) * 128
    assert patches.patch_pca_handler(explorer, photo, False)[0].width == 2 * 128


def test_attention_of_an_earlier_block_differs_from_the_last_and_a_bad_layer_is_refused(explorer, photo):
    first = attention.compute_maps(explorer.entries, photo, layer=1)
    last = attention.compute_maps(explorer.entries, photo, layer=attention.LAST_LAYER)
    beyond = attention.compute_maps(explorer.entries, photo, layer=99)
    assert not np.allclose(first[0].heads, last[0].heads)
    assert np.allclose(beyond[0].heads, last[0].heads)
    with pytest.raises(UserError, match="layer"):
        attention.attention_handler(explorer, photo, 0.6, 1.0, -2)


def test_a_larger_scale_gives_each_model_a_finer_grid(explorer, photo):
    coarse, fine = (attention.compute_maps(explorer.entries, photo, scale=s)[0] for s in (1.0, 2.0))
    assert fine.mean.shape == (2 * coarse.mean.shape[0], 2 * coarse.mean.shape[1])


def test_rollout_rows_share_one_scale_and_bad_options_are_refused(explorer, photo):
    *rows, bar = rollout.rollout_handler(explorer, photo, "max", 0.5, 1.0)
    assert len(rows) == 3 and rows[0].width == 3 * 128
    maps = rollout.rollout_maps(explorer.entries, photo, "mean", 0.0, 1.0)
    assert all(flow.mean() == pytest.approx(1.0) for _, _, flow in maps)  # "x uniform" units
    with pytest.raises(UserError, match="head_fusion"):
        rollout.rollout_handler(explorer, photo, "median")
    with pytest.raises(UserError, match="discard_ratio"):
        rollout.rollout_handler(explorer, photo, "mean", 1.0)


@pytest.fixture(scope="module")
def run_with_exports(tmp_path_factory):
    from dinotwins.training.trainer import train

    return train(smoke_config("dino", export_every=2), tmp_path_factory.mktemp("exports") / "dino", progress=False)


def test_attention_over_training_steps_through_the_saved_exports(run_with_exports, photo, tmp_path):
    entries = ModelCache().entries([run_with_exports])
    assert [s for s, _ in steps.saved_steps(entries[0])] == [2, 4]
    explorer = Explorer(entries, load_gallery("synthetic:256", 32)[0], ArtifactCache(tmp_path))
    row, strip, shown = steps.steps_handler(explorer, ModelCache(), photo, "dino", 1)
    assert "step 2" in shown and strip.width == 2 * 128
    assert "step 4" in steps.steps_handler(explorer, ModelCache(), photo, None, -1)[2]
    with pytest.raises(UserError, match="unknown model"):
        steps.steps_handler(explorer, ModelCache(), photo, "barlow", 1)


def test_over_training_export_holds_the_maps_at_every_saved_step(run_with_exports, photo, tmp_path):
    entries = ModelCache().entries([run_with_exports])
    explorer = Explorer(entries, load_gallery("synthetic:256", 32)[0], ArtifactCache(tmp_path))
    png, numbers = steps.steps_export(explorer, ModelCache(), photo, "dino", 1)
    values = json.loads(Path(numbers).read_text())
    assert values["shown_step"] == 2 and [s["step"] for s in values["steps"]] == [2, 4]
    assert np.allclose(np.mean(values["steps"][0]["heads"], axis=(-2, -1)), 1.0, atol=1e-3)  # "x uniform" units
    assert Image.open(png).width >= 2 * 128


def test_a_model_without_exports_is_a_clear_error(explorer, photo):
    with pytest.raises(UserError, match="export-every"):
        steps.steps_handler(explorer, ModelCache(), photo)
    with pytest.raises(UserError, match="export-every"):
        steps.steps_export(explorer, ModelCache(), photo)


def test_build_app_registers_every_view_as_an_endpoint(explorer, tmp_path):
    demo = build_app(explorer.entries, explorer.gallery, cache=ArtifactCache(tmp_path))
    names = {fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert {"attention", "retrieve", "projection", "patch_similarity", "patch_pca", "rollout",
            "attention_steps"} <= names
