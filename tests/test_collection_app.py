"""The explorer on prebuilt collections (python -m app --index DIR): the gallery and neighbours come from the
memory-mapped extraction and its index, nothing is embedded at launch, and a wrong folder is one clear error."""

import numpy as np
import pytest
from PIL import Image

from app.cache import ArtifactCache
from app.explorer import Explorer
from app.models import open_models_and_gallery
from app.tabs import embeddings, retrieval
from dinotwins.collection.extract import extract
from dinotwins.collection.index import build_index
from dinotwins.collection.shards import Collection
from dinotwins.data import load_dataset
from dinotwins.errors import UserError
from dinotwins.evaluation import features
from dinotwins.models.load import load_model


@pytest.fixture(scope="module")
def folders(smoke_runs, tmp_path_factory):
    root = tmp_path_factory.mktemp("collections")
    out = {}
    for method in ("dino", "barlow"):
        model = load_model(smoke_runs[method])
        data = load_dataset("synthetic:2000", "train", image_size=model.image_size)
        extract(model, data, root / method, shard_size=700, progress=False, model_path=smoke_runs[method])
        build_index(Collection(root / method, full_check=True))
        out[method] = root / method
    return out


@pytest.fixture(scope="module")
def opened(folders, tmp_path_factory):
    entries, gallery, notices, collections = open_models_and_gallery(
        [], None, cache_root=tmp_path_factory.mktemp("cache"), collections=[str(folders["dino"]),
                                                                            str(folders["barlow"])])
    return entries, gallery, collections


def test_the_models_and_the_gallery_come_from_the_folders(opened, smoke_runs):
    entries, gallery, collections = opened
    assert [e.path for e in entries] == [smoke_runs["dino"].resolve(), smoke_runs["barlow"].resolve()]
    assert gallery.images is None and len(gallery) == 2000 and gallery.spec == "synthetic:2000 (train)"
    expected = load_dataset("synthetic:2000", "train", image_size=32)
    assert np.array_equal(np.asarray(gallery.image(1234)), expected.images[1234].permute(1, 2, 0).numpy())
    assert np.array_equal(gallery.labels, expected.labels.numpy())


def test_neighbours_come_from_the_prebuilt_index_without_embedding_the_gallery(opened, tmp_path, monkeypatch):
    entries, gallery, collections = opened
    monkeypatch.setattr(features, "compute_features", lambda *a, **k: pytest.fail("embedded the gallery"))
    explorer = Explorer(entries, gallery, ArtifactCache(tmp_path), collections=collections, umap_points=300,
                        umap_epochs=10)
    summary, *views, overlap = retrieval.retrieve_handler(explorer, None, 5, 17)
    assert len(views) == 2 and all(len(v) == 5 for v in views) and "Query class" in summary
    results = explorer.neighbours(None, 5, query_index=17)
    exact = collections[0].take(np.arange(2000)) @ collections[0].take(np.array([17]))[0]
    assert 17 not in results[0].indices and results[0].indices[0] == np.argsort(-exact)[1]
    picture = Image.fromarray(np.full((40, 40, 3), 128, np.uint8))
    figure, table = embeddings.projection_handler(explorer, image=picture)
    assert "a seeded sample of 300 of the gallery's 2,000 images" in figure.layout.title.text
    assert any(trace.name == "query" for trace in figure.data) and "projected sample" in table


def test_a_folder_of_another_model_or_of_other_images_is_one_clear_error(folders, smoke_runs, tmp_path):
    with pytest.raises(UserError, match="holds embeddings of dino, not of barlow"):
        open_models_and_gallery([str(smoke_runs["barlow"])], None, cache_root=tmp_path,
                                collections=[str(folders["dino"])])
    with pytest.raises(UserError, match="one folder per model"):
        open_models_and_gallery([str(smoke_runs["dino"])], None, cache_root=tmp_path,
                                collections=[str(folders["dino"]), str(folders["barlow"])])
    with pytest.raises(UserError, match="no collection.json"):
        open_models_and_gallery([], None, cache_root=tmp_path, collections=[str(tmp_path)])
