"""The `scenes` dataset: exact masks, disjoint splits, determinism, its `--data` spec and its bad input."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from dinotwins.data import scenes
from dinotwins.data import load_dataset
from dinotwins.errors import UserError
from dinotwins.training.trainer import train
from tests.conftest import smoke_config


def test_a_pasted_object_covers_exactly_its_mask():
    disk = np.zeros((40, 40, 4), dtype=np.uint8)
    yy, xx = np.mgrid[:40, :40]
    disk[(yy - 19.5) ** 2 + (xx - 19.5) ** 2 <= 19.5**2] = (255, 0, 0, 255)  # a red disk, hard edge
    background = np.random.default_rng(1).integers(0, 255, (100, 100, 3), dtype=np.uint8)
    for seed in range(6):  # photographs and generated backgrounds
        (image,), mask, photo = scenes.render_one(disk, background, 32, np.random.default_rng(seed), 0.5)
        canvas, same = scenes.background_canvas(background, 32, np.random.default_rng(seed), 0.5)  # its first draws
        assert photo == same
        assert mask.any() and not mask.all()
        red, blue = image[..., 0].astype(int), image[..., 2].astype(int)
        assert (red[mask] >= 127).all() and (blue[mask] <= 128).all()  # alpha >= 0.5: mostly the red object
        ring = np.zeros_like(mask)
        ys, xs = np.nonzero(mask)
        ring[max(ys.min() - 1, 0):ys.max() + 2, max(xs.min() - 1, 0):xs.max() + 2] = True
        expected = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
        assert np.array_equal(image[~ring], expected[~ring])  # away from the object: the background untouched


def test_same_spec_twice_gives_identical_images_labels_and_masks():
    first, second = load_dataset("scenes:64", "test", image_size=32), load_dataset("scenes:64", "test", image_size=32)
    assert torch.equal(first.images, second.images)
    assert torch.equal(first.labels, second.labels) and torch.equal(first.masks, second.masks)


def test_train_and_test_use_disjoint_object_files_and_backgrounds():
    train, test = scenes.scene_sources("train"), scenes.scene_sources("test")
    assert set(train.object_files).isdisjoint(test.object_files)
    assert set(train.background_files).isdisjoint(test.background_files)
    assert len(test.background_files) >= 3 and len(train.background_files) >= 3 * len(test.background_files) - 3


def test_every_category_has_train_and_test_objects():
    for split in ("train", "test"):
        labels = set(scenes.scene_sources(split).object_labels)
        assert labels == set(range(len(scenes.CLASSES)))


def test_spec_gives_n_train_images_and_a_fixed_test_split_at_the_stored_size():
    train = load_dataset("scenes:300", "train", image_size=48)
    assert train.images.shape == (300, 3, 48, 48) and train.masks.shape == (300, 48, 48)
    assert train.classes == list(scenes.CLASSES)
    first, second = load_dataset("scenes:300", "test", image_size=16), load_dataset("scenes:9000", "test", image_size=16)
    assert len(first) == scenes.TEST_SIZE and torch.equal(first.images, second.images)


def test_labels_are_balanced_and_masks_hold_an_object_and_background():
    data = load_dataset("scenes:440", "train", image_size=32)
    counts = torch.bincount(data.labels, minlength=len(scenes.CLASSES))
    assert counts.max() - counts.min() <= 1
    area = data.masks.flatten(1).float().mean(1)
    assert (area > 0).all() and (area < 0.9).all()
    assert 0.08 < area.mean() < 0.4


@pytest.mark.parametrize("spec", ["scenes:zero", "scenes:0", "scenes-paired:zero", "scenes-generated:-3"])
def test_bad_counts_are_user_errors_naming_the_spec(spec):
    with pytest.raises(UserError, match=f"^{spec.partition(':')[0]}:N needs"):
        load_dataset(spec, "train", image_size=32)


def test_a_storage_size_too_small_is_a_user_error_naming_the_fix():
    with pytest.raises(UserError, match="at least 16 px"):
        load_dataset("scenes:64", "train", image_size=8)


def test_missing_stamps_package_is_one_user_error_naming_it(monkeypatch, tmp_path):
    monkeypatch.setattr(scenes, "STAMPS_DIR", tmp_path / "absent")
    scenes.scene_sources.cache_clear()
    try:
        with pytest.raises(UserError, match="tuxpaint-stamps-default"):
            load_dataset("scenes:64", "train", image_size=32)
    finally:
        scenes.scene_sources.cache_clear()


def test_a_category_with_too_few_objects_is_a_user_error(monkeypatch, tmp_path):
    for name, folders in scenes.CATEGORIES:
        folder = tmp_path / folders[0]
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(3 if name == "insect" else scenes.MIN_OBJECTS):
            Image.new("RGBA", (8, 8)).save(folder / f"{i}.png")
    monkeypatch.setattr(scenes, "STAMPS_DIR", tmp_path)
    with pytest.raises(UserError, match="'insect' has 3 object files"):
        scenes.split_objects("train")


@pytest.mark.slow
def test_train_without_the_stamps_package_fails_in_one_line_and_writes_nothing(tmp_path):
    script = ("import sys; import dinotwins.data.scenes as s; from pathlib import Path; s.STAMPS_DIR = Path(sys.argv[1]); "
              "sys.argv = ['train.py'] + sys.argv[2:]; import runpy; runpy.run_path('train.py', run_name='__main__')")
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "absent"), "--method", "dino",
                             "--preset", "smoke", "--data", "scenes:64", "--out", str(out)],
                            capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "tuxpaint-stamps-default" in result.stderr
    assert not out.exists()


def test_a_split_too_large_for_memory_renders_each_batch_with_the_same_pixels(monkeypatch):
    eager = load_dataset("scenes:200", "train", image_size=32)
    monkeypatch.setattr(scenes, "IN_MEMORY_BUDGET", 1000)
    lazy = load_dataset("scenes:200", "train", image_size=32)
    assert lazy.images is None and len(lazy) == 200 and lazy.image_shape == (3, 32, 32)
    assert torch.equal(lazy.labels, eager.labels) and "made per batch" in lazy.describe()
    picks = torch.tensor([7, 0, 199, 7])
    assert torch.equal(lazy.get_batch(picks), eager.images[picks])
    assert torch.equal(lazy[3][0], eager.images[3])


def assert_same_object_on_other_backgrounds(paired):
    first, second = paired.renderings.unbind(1)
    difference = (first.int() - second.int()).abs().amax(dim=1)  # (N, S, S)
    inside = torch.stack([torch.from_numpy(ndimage.binary_erosion(m.numpy())) for m in paired.masks])
    # The object: the same pixels on both where it is opaque (most of it; some stamps have translucent parts).
    assert (difference[inside] <= 1).float().mean() > 0.9 and difference[inside].float().mean() < 3
    assert difference[~paired.masks].float().mean() > 20  # the background: another one


def test_scenes_paired_puts_each_train_object_on_two_generated_backgrounds_and_tests_on_scenes():
    paired, generated = (load_dataset(spec, "train", image_size=32) for spec in ("scenes-paired:40", "scenes-generated:40"))
    assert paired.renderings.shape == (40, 2, 3, 32, 32) and paired.training_images is paired.renderings
    assert torch.equal(paired.images, generated.images) and torch.equal(paired.masks, generated.masks)
    assert_same_object_on_other_backgrounds(paired)
    test, same_test = (load_dataset(spec, "test", image_size=32) for spec in ("scenes-paired", "scenes"))
    assert test.renderings is None and torch.equal(test.images, same_test.images)


def test_scenes_paired_photos_puts_each_scenes_image_on_a_second_background_and_renders_it_per_batch_too(monkeypatch):
    paired, photos = (load_dataset(spec, "train", image_size=32) for spec in ("scenes-paired-photos:40", "scenes:40"))
    assert paired.renderings.shape == (40, 2, 3, 32, 32)
    assert torch.equal(paired.images, photos.images) and torch.equal(paired.masks, photos.masks)
    assert_same_object_on_other_backgrounds(paired)
    second = paired.renderings[:, 1]
    # Mostly photographs on both sides: the generated backgrounds' grain makes neighbouring pixels differ more.
    generated = load_dataset("scenes-paired:40", "train", image_size=32).renderings[:, 1]
    roughness = lambda x: (x[..., 1:].int() - x[..., :-1].int()).abs().float().mean()  # noqa: E731
    assert roughness(second) < roughness(generated)
    test, same_test = (load_dataset(spec, "test", image_size=32) for spec in ("scenes-paired-photos", "scenes"))
    assert test.renderings is None and torch.equal(test.images, same_test.images)
    monkeypatch.setattr(scenes, "IN_MEMORY_BUDGET", 1000)
    lazy = load_dataset("scenes-paired-photos:40", "train", image_size=32)
    picks = torch.tensor([3, 0, 39])
    assert torch.equal(lazy.training_batch(picks), paired.renderings[picks])


def test_scenes_paired_too_large_for_memory_renders_both_renderings_per_batch(monkeypatch):
    eager = load_dataset("scenes-paired:40", "train", image_size=32)
    monkeypatch.setattr(scenes, "IN_MEMORY_BUDGET", 1000)
    lazy = load_dataset("scenes-paired:40", "train", image_size=32)
    assert lazy.images is None and lazy.renderings is None and lazy.training_images is None
    picks = torch.tensor([5, 39, 0, 5])
    assert torch.equal(lazy.get_batch(picks), eager.images[picks])  # evaluation and galleries: rendering 0
    assert torch.equal(lazy[5][0], eager.images[5])
    assert torch.equal(lazy.training_batch(picks), eager.renderings[picks])  # training: both
    assert torch.equal(eager.training_batch(picks), eager.renderings[picks])


@pytest.mark.parametrize("held", [True, False], ids=["in-memory", "rendered-per-batch"])
def test_training_on_scenes_paired_runs_and_logs(tmp_path, monkeypatch, held):
    if not held:
        monkeypatch.setattr(scenes, "IN_MEMORY_BUDGET", 1000)
    run = train(smoke_config("dino", data="scenes-paired:64", precision="fp32"), tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 4 and all(math.isfinite(r["loss"]) for r in rows)
