"""What a ViT looks at (dinotwins.models.maps): attention of any block, rollout against the paper's formula written
here, and patch tokens, on a tiny random ViT."""

import pytest
import torch

from dinotwins.models import maps
from dinotwins.models.backbone import create_backbone
from dinotwins.models.config import ModelConfig


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return create_backbone(ModelConfig(image_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3,
                                       drop_path_rate=0.0)).eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_attention_weights_of_every_block_are_row_stochastic(vit, x):
    weights = maps.attention_weights(vit, x, [0, 1, -1])
    assert set(weights) == {0, 1, -1} and torch.equal(weights[-1], maps.attention_weights(vit, x, [2])[2])
    for w in weights.values():
        assert w.shape == (2, 3, 17, 17)
        assert torch.allclose(w.sum(-1), torch.ones(2, 3, 17))


def test_cls_attention_is_the_cls_row_over_the_patches_on_the_grid(vit, x):
    first = maps.cls_attention(vit, x, layer=0)
    assert first.shape == (2, 3, 4, 4)
    assert torch.allclose(first.flatten(2), maps.attention_weights(vit, x, [0])[0][:, :, 0, 1:])
    assert not torch.allclose(first, maps.cls_attention(vit, x, layer=-1))


def test_rollout_is_the_product_of_residual_attention_from_first_to_last_block(vit, x):
    weights = maps.attention_weights(vit, x, [0, 1, 2])
    product = torch.eye(17).expand(2, 17, 17)
    for layer in range(3):
        step = (weights[layer].mean(1) + torch.eye(17)) / 2  # rows of A sum to 1: (A + I) renormalized
        product = step @ product
    expected = product[:, 0, 1:].reshape(2, 4, 4)
    assert torch.allclose(maps.attention_rollout(vit, x, "mean", 0.0), expected, atol=1e-6)


def test_rollout_head_fusion_and_discard_change_the_map_and_bad_options_are_refused(vit, x):
    mean = maps.attention_rollout(vit, x, "mean")
    assert not torch.allclose(mean, maps.attention_rollout(vit, x, "max"))
    assert not torch.allclose(mean, maps.attention_rollout(vit, x, "mean", 0.5))
    with pytest.raises(ValueError, match="head_fusion"):
        maps.attention_rollout(vit, x, "median")
    with pytest.raises(ValueError, match="discard_ratio"):
        maps.attention_rollout(vit, x, "mean", 1.0)


def test_discarding_zeroes_the_weakest_share_of_each_row_but_never_the_cls_column():
    weights = torch.tensor([[[0.05, 0.1, 0.2, 0.3, 0.35]] * 5])  # (1, 5, 5)
    kept = maps._discard_lowest(weights, 0.5)  # 2 of the 4 patch columns
    assert torch.equal(kept[0, 0], torch.tensor([0.05, 0.0, 0.0, 0.3, 0.35]))


def test_patch_tokens_are_the_normed_last_layer_tokens_on_the_grid(vit, x):
    tokens = maps.patch_tokens(vit, x)
    assert tokens.shape == (2, 4, 4, 48)
    assert torch.allclose(tokens.reshape(2, 16, 48), vit.forward_features(x)[:, 1:])


def test_register_tokens_are_left_out_of_maps_and_kept_through_export(tmp_path, x):
    from dinotwins.models.export import export_backbone
    from dinotwins.models.load import load_model

    torch.manual_seed(0)
    cfg = ModelConfig(image_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, drop_path_rate=0.0,
                      reg_tokens=4)
    vit = create_backbone(cfg).eval()
    assert vit.num_prefix_tokens == 5
    assert torch.allclose(maps.cls_attention(vit, x).flatten(2), maps.attention_weights(vit, x, [-1])[-1][:, :, 0, 5:])
    assert maps.attention_rollout(vit, x, discard_ratio=0.5).shape == (2, 4, 4)
    assert torch.allclose(maps.patch_tokens(vit, x).reshape(2, 16, 48), vit.forward_features(x)[:, 5:])
    kept = maps._discard_lowest(torch.tensor([[[0.01, 0.02, 0.1, 0.2, 0.3, 0.37]] * 6]), 0.5, prefix=2)
    assert torch.equal(kept[0, 0], torch.tensor([0.01, 0.02, 0.0, 0.0, 0.3, 0.37]))  # registers never dropped
    export_backbone(vit, cfg, tmp_path / "m.safetensors", method="dino", data="synthetic", steps=0)
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.config.reg_tokens == 4
    assert torch.allclose(maps.cls_attention(loaded.backbone, x), maps.cls_attention(vit, x), atol=1e-6)


def test_a_backbone_without_position_embedding_sees_patches_as_a_set_and_keeps_it_through_export(tmp_path, x):
    from dinotwins.models.export import export_backbone
    from dinotwins.models.load import load_model

    torch.manual_seed(0)
    cfg = ModelConfig(image_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, drop_path_rate=0.0,
                      pos_embed="none")
    vit = create_backbone(cfg).eval()
    assert vit.pos_embed is None and "pos_embed" not in vit.state_dict()
    # with no position in the tokens, moving the patches moves the CLS attention with them and leaves the CLS alone
    flipped = x.flip(-1).reshape(2, 3, 32, 4, 8).flip(-2).reshape(2, 3, 32, 32).flip(-1)  # whole 8 px patches swapped
    assert torch.allclose(maps.cls_attention(vit, flipped), maps.cls_attention(vit, x).flip(-1), atol=1e-5)
    assert torch.allclose(vit(flipped), vit(x), atol=1e-5)
    export_backbone(vit, cfg, tmp_path / "m.safetensors", method="dino", data="synthetic", steps=0)
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.config.pos_embed == "none"
    assert torch.allclose(maps.cls_attention(loaded.backbone, x), maps.cls_attention(vit, x), atol=1e-6)
