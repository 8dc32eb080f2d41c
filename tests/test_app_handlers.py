"""The app's handlers as plain functions: attention, retrieval, projection, runs, the on-disk cache, the model
cache. Tiny smoke-trained models (`smoke_runs`) and a 256-image synthetic gallery; no server, no browser."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
from PIL import Image

from app import projection, render, scores
from app.cache import ArtifactCache, cache_key
from app.explorer import Explorer, Neighbours
from dinotwins.evaluation.knn import exact_index, search
from app.gallery import Gallery, load_gallery
from app.images import read_query
from app.models import ModelCache
from app.tabs import attention, embeddings, retrieval, runs
from app.tabs.attention import attention_handler
from app.tabs.embeddings import projection_handler
from app.tabs.retrieval import retrieve_handler
from app.ui import build_app
from dinotwins.evaluation import features
from dinotwins.errors import UserError
from dinotwins.models.backbone import create_backbone
from dinotwins.models.load import LoadedModel

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def restore_pil_limit():
    """build_app lowers Pillow's process-wide pixel limit; give other test modules the default back."""
    limit = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = limit


@pytest.fixture(scope="module")
def entries(smoke_runs):
    return ModelCache().entries([smoke_runs[m] for m in ("dino", "barlow", "hybrid")])


@pytest.fixture(scope="module")
def gallery():
    gallery, notice = load_gallery("synthetic:1024", 32)
    assert notice == ""
    return gallery


@pytest.fixture
def explorer(entries, gallery, tmp_path):
    return Explorer(entries, gallery, ArtifactCache(tmp_path / "cache"), umap_points=64, umap_epochs=20)


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8))


# ------------------------------------------------------------------------------------------------- attention
def test_attention_view_has_one_row_per_model_with_heads_mean_and_mask(entries, photo):
    rows, bar, table = attention.attention_view(entries, photo, 0.6)
    assert len(rows) == len(entries) == len(table)
    for row, entry in zip(rows, entries):
        tiles = 1 + entry.model.num_heads + 2  # input, heads, mean, mask
        assert row.size == (render.TILE * tiles, render.TILE + render.CAPTION)
    headers = attention.entropy_headers(attention.most_heads(entries))
    assert headers == ["model", "mean map", "head 1", "head 2", "head 3", "uniform (max)"]
    assert [r[0] for r in table] == [e.label for e in entries] and all(len(r) == len(headers) for r in table)
    assert bar.mode == "RGB"


def test_every_model_is_drawn_on_one_shared_colour_scale(entries, photo):
    maps = attention.compute_maps(entries, photo, 0.6)
    vmin, vmax = attention.shared_scale(maps)
    values = np.concatenate([a.ravel() for m in maps for a in (m.heads, m.mean)])
    assert vmin == 0.0 and vmax == pytest.approx(np.percentile(values, 99))  # one top for every map of every model
    for m in maps:  # "x uniform" units: each head's map averages to exactly 1
        assert np.allclose(m.heads.mean(axis=(-2, -1)), 1.0, atol=1e-4)
        model = entries[0].model
        grid = model.input_size(attention.DEFAULT_SCALE) // model.patch_size  # the tab's default input size
        assert m.heads.shape == (model.num_heads, grid, grid) and m.mask.dtype == bool


def test_one_hot_patch_saturates_instead_of_darkening_every_other_map():
    flat = np.ones((2, 8, 8))
    spiky = flat.copy()
    spiky[0, 3, 3] = 60.0  # one outlier token, as some models show on photos
    top = render.scale_top([flat, spiky])
    assert top < 2.0  # the scale follows the 99 % of values, not the one outlier
    assert (render.colorize(spiky[0], 0.0, top)[3, 3] == render.COLORMAP[-1]).all()  # drawn in the top colour
    assert render.scale_top([]) == 1.0


def test_entropy_is_log2_patches_for_uniform_attention_and_zero_for_one_patch():
    uniform = np.full((4, 4), 1 / 16)
    one_hot = np.zeros((4, 4))
    one_hot[1, 2] = 1.0
    assert attention.entropy_bits(uniform) == pytest.approx(4.0)
    assert attention.entropy_bits(one_hot) == pytest.approx(0.0)
    assert attention.entropy_bits(np.stack([uniform * 3, one_hot])) == pytest.approx([4.0, 0.0])


