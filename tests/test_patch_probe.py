"""The foreground probe on patch tokens: patches the object covers are told from the rest when tokens carry it."""

import torch

from dinotwins.evaluation.patch_probe import foreground_probe_iou, patch_foreground


def _scene(n, generator):
    masks = torch.zeros(n, 16, 16, dtype=torch.bool)
    for i in range(n):  # a random 8 x 8 object on a 4 x 4 grid of 4 px patches
        r, c = torch.randint(0, 9, (2,), generator=generator).tolist()
        masks[i, r:r + 8, c:c + 8] = True
    return masks


def test_patch_foreground_counts_patches_covered_at_least_half():
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2, :1] = True  # half of the top-left 2 x 2 patch
    mask[0, 2, 2] = True  # a quarter of the bottom-right one
    assert patch_foreground(mask, (2, 2)).int().tolist() == [[[1, 0], [0, 0]]]


def test_probe_finds_the_object_when_tokens_carry_it_and_not_when_they_are_noise():
    g = torch.Generator().manual_seed(0)
    train_masks, test_masks = _scene(60, g), _scene(40, g)

    def tokens(masks, informative):
        noise = torch.randn(len(masks), 4, 4, 8, generator=g)
        if informative:
            noise[..., 0] += 5.0 * patch_foreground(masks, (4, 4)).float()
        return noise

    informed = foreground_probe_iou(tokens(train_masks, True), train_masks, tokens(test_masks, True), test_masks)
    blind = foreground_probe_iou(tokens(train_masks, False), train_masks, tokens(test_masks, False), test_masks)
    assert informed > 0.8 and blind < 0.4


def test_probe_has_nothing_to_fit_when_every_train_patch_is_background():
    empty = torch.zeros(3, 8, 8, dtype=torch.bool)
    assert foreground_probe_iou(torch.randn(3, 2, 2, 4), empty, torch.randn(3, 2, 2, 4), empty) is None
