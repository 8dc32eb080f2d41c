"""The procedural synthetic dataset: determinism, exact masks, balanced labels, and its `--data` spec."""

import pytest
import torch

from dinotwins.data import load_dataset
from dinotwins.errors import UserError
from dinotwins.data.synthetic import CLASSES, make_synthetic


def test_same_call_twice_gives_identical_tensors():
    first, second = make_synthetic(300, 32, seed=5), make_synthetic(300, 32, seed=5)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_different_seeds_give_different_images():
    assert not torch.equal(make_synthetic(50, 32, seed=0)[0], make_synthetic(50, 32, seed=1)[0])


def test_outputs_have_the_documented_shapes_and_dtypes():
    images, labels, masks = make_synthetic(20, 24, seed=0)
    assert images.shape == (20, 3, 24, 24) and images.dtype == torch.uint8
    assert labels.shape == (20,) and labels.dtype == torch.int64
    assert masks.shape == (20, 24, 24) and masks.dtype == torch.bool


@pytest.mark.parametrize("size", [16, 32, 64])
def test_every_mask_is_non_empty_and_leaves_background(size):
    _, _, masks = make_synthetic(600, size, seed=2)
    area = masks.flatten(1).float().mean(1)
    assert (area > 0).all()
    assert (area < 0.5).all()


def test_masks_are_exact_object_pixels_share_one_color_up_to_the_shading():
    images, _, masks = make_synthetic(64, 32, seed=3)
    for image, mask in zip(images.float(), masks):
        inside = image[:, mask]  # (3, pixels): round(255 * color * shade), shade in [0.9, 1]
        brightest = inside.max(dim=1, keepdim=True).values
        assert (inside >= 0.9 * brightest - 1).all()  # within the shading (and rounding) of one color


def test_object_pixels_differ_from_the_background_next_to_them():
    images, _, masks = make_synthetic(200, 32, seed=4)
    inside = (images.float() * masks[:, None]).sum((2, 3)) / masks[:, None].sum((2, 3))
    ring = torch.nn.functional.max_pool2d(masks[:, None].float(), 5, stride=1, padding=2)[:, 0].bool() & ~masks
    outside = (images.float() * ring[:, None]).sum((2, 3)) / ring[:, None].sum((2, 3)).clamp(min=1)
    assert (inside - outside).abs().mean(1).min() > 20  # grey levels out of 255


def test_labels_are_in_range_and_classes_balanced():
    _, labels, _ = make_synthetic(601, 32, seed=0)
    counts = torch.bincount(labels, minlength=len(CLASSES))
    assert labels.min() >= 0 and labels.max() < len(CLASSES) and len(CLASSES) >= 5
    assert counts.max() - counts.min() <= 1


def test_labels_are_shuffled_not_in_class_order():
    _, labels, _ = make_synthetic(120, 32, seed=0)
    assert not torch.equal(labels, torch.arange(120) % len(CLASSES))


def test_spec_sizes_train_n_and_test_a_quarter_with_a_floor_of_64():
    assert len(load_dataset("synthetic:1000", "train")) == 1000
    assert len(load_dataset("synthetic:1000", "test")) == 250
    assert len(load_dataset("synthetic:100", "test")) == 64


def test_spec_without_n_gives_4096_train_and_1024_test_images_at_image_size():
    train = load_dataset("synthetic", "train", image_size=16)
    assert len(train) == 4096 and train.images.shape[1:] == (3, 16, 16)
    assert train.masks.shape == (4096, 16, 16)
    assert len(load_dataset("synthetic", "test", image_size=16)) == 1024


def test_train_and_test_splits_are_different_images():
    train = load_dataset("synthetic:256", "train")
    test = load_dataset("synthetic:256", "test")
    assert not torch.equal(train.images[:64], test.images[:64])


def test_dataset_carries_class_names_and_describes_itself():
    dataset = load_dataset("synthetic:64", "train")
    assert dataset.classes == list(CLASSES)
    assert dataset.describe() == f"synthetic:64 train: 64 images 3x32x32, {len(CLASSES)} classes"


@pytest.mark.parametrize("spec", ["synthetic:abc", "synthetic:0", "synthetic:-5"])
def test_bad_image_count_is_a_user_error(spec):
    with pytest.raises(UserError, match="synthetic:N"):
        load_dataset(spec)