@pytest.mark.parametrize("keep_mass,kept", [(0.45, 1), (0.6, 2), (0.75, 2), (0.85, 3), (1.0, 4)])
def test_mass_mask_keeps_the_smallest_set_of_patches_holding_the_mass(keep_mass, kept):
    weights = np.array([[0.1, 0.5], [0.3, 0.1]])
    mask = attention.mass_mask(weights, keep_mass)
    assert mask.sum() == kept and mask[0, 1]
    assert weights[mask].sum() >= keep_mass - 1e-9


# ------------------------------------------------------------------------------------------------- retrieval
def test_flat_ip_index_on_normalized_embeddings_ranks_by_cosine():
    rng = np.random.default_rng(0)
    gallery, query = rng.normal(size=(50, 8)), rng.normal(size=(1, 8))
    sims, ids = search(exact_index(gallery), query, k=5)
    cosine = (gallery @ query[0]) / (np.linalg.norm(gallery, axis=1) * np.linalg.norm(query))
    assert ids[0].tolist() == np.argsort(-cosine)[:5].tolist()
    assert np.allclose(sims[0], np.sort(cosine)[::-1][:5], atol=1e-5)


def test_search_leaves_out_the_excluded_index_and_still_returns_k():
    points = np.eye(4, dtype=np.float32) + 0.01
    sims, ids = search(exact_index(points), points[2:3], k=3, exclude=2)
    assert 2 not in ids[0] and len(ids[0]) == 3


def test_jaccard_on_hand_checked_lists():
    assert retrieval.jaccard(np.array([1, 2, 3]), np.array([2, 3, 4])) == pytest.approx(2 / 4)
    assert retrieval.jaccard(np.array([], int), np.array([], int)) == 1.0


def test_gallery_query_excludes_itself_and_is_scored_with_its_own_label(explorer, gallery):
    results = explorer.neighbours(None, 5, query_index=7)
    assert len(results) == 3
    for r in results:
        assert 7 not in r.indices and len(r.indices) == 5
        assert r.precision == pytest.approx(np.mean(gallery.labels[r.indices] == gallery.labels[7]))
        assert np.all(np.diff(r.similarities) <= 1e-6)


def test_uploaded_query_gets_precision_only_when_its_class_is_given(explorer, photo):
    assert all(r.precision is None for r in explorer.neighbours(photo, 4))
    assert all(r.precision is not None for r in explorer.neighbours(photo, 4, query_label=1))
    assert "n/a" in retrieval.summary(explorer.neighbours(photo, 4), 4, None)


def test_overlap_matrix_is_symmetric_with_ones_on_the_diagonal():
    a = Neighbours("a", np.array([1, 2]), np.ones(2), None)
    b = Neighbours("b", np.array([2, 3]), np.ones(2), None)
    assert retrieval.overlap_matrix([a, b]) == [["a", "1.00", "0.33"], ["b", "0.33", "1.00"]]


# ------------------------------------------------------------------------------------------------- projection
def test_procrustes_alignment_undoes_rotation_reflection_scale_and_shift():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(40, 2))
    angle = 1.1
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = 3.0 * (reference @ rotation) * np.array([1, -1]) + 5.0
    aligned = projection.align_layouts([reference, moved])
    assert np.allclose(aligned[0], aligned[1], atol=1e-5)
    assert np.allclose(aligned[0].mean(axis=0), 0, atol=1e-6)


