"""Batched multi-crop augmentation: the view contract, determinism, and each transform on hand-checkable images."""

import math

import pytest
import torch
import torch.nn.functional as F

from dinotwins.data.augment import (MultiCrop, color_jitter, crop_boxes, gaussian_blur, grayscale, resized_crop,
                                    rotate_hue, solarize)
from dinotwins.data.augment_config import AugmentConfig
from dinotwins.errors import UserError

# Every photometric transform off: views are pure geometry, then normalization.
GEOMETRY_ONLY = dict(color_jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0, 0.0, 0.0), solarize_p=(0.0, 0.0))
IDENTITY_CROP = dict(global_scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)


def random_images(batch=4, channels=3, size=28, seed=0):
    return torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def unnormalize(view, cfg):
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    return view * std + mean


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("n_local", [0, 2])
def test_views_follow_the_contract_shapes_and_dtypes(channels, n_local):
    cfg = AugmentConfig(global_size=32, local_size=16, n_local=n_local)
    global_views, local_views = MultiCrop(cfg)(random_images(channels=channels), torch.Generator().manual_seed(0))
    assert len(global_views) == 2 and len(local_views) == n_local
    for view in global_views:
        assert view.shape == (4, 3, 32, 32) and view.dtype == torch.float32 and torch.isfinite(view).all()
    for view in local_views:
        assert view.shape == (4, 3, 16, 16) and view.dtype == torch.float32


def test_same_generator_seed_gives_identical_views():
    crop, images = MultiCrop(AugmentConfig(n_local=2)), random_images()
    first = crop(images, torch.Generator().manual_seed(7))
    second = crop(images, torch.Generator().manual_seed(7))
    for a, b in zip(first[0] + first[1], second[0] + second[1]):
        assert torch.equal(a, b)


def test_different_seeds_give_different_views():
    crop, images = MultiCrop(AugmentConfig(n_local=2)), random_images()
    first = crop(images, torch.Generator().manual_seed(1))
    second = crop(images, torch.Generator().manual_seed(2))
    for a, b in zip(first[0] + first[1], second[0] + second[1]):
        assert not torch.allclose(a, b)


def test_global_views_do_not_depend_on_the_local_crops_settings():
    # A method that sees only the global views (Barlow Twins) trains the same whatever the local crops' scale.
    images = random_images()
    narrow = MultiCrop(AugmentConfig(n_local=2, local_scale=(0.05, 0.4)))(images, torch.Generator().manual_seed(3))
    wide = MultiCrop(AugmentConfig(n_local=2, local_scale=(0.05, 0.6)))(images, torch.Generator().manual_seed(3))
    for a, b in zip(narrow[0], wide[0]):
        assert torch.equal(a, b)
    assert not torch.equal(narrow[1][0], wide[1][0])


def test_the_two_global_views_of_one_call_differ():
    global_views, _ = MultiCrop(AugmentConfig(n_local=0))(random_images(), torch.Generator().manual_seed(0))
    assert not torch.allclose(global_views[0], global_views[1])


def test_local_views_of_one_call_differ_from_each_other():
    _, local_views = MultiCrop(AugmentConfig(n_local=3))(random_images(), torch.Generator().manual_seed(0))
    assert not torch.allclose(local_views[0], local_views[1])
    assert not torch.allclose(local_views[1], local_views[2])


def test_each_view_of_paired_renderings_is_that_view_of_rendering_v_mod_r():
    pair = torch.stack([random_images(seed=0), random_images(seed=1)], dim=1)  # (B, R=2, C, H, W)
    crop = MultiCrop(AugmentConfig(global_size=24, local_size=12, n_local=3))
    paired = crop(pair, torch.Generator().manual_seed(5))
    alone = [crop(pair[:, r], torch.Generator().manual_seed(5)) for r in range(2)]  # the same random draws
    for size in range(2):  # global, then local views
        for v, view in enumerate(paired[size]):
            torch.testing.assert_close(view, alone[v % 2][size][v])
            assert not torch.allclose(view, alone[1 - v % 2][size][v])


