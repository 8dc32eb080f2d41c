"""Mass-threshold attention masks (DINO's visualisation) and their Jaccard with object masks."""

import numpy as np
import pytest
import torch

from dinotwins.evaluation.attention_masks import (attention_jaccard, follows_object, jaccard, mask_extent,
                                                  mass_on_object, mass_threshold_mask, object_area, object_maps,
                                                  prior_maps, upsample_mask)


def test_mass_threshold_keeps_the_smallest_set_reaching_the_mass():
    attn = torch.tensor([[0.5, 0.3], [0.1, 0.1]])
    assert mass_threshold_mask(attn, 0.6).tolist() == [[True, True], [False, False]]
    assert mass_threshold_mask(attn, 0.5).tolist() == [[True, False], [False, False]]


def test_mass_threshold_normalizes_each_map_and_stops_exactly_at_the_mass():
    attn = 2 * torch.tensor([[0.2, 0.0, 0.5], [0.0, 0.3, 0.0], [0.0, 0.0, 0.0]])  # sums to 2
    assert mass_threshold_mask(attn, 0.8).tolist() == [[False, False, True], [False, True, False],
                                                       [False, False, False]]
    assert mass_threshold_mask(attn, 1.0).sum() == 3  # every patch with weight, none without


def test_mass_threshold_works_per_map_over_leading_dims():
    attn = torch.stack([torch.tensor([[0.7, 0.1], [0.1, 0.1]]), torch.tensor([[0.1, 0.1], [0.1, 0.7]])])
    mask = mass_threshold_mask(attn[:, None], 0.6)  # (2, 1, 2, 2)
    assert mask.shape == (2, 1, 2, 2)
    assert mask[0, 0].tolist() == [[True, False], [False, False]]
    assert mask[1, 0].tolist() == [[False, False], [False, True]]
    assert np.asarray(mass_threshold_mask(np.array([[0.5, 0.3], [0.1, 0.1]]))).dtype == bool  # numpy in


def test_jaccard_is_intersection_over_union_and_one_for_two_empty_masks():
    pred = torch.tensor([[True, True], [False, False]])
    target = torch.tensor([[True, False], [True, False]])
    assert jaccard(pred, target).item() == pytest.approx(1 / 3)
    assert jaccard(pred, pred).item() == 1.0
    empty = torch.zeros(2, 2, dtype=torch.bool)
    assert jaccard(empty, empty).item() == 1.0


def test_upsample_mask_turns_each_patch_into_its_pixel_block():
    up = upsample_mask(torch.tensor([[True, False], [False, True]]), (4, 4))
    assert up.int().tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]


def test_attention_jaccard_for_mean_map_and_each_head():
    obj = torch.zeros(1, 4, 4, dtype=torch.bool)
    obj[0, :2, :2] = True  # the object fills the top-left patch
    attn = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]],  # head 0: all on the object
                          [[0.0, 0.0], [0.0, 1.0]]]])  # head 1: all on the background
    mean_heads, per_head = attention_jaccard(attn, obj, keep_mass=0.6)
    assert per_head.tolist() == [1.0, 0.0]
    assert mean_heads == pytest.approx(0.5)  # the mean map keeps both patches: 4 object px of 8


def test_mask_extent_is_the_mean_masks_size_and_its_share_on_the_object():
    obj = torch.zeros(2, 4, 4, dtype=torch.bool)
    obj[:, :2, :2] = True  # the object fills the top-left patch of a 2 x 2 grid
    peaked = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # one patch: a quarter of the image, all on the object
    flat = torch.ones(2, 2)  # 60 % of an even map takes three patches, one of them on the object
    attn = torch.stack([peaked, flat])[:, None].expand(2, 3, 2, 2)
    area, on_object = mask_extent(attn, obj, keep_mass=0.6)
    assert area == pytest.approx((1 / 4 + 3 / 4) / 2)
    assert on_object == pytest.approx((1.0 + 1 / 3) / 2)
    jaccards = torch.tensor([1.0, 1 / 3])  # the same two masks' Jaccard: what the two figures explain
    assert attention_jaccard(attn, obj, keep_mass=0.6)[0] == pytest.approx(jaccards.mean().item())