def test_umap_leaves_the_thread_count_from_omp_num_threads_in_place():
    # A fresh process, as a user starts the app: numba alone raises torch's 1 thread to every core.
    code = ("import numpy as np, torch; from app.projection import umap_2d; "
            "umap_2d(np.random.default_rng(0).random((80, 8), dtype=np.float32), n_epochs=5); "
            "print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "1"


def test_subsample_is_seeded_sorted_and_capped():
    a = projection.subsample(1000, 100, seed=3)
    assert np.array_equal(a, projection.subsample(1000, 100, seed=3)) and np.all(np.diff(a) > 0)
    assert np.array_equal(projection.subsample(10, 100), np.arange(10))


def test_knn_leave_one_out_and_silhouette_on_separated_clusters():
    rng = np.random.default_rng(0)
    centres = np.eye(3, 16) * 10
    labels = np.repeat(np.arange(3), 30)
    points = centres[labels] + rng.normal(scale=0.1, size=(90, 16))
    index = exact_index(points)
    assert scores.knn_accuracy_leave_one_out(index, points, labels, k=5) == 1.0
    assert scores.silhouette(points, labels) > 0.9
    assert np.isnan(scores.silhouette(points, np.zeros(90, int)))


def test_projection_is_computed_once_then_served_from_disk(explorer, entries, gallery, monkeypatch):
    first = explorer.projection()
    assert first.indices.shape == (64,) and len(first.layouts) == 3
    assert all(layout.shape == (64, 2) and np.isfinite(layout).all() for layout in first.layouts)
    assert all(0.0 <= k <= 1.0 for k in first.knn) and all(-1.0 <= s <= 1.0 for s in first.silhouette)

    def must_not_run(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(projection, "umap_2d", must_not_run)
    monkeypatch.setattr(features, "compute_features", must_not_run)
    monkeypatch.setattr(scores, "knn_accuracy_leave_one_out", must_not_run)
    again = Explorer(entries, gallery, explorer.cache, umap_points=64, umap_epochs=20).projection()
    assert all(np.allclose(a, b) for a, b in zip(first.layouts, again.layouts))
    assert again.knn == first.knn
    fig = embeddings.projection_figure(explorer.labels, again.layouts, again.indices,
                                       gallery.labels[again.indices], gallery.classes, ["a", "b", "c"])
    assert {t.legendgroup for t in fig.data} == set(gallery.classes[c] for c in np.unique(gallery.labels))
    assert len(fig.data) == 3 * len(np.unique(gallery.labels[again.indices]))


def test_an_unlabelled_gallery_gives_na_scores_one_colour_and_no_precision(entries, gallery, photo, tmp_path):
    unlabelled = Gallery("folder:x", gallery.images[:40], None, None)
    explorer = Explorer(entries, unlabelled, ArtifactCache(tmp_path), umap_points=40, umap_epochs=10)
    assert all(r.precision is None for r in explorer.neighbours(None, 3, query_index=0))
    figure, table = projection_handler(explorer)
    assert {t.name for t in figure.data} == {"gallery"} and "n/a" in figure.layout.annotations[0].text
    assert retrieve_handler(explorer, photo, 3, -1, "unknown")[0].startswith("Query class unknown")


# ------------------------------------------------------------------------------------------------- cache
def test_cache_round_trips_arrays_indexes_and_json(tmp_path):
    cache = ArtifactCache(tmp_path)
    key = cache_key(weights="abc", gallery="g")
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    cache.save_array(key, "emb.npy", array)
    assert np.array_equal(cache.load_array(key, "emb.npy", shape=(3, 4), dtype=np.float32), array)
    index = exact_index(array + 1)
    cache.save_index(key, "index.faiss", index)
    assert cache.load_index(key, "index.faiss", ntotal=3, dim=4).ntotal == 3
    cache.save_json(key, "s.json", {"knn": 0.5})
    assert cache.load_json(key, "s.json") == {"knn": 0.5}


def test_corrupted_or_stale_cache_entries_are_dropped_never_served(tmp_path):
    cache = ArtifactCache(tmp_path)
    cache.save_array("k", "emb.npy", np.ones((3, 4), np.float32))
    path = cache.path("k", "emb.npy")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))  # flipped bit: checksum mismatch
    assert cache.load_array("k", "emb.npy") is None and not path.exists()

    cache.save_array("k", "emb.npy", np.ones((3, 4), np.float32))
    assert cache.load_array("k", "emb.npy", shape=(5, 4)) is None  # stale shape
    cache.save_array("k", "emb.npy", np.full((3, 4), np.nan, np.float32))
    assert cache.load_array("k", "emb.npy") is None  # non-finite values

    cache.save_index("k", "index.faiss", faiss.IndexFlatIP(4))
    cache.path("k", "index.faiss").write_bytes(b"garbage")
    assert cache.load_index("k", "index.faiss", ntotal=0, dim=4) is None
    cache.save_json("k", "s.json", {"a": 1})
    cache.path("k", "s.json.sha256").unlink()  # half-written entry
    assert cache.load_json("k", "s.json") is None


