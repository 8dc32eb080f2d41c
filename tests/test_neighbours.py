"""What nearest neighbours share (evaluation/neighbours.py) and the scenes records it reads."""

import numpy as np
import torch

from dinotwins.data import load_dataset
from dinotwins.data import scenes
from dinotwins.evaluation import rows as rows_module
from dinotwins.evaluation.neighbours import shared_neighbours
from dinotwins.evaluation.rows import limit_dataset


def test_neighbours_share_what_the_features_encode_and_not_what_they_ignore():
    rng = np.random.default_rng(0)
    objects = torch.arange(40) % 4  # four objects, ten images each
    backgrounds = torch.from_numpy(rng.integers(0, 4, 40))  # drawn independently of the objects
    centres = rng.normal(size=(4, 16)) * 10
    features = centres[objects.numpy()] + rng.normal(size=(40, 16))  # encodes the object only
    shares = shared_neighbours(features, {"object": objects, "background": backgrounds}, k=5)
    assert shares["object"] == 1.0
    assert shares["background"] < 0.5


def test_images_without_a_source_are_no_query_and_never_a_match():
    features = np.array([[1.0, 0.0], [0.99, 0.1], [0.98, 0.2], [0.0, 1.0]], dtype=np.float32)
    ids = torch.tensor([-1, 0, -1, 0])  # the close images 0 and 2 have no source
    assert shared_neighbours(features, {"background": ids}, k=1) == {"background": 0.0}
    assert shared_neighbours(features, {"background": torch.full((4,), -1)}, k=1) == {"background": None}


def test_scenes_records_each_images_object_and_photograph_and_a_subset_keeps_them_aligned():
    test = load_dataset("scenes", "test", image_size=16)
    sources = scenes.scene_sources("test")
    objects, backgrounds = test.made_from["object"], test.made_from["background"]
    object_labels = torch.tensor(sources.object_labels)
    assert torch.equal(object_labels[objects], test.labels)  # each image's object is of its category
    assert 0.1 < (backgrounds == -1).float().mean() < 0.5  # generated backgrounds (PROCEDURAL_SHARE) have none
    assert backgrounds.max() < len(sources.backgrounds)
    subset = limit_dataset(test, 50, seed=1)
    picked = [i for i in range(len(test)) if any(torch.equal(test.images[i], im) for im in subset.images[:3])][:3]
    assert subset.made_from["object"][:3].tolist() == objects[picked].tolist()


def test_scenes_generated_trains_on_the_same_objects_with_no_photograph_and_tests_on_scenes():
    generated, plain = (load_dataset(spec, "train", image_size=16) for spec in ("scenes-generated:200", "scenes:200"))
    assert (generated.made_from["background"] == -1).all() and (plain.made_from["background"] >= 0).any()
    assert torch.equal(generated.made_from["object"], plain.made_from["object"])
    assert torch.equal(generated.labels, plain.labels)
    test, same_test = (load_dataset(spec, "test", image_size=16) for spec in ("scenes-generated", "scenes"))
    assert torch.equal(test.images, same_test.images) and torch.equal(test.masks, same_test.masks)


def test_the_evaluation_row_has_the_shares_on_scenes_and_none_elsewhere():
    scenes_test = limit_dataset(load_dataset("scenes", "test", image_size=16), 200, first=True)
    features = scenes_test.images.flatten(1).float().numpy()
    shares = rows_module.neighbour_scores(features, scenes_test)
    assert set(shares) == {"nn_same_object", "nn_same_background"}
    assert all(0.0 <= value <= 1.0 for value in shares.values())
    synthetic = load_dataset("synthetic:32", "test", image_size=16)
    assert rows_module.neighbour_scores(synthetic.images.flatten(1).float().numpy(), synthetic) == dict.fromkeys(
        shares)