def test_mass_on_object_reads_against_the_object_area():
    obj = torch.zeros(2, 4, 4, dtype=torch.bool)
    obj[:, :2, :1] = True  # the object covers half of the top-left patch: 2 px of 16
    on_object = torch.tensor([[[9.0, 1.0], [1.0, 1.0]]]).expand(2, 3, 2, 2)  # 3 heads, 75 % on that patch
    blind = torch.ones(2, 3, 2, 2)  # spread evenly: the object's share of the image
    assert object_area(obj) == pytest.approx(2 / 16)
    assert mass_on_object(blind, obj) == pytest.approx(object_area(obj))
    assert mass_on_object(on_object, obj) == pytest.approx(0.75 / 2)  # half of the patch's mass lies on object
    heads = torch.stack([torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, 5.0]])])
    assert mass_on_object(heads[None].expand(2, 2, 2, 2), obj) == pytest.approx(0.25)  # heads weigh the same


def test_object_maps_put_all_mass_on_the_object_and_keep_sixty_percent_of_it():
    obj = torch.zeros(1, 8, 8, dtype=torch.bool)
    obj[0, :4, :4] = True  # four whole patches of a 4 x 4 grid (2 px patches)
    maps = object_maps(obj, (4, 4))
    assert maps.shape == (1, 1, 4, 4) and mass_on_object(maps, obj) == pytest.approx(1.0)
    mean_heads, _ = attention_jaccard(maps, obj)
    assert mean_heads == pytest.approx(3 / 4)  # 60 % of the mass: three of the four equal patches
    half = torch.zeros(1, 8, 8, dtype=torch.bool)
    half[0, :4, :1] = True  # half of two patches: they get the mass, each patch weighted by its cover
    assert object_maps(half, (4, 4))[0, 0, :2, 0].tolist() == [0.5, 0.5] and object_maps(half, (4, 4)).sum() == 1.0


def squares(corners: list[tuple[int, int]], side: int = 4, size: int = 16) -> torch.Tensor:
    """bool (N, size, size): one side x side object per image, its top-left corner at each (row, col)."""
    masks = torch.zeros(len(corners), size, size, dtype=torch.bool)
    for i, (r, c) in enumerate(corners):
        masks[i, r:r + side, c:c + side] = True
    return masks


def test_a_map_follows_the_object_by_one_and_a_fixed_map_by_zero():
    masks = squares([(0, 0), (12, 12), (0, 12), (6, 6), (4, 10)])  # 4 px objects, 4 x 4 grid of 4 px patches
    assert follows_object(object_maps(masks, (4, 4)), masks) == pytest.approx(1.0)
    fixed = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0)).expand(5, 3, 4, 4)
    assert follows_object(fixed, masks) == pytest.approx(0.0, abs=1e-12)  # a peaked map, blind to the image
    halfway = object_maps(masks, (4, 4)) + object_maps(masks, (4, 4)).flip(-1, -2)  # object and its mirror image
    assert follows_object(halfway, masks) == pytest.approx(0.0, abs=1e-12)
    lagging = object_maps(masks, (4, 4)) + torch.full((5, 1, 4, 4), 1 / 16)  # half its mass spread evenly
    assert follows_object(lagging, masks) == pytest.approx(0.5)
    assert follows_object(fixed, torch.zeros_like(masks)) == 0.0  # no object anywhere: nothing to follow


def test_prior_maps_are_the_train_objects_mean_cover_the_same_for_every_image():
    train = squares([(0, 0), (0, 4)], size=8)  # 4 px squares on a 2 x 2 grid: the top row, left then right
    prior = prior_maps(train, (2, 2), 3)
    assert prior.shape == (3, 1, 2, 2) and torch.equal(prior[0], prior[2])
    assert prior[0, 0].tolist() == [[0.5, 0.5], [0.0, 0.0]]
    test = squares([(0, 0), (4, 4), (4, 0)], size=8)
    assert follows_object(prior, test) == pytest.approx(0.0, abs=1e-12)
    assert mass_on_object(prior, test) == pytest.approx((0.5 + 0.0 + 0.0) / 3)