def test_a_pickle_in_the_cache_is_never_loaded(tmp_path):
    cache = ArtifactCache(tmp_path)
    path = cache.path("k", "emb.npy")
    path.parent.mkdir(parents=True)
    np.save(path, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    import hashlib

    path.with_name("emb.npy.sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest())
    assert cache.load_array("k", "emb.npy") is None


def test_cache_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DINOTWINS_CACHE", str(tmp_path / "elsewhere"))
    assert ArtifactCache().root == tmp_path / "elsewhere"


def test_cache_key_changes_with_weights_gallery_and_preprocessing(explorer, entries, gallery):
    keys = {explorer.key(i) for i in range(3)}
    assert len(keys) == 3  # three different weights
    other = Gallery("x", gallery.images[:-1], gallery.labels[:-1], gallery.classes)
    assert Explorer(entries, other, explorer.cache).key(0) != explorer.key(0)


# ------------------------------------------------------------------------------------------------- runs
def test_run_card_shows_provenance_and_the_table_the_eval_figures(entries):
    entry = entries[0]
    card = runs.run_card(entry)
    assert "**method**: dino" in card and "**steps**: 4" in card and entry.model.weights_hash[:12] in card
    assert runs.comparison_rows([entry])[0][6:] == ["-"] * 6  # no eval.json yet
    report = {"train_seconds": 7200, "device": "2-core CPU; resumed once",
              "full": {"knn_top1": 0.712, "linear_top1": 0.8, "attn_jaccard_mean_heads": 0.31,
                       "attn_jaccard_best_head": 0.4, "attn_on_object": 0.3, "object_area": 0.25,
                       "attn_follows_object": 0.3081, "effective_rank": 12.34}}
    (entry.folder / "eval.json").write_text(json.dumps(report))
    try:
        row = runs.comparison_rows([entry])[0]
        assert dict(zip(runs.TABLE_HEADERS, row)) == {
            "model": "dino", "method": "dino", "data": "synthetic:64", "architecture": runs.architecture(entry),
            "steps": "4", "training": "2.0 h on 2-core CPU", "k-NN top-1": "71.2 %", "linear top-1": "80.0 %",
            "attn J mean / best head": "0.310 / 0.400", "attn on object / object area": "0.300 / 0.250",
            "map follows object": "0.31", "eff. rank": "12.3"}
    finally:
        (entry.folder / "eval.json").unlink()


def test_run_card_architecture_names_registers_and_a_missing_position_embedding(entries):
    entry = entries[0]
    assert runs.architecture(entry).startswith(f"{len(entry.model.backbone.blocks)} blocks · ")
    assert "registers" not in runs.architecture(entry) and "position" not in runs.architecture(entry)
    config = dataclasses.replace(entry.model.config, reg_tokens=2, pos_embed="none")
    other = dataclasses.replace(entry, model=LoadedModel(create_backbone(config), config, name="other", metadata={},
                                                         weights_hash="other"))
    assert runs.architecture(other).endswith(" px · 2 registers · no position embedding")


def test_training_curves_have_a_panel_per_quantity_and_a_trace_per_model(entries):
    fig = runs.curves_figure(entries, {"teacher_entropy": [("dino", 5.5, "ln K")]})
    titles = [a.text for a in fig.layout.annotations]
    assert "loss (÷ its first value)" in titles and "teacher entropy per image (nats)" in titles and "ln K" in titles
    loss = [t for t in fig.data if t.xaxis == "x"]  # the first panel: the loss of every model
    assert sorted(t.name for t in loss) == sorted(e.label for e in entries)
    assert all(t.y[0] == pytest.approx(1.0) for t in loss)
    assert sum(t.showlegend for t in fig.data) == len(entries)


# ------------------------------------------------------------------------------------------------- models, ui
def test_model_cache_loads_each_resolved_path_once_and_labels_repeats(smoke_runs):
    cache = ModelCache()
    path = smoke_runs["dino"]
    a = cache.entries([path, path.parent / ".." / path.parent.name / "dino"])
    assert a[0].model is a[1].model
    assert [e.label for e in a] == ["dino", "dino (2)"]
    with pytest.raises(UserError, match="does not exist"):
        cache.get(path.parent / "missing")


def test_read_query_turns_bad_uploads_into_user_errors(tmp_path):
    assert read_query(None) is None
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    with pytest.raises(UserError, match="notes.txt is not an image"):
        read_query({"path": str(bad), "orig_name": "notes.txt"})


def test_attention_handler_takes_a_pil_image_and_refuses_no_image_or_a_bad_mass(explorer, photo):
    rows_and_more = attention_handler(explorer, photo)
    assert len(rows_and_more) == 3 + 2  # a row per model, the colour scale, the entropy rows
    with pytest.raises(UserError, match="no image"):
        attention_handler(explorer, None)
    with pytest.raises(UserError, match="keep_mass"):
        attention_handler(explorer, photo, 1.5)


def test_retrieve_handler_checks_its_inputs_and_scores_a_named_class(explorer, photo, gallery):
    summary, *views, overlap = retrieve_handler(explorer, photo, 4, -1, gallery.classes[1])
    assert f"Query class **{gallery.classes[1]}**" in summary and len(views) == 3 and len(views[0]) == 4
    assert [row[0] for row in overlap] == explorer.labels
    with pytest.raises(UserError, match="unknown class"):
        retrieve_handler(explorer, photo, 4, -1, "unicorn")
    with pytest.raises(UserError, match="outside the gallery"):
        retrieve_handler(explorer, photo, 4, len(gallery))
    with pytest.raises(UserError, match="k must be"):
        retrieve_handler(explorer, photo, 0)
    with pytest.raises(UserError, match="no image"):
        retrieve_handler(explorer, None)


def test_projection_handler_titles_each_panel_with_its_scores(explorer):
    figure, table = projection_handler(explorer)
    titles = [a.text for a in figure.layout.annotations]
    assert len(titles) == 3 and all("20-NN acc" in t and "silhouette" in t for t in titles)
    assert table.count("\n") == 1 + 3


def test_build_app_registers_the_three_api_endpoints(entries, gallery, tmp_path):
    demo = build_app(entries, gallery, cache=ArtifactCache(tmp_path))
    names = {fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert {"attention", "retrieve", "projection"} <= names


# ------------------------------------------------------------------------------------------------- exports
def test_every_tab_exports_its_picture_and_the_numbers_behind_it(explorer, entries, photo):
    import csv

    png, numbers = attention.attention_export(explorer, photo, 0.6, 1.0)
    assert Image.open(png).size[0] == render.TILE * (1 + entries[0].model.num_heads + 2)
    maps = json.loads(Path(numbers).read_text())["models"]
    assert [m["model"] for m in maps] == explorer.labels
    assert np.allclose(np.mean(maps[0]["heads"], axis=(-2, -1)), 1.0, atol=1e-3)  # "x uniform" units

    png, table = retrieval.retrieve_export(explorer, None, 3, 5)
    rows = list(csv.DictReader(open(table)))
    assert len(rows) == 3 * len(entries) and {r["rank"] for r in rows} == {"1", "2", "3"}
    assert "5" not in {r["gallery_index"] for r in rows}  # the query itself is left out
    assert Image.open(png).size[1] >= 3 * render.TILE

    layouts, scores = embeddings.projection_export(explorer)
    rows = list(csv.DictReader(open(layouts)))
    assert len(rows) == 64 * len(entries) and set(rows[0]) == {"model", "gallery_index", "label", "x", "y"}
    assert [s["model"] for s in json.loads(Path(scores).read_text())] == explorer.labels

    table, curves = runs.runs_export(entries)
    assert [r["model"] for r in csv.DictReader(open(table))] == explorer.labels
    assert set(json.loads(Path(curves).read_text())) == set(explorer.labels)


def test_exports_of_bad_input_are_user_errors(explorer):
    with pytest.raises(UserError, match="no image"):
        attention.attention_export(explorer, None)
    with pytest.raises(UserError, match="k must be"):
        retrieval.retrieve_export(explorer, None, 0, 5)


def test_runs_tab_draws_the_collapse_thresholds_the_training_monitor_uses(entries):
    import math

    lines = runs.collapse_thresholds(entries)
    dino_entropy = [v for label, v, _ in lines["teacher_entropy"] if label == "dino"]
    assert dino_entropy == pytest.approx([0.99 * math.log(256)])  # smoke preset: K = 256
    dino_marginal = [v for label, v, _ in lines["teacher_marginal_entropy"] if label == "dino"]
    assert dino_marginal == pytest.approx([0.01 * math.log(256)])
    assert {label for label, _, _ in lines["barlow_diag_rms_error"]} == {"barlow", "hybrid"}
    assert [label for label, _, _ in lines["loss_dino"]] == ["hybrid", "hybrid"]
    assert len(lines["embed_std"]) == 3
    fig = runs.curves_figure(entries, lines)
    assert any("collapse: one prototype wins for every image" in (a.text or "") for a in fig.layout.annotations)