def test_views_cropped_together_equal_views_cropped_one_at_a_time():
    images = torch.rand(3, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    uniform = torch.rand(2 * 3, 4, generator=torch.Generator().manual_seed(1))
    boxes = crop_boxes(uniform, 20, 20, scale=(0.1, 0.9), ratio=(3 / 4, 4 / 3))
    flip = torch.tensor([True, False, True, False, False, True])
    together = resized_crop(images, 8, boxes, flip)  # (2 views * 3 images, 3, 8, 8), view-major
    for view in range(2):
        rows = slice(3 * view, 3 * view + 3)
        torch.testing.assert_close(together[rows], resized_crop(images, 8, boxes[rows], flip[rows]))


def test_full_crop_without_photometric_changes_reproduces_the_input():
    cfg = AugmentConfig(global_size=28, n_local=0, **IDENTITY_CROP, **GEOMETRY_ONLY)
    images = random_images(size=28)
    global_views, _ = MultiCrop(cfg)(images, torch.Generator().manual_seed(0))
    for view in global_views:
        torch.testing.assert_close(unnormalize(view, cfg), images.float() / 255, atol=1e-4, rtol=0)


def test_full_crop_of_a_smaller_image_equals_its_bilinear_resize():
    cfg = AugmentConfig(global_size=32, n_local=0, **IDENTITY_CROP, **GEOMETRY_ONLY)
    images = random_images(size=16)
    global_views, _ = MultiCrop(cfg)(images, torch.Generator().manual_seed(0))
    resized = F.interpolate(images.float() / 255, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(unnormalize(global_views[0], cfg), resized, atol=1e-4, rtol=0)


def test_a_strong_downscale_is_antialiased_not_aliased():
    cfg = AugmentConfig(global_size=8, n_local=0, **IDENTITY_CROP, **GEOMETRY_ONLY)
    rows, cols = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    checkerboard = ((rows + cols) % 2 * 255).to(torch.uint8).expand(1, 3, 64, 64)  # finest possible detail
    global_views, _ = MultiCrop(cfg)(checkerboard, torch.Generator().manual_seed(0))
    torch.testing.assert_close(unnormalize(global_views[0], cfg), torch.full((1, 3, 8, 8), 0.5), atol=0.02, rtol=0)


def test_flip_with_probability_one_mirrors_an_asymmetric_image():
    cfg = AugmentConfig(global_size=8, n_local=0, global_scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0,
                        **GEOMETRY_ONLY)
    ramp = torch.arange(8, dtype=torch.uint8).mul(30).expand(1, 3, 8, 8).clone()  # dark left, bright right
    ramp[:, 0, :2] = 255  # and a red band on top, so an up-down flip would show too
    global_views, _ = MultiCrop(cfg)(ramp, torch.Generator().manual_seed(0))
    torch.testing.assert_close(unnormalize(global_views[0], cfg), ramp.flip(-1).float() / 255, atol=1e-4, rtol=0)


def test_one_channel_input_becomes_three_equal_channels():
    cfg = AugmentConfig(n_local=1)
    global_views, local_views = MultiCrop(cfg)(random_images(channels=1), torch.Generator().manual_seed(0))
    for view in global_views + local_views:
        rgb = unnormalize(view, cfg)
        torch.testing.assert_close(rgb[:, 0], rgb[:, 1], atol=1e-5, rtol=0)
        torch.testing.assert_close(rgb[:, 1], rgb[:, 2], atol=1e-5, rtol=0)


def test_grayscale_with_probability_one_gives_equal_channels():
    cfg = AugmentConfig(n_local=1, grayscale_p=1.0, solarize_p=(0.0, 0.0))
    global_views, local_views = MultiCrop(cfg)(random_images(channels=3), torch.Generator().manual_seed(0))
    for view in global_views + local_views:
        rgb = unnormalize(view, cfg)
        torch.testing.assert_close(rgb[:, 0], rgb[:, 2], atol=1e-5, rtol=0)


def test_solarize_inverts_values_at_or_above_one_half():
    x = torch.tensor([0.0, 0.25, 0.49, 0.5, 0.75, 1.0])
    torch.testing.assert_close(solarize(x), torch.tensor([0.0, 0.25, 0.49, 0.5, 0.25, 0.0]))


def test_solarized_global_view_of_a_known_value():
    cfg = AugmentConfig(global_size=8, n_local=0, **IDENTITY_CROP,
                        **{**GEOMETRY_ONLY, "solarize_p": (0.0, 1.0)})
    images = torch.full((2, 3, 8, 8), 200, dtype=torch.uint8)
    global_views, _ = MultiCrop(cfg)(images, torch.Generator().manual_seed(0))
    torch.testing.assert_close(unnormalize(global_views[0], cfg), torch.full((2, 3, 8, 8), 200 / 255))
    torch.testing.assert_close(unnormalize(global_views[1], cfg), torch.full((2, 3, 8, 8), 55 / 255))


def test_normalization_uses_the_configured_mean_and_std():
    cfg = AugmentConfig(global_size=4, n_local=0, **IDENTITY_CROP, **GEOMETRY_ONLY, mean=(0.5, 0.0, 1.0),
                        std=(0.5, 1.0, 2.0))
    images = torch.full((1, 3, 4, 4), 255, dtype=torch.uint8)
    global_views, _ = MultiCrop(cfg)(images, torch.Generator().manual_seed(0))
    torch.testing.assert_close(global_views[0][0, :, 0, 0], torch.tensor([1.0, 1.0, 0.0]))


def test_crop_boxes_stay_inside_the_image_with_the_drawn_area():
    uniform = torch.rand(1000, 4, generator=torch.Generator().manual_seed(0))
    boxes = crop_boxes(uniform, 28, 28, scale=(0.05, 0.4), ratio=(3 / 4, 4 / 3))
    cx, cy, w, h = boxes.unbind(1)
    assert (cx - w / 2 >= 0).all() and (cx + w / 2 <= 1 + 1e-6).all()
    assert (cy - h / 2 >= 0).all() and (cy + h / 2 <= 1 + 1e-6).all()
    area = w * h
    assert area.min() >= 0.05 - 1e-6 and area.max() <= 0.4 + 1e-6
    aspect = w / h
    assert aspect.min() >= 3 / 4 - 1e-5 and aspect.max() <= 4 / 3 + 1e-5


def test_crop_boxes_wider_than_the_image_are_clamped_to_it():
    boxes = crop_boxes(torch.ones(1, 4), 10, 10, scale=(1.0, 1.0), ratio=(2.0, 2.0))
    cx, cy, w, h = boxes[0].tolist()
    assert w == 1.0 and cx == pytest.approx(0.5) and h == pytest.approx(math.sqrt(0.5))


def reference_blur(image, sigma, radius):
    """One image (C, H, W), a 2-d gaussian kernel built directly, reflected edges."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel_1d = torch.exp(-offsets**2 / (2 * sigma**2))
    kernel = torch.outer(kernel_1d, kernel_1d)
    kernel = kernel / kernel.sum()
    padded = F.pad(image[None], (radius,) * 4, mode="reflect")
    channels = image.shape[0]
    return F.conv2d(padded, kernel.expand(channels, 1, -1, -1), groups=channels)[0]


def test_gaussian_blur_applies_each_images_own_sigma():
    images = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([0.3, 1.0, 1.5])
    blurred = gaussian_blur(images, sigmas)
    radius = math.ceil(3 * 1.5)
    for image, sigma, out in zip(images, sigmas, blurred):
        torch.testing.assert_close(out, reference_blur(image, float(sigma), radius), atol=1e-5, rtol=0)


def test_gaussian_blur_keeps_a_constant_image_constant():
    images = torch.full((2, 3, 9, 9), 0.3)
    torch.testing.assert_close(gaussian_blur(images, torch.tensor([0.5, 2.0])), images)


def test_color_jitter_with_unit_factors_and_no_hue_shift_is_the_identity():
    images = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(color_jitter(images, torch.ones(2, 3), torch.zeros(2)), images, atol=1e-5, rtol=0)


def test_hue_rotation_keeps_luma_and_a_full_turn_is_the_identity():
    images = 0.25 + 0.5 * torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))  # no clipping
    rotated = rotate_hue(images, torch.tensor([0.1, -0.05]))
    torch.testing.assert_close(grayscale(rotated), grayscale(images), atol=1e-4, rtol=0)
    assert not torch.allclose(rotated, images, atol=1e-3)
    torch.testing.assert_close(rotate_hue(images, torch.tensor([1.0, 1.0])), images, atol=1e-5, rtol=0)


def test_config_with_a_probability_above_one_is_a_user_error():
    with pytest.raises(UserError, match="augment.flip_p"):
        MultiCrop(AugmentConfig(flip_p=1.5))


def test_images_of_the_wrong_rank_are_refused():
    with pytest.raises(ValueError, match="MultiCrop expects"):
        MultiCrop(AugmentConfig())(torch.zeros(3, 8, 8, dtype=torch.uint8), torch.Generator())
