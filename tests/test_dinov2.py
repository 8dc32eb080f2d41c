"""DINOv2's ingredients: KoLeo, Sinkhorn-Knopp and iBOT's loss against references written here from the papers'
formulas, their invariances, packed crops against separate passes, and the options wired into the objectives."""

import contextlib
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from dinotwins.errors import UserError
from dinotwins.models.backbone import create_backbone
from dinotwins.models.config import ModelConfig
from dinotwins.models.tokens import embed_tokens, packed_forward, run_blocks
from dinotwins.objectives import METHODS
from dinotwins.objectives.dinov2 import ibot_loss, koleo_loss, random_patch_masks, sinkhorn_knopp
from tests.conftest import torchrun
from tests.test_model_api import TEMP, build, floats


# ------------------------------------------------------------------------------------------------- KoLeo
def koleo_reference(x: torch.Tensor, eps: float = 1e-8) -> float:
    """-1/n sum_i log(min_{j != i} ||x_i/|x_i| - x_j/|x_j||| + eps), one pair at a time."""
    unit = [row / row.norm() for row in x.double()]
    total = 0.0
    for i, a in enumerate(unit):
        nearest = min((a - b).norm().item() for j, b in enumerate(unit) if j != i)
        total += math.log(nearest + eps)
    return -total / len(unit)


@pytest.mark.parametrize("n,d", [(2, 3), (7, 5), (16, 32)])
def test_koleo_is_the_mean_negative_log_distance_to_the_nearest_neighbour(n, d):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(n))
    assert koleo_loss(x).item() == pytest.approx(koleo_reference(x), rel=1e-5)


def test_koleo_ignores_scale_and_order_and_rewards_spread():
    x = torch.randn(9, 4, generator=torch.Generator().manual_seed(0))
    assert koleo_loss(3.0 * x).item() == pytest.approx(koleo_loss(x).item(), rel=1e-6)
    assert koleo_loss(x[torch.randperm(9)]).item() == pytest.approx(koleo_loss(x).item(), rel=1e-6)
    crowded = x + 20.0 * torch.ones(4)  # every point near the same direction
    assert koleo_loss(crowded).item() > koleo_loss(x).item()


# ------------------------------------------------------------------------------------------------- Sinkhorn-Knopp
def sinkhorn_reference(logits: torch.Tensor, temperature: float, iterations: int = 3) -> torch.Tensor:
    """SwAV's Sinkhorn-Knopp as DINOv2 writes it: Q = exp(s / T)^T normalized to sum 1, then per iteration rows
    (prototypes) to 1/K and columns (samples) to 1/B; Q * B, transposed."""
    q = torch.exp(logits.double() / temperature).T
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).T


@pytest.mark.parametrize("b,k,temperature", [(8, 4, 0.1), (16, 32, 0.07), (5, 64, 0.04)])
def test_sinkhorn_knopp_is_three_iterations_of_alternating_normalization(b, k, temperature):
    logits = torch.randn(b, k, generator=torch.Generator().manual_seed(k))
    torch.testing.assert_close(sinkhorn_knopp(logits, temperature).double(), sinkhorn_reference(logits, temperature),
                               rtol=1e-4, atol=1e-5)  # float32 against float64: the tiny entries differ most


def test_sinkhorn_knopp_targets_are_distributions_that_share_the_prototypes_and_ignore_a_shift():
    logits = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    q = sinkhorn_knopp(logits, 0.1)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(32))
    converged = sinkhorn_knopp(logits, 0.1, iterations=200)  # the fixed point: every prototype gets B / K of the batch
    torch.testing.assert_close(converged.sum(dim=0), torch.full((8,), 32 / 8), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(sinkhorn_knopp(logits + 5.0, 0.1), q)


# ------------------------------------------------------------------------------------------------- iBOT
def test_ibot_loss_is_the_masked_cross_entropy_weighted_per_image():
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(3, 2, 2, dtype=torch.bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # image 0: two masked patches
    masks[2, 0, 1] = True  # image 1: none; image 2: one
    student, teacher = torch.randn(3, 6, generator=g), F.softmax(torch.randn(3, 6, generator=g), dim=-1)
    ce = [-(teacher[m] * F.log_softmax(student[m] / 0.1, dim=-1)).sum().item() for m in range(3)]
    expected = ((ce[0] + ce[1]) / 2 + ce[2] / 1) / 3  # per image: mean over its patches; then over the 3 images
    assert ibot_loss(student, teacher, masks, 0.1).item() == pytest.approx(expected, rel=1e-6)


def test_random_patch_masks_mask_the_given_share_of_every_view_reproducibly():
    first = random_patch_masks(6, (4, 5), 0.3, torch.Generator().manual_seed(1))
    assert first.shape == (6, 4, 5) and (first.flatten(1).sum(1) == 6).all()
    assert torch.equal(first, random_patch_masks(6, (4, 5), 0.3, torch.Generator().manual_seed(1)))
    assert (random_patch_masks(2, (2, 2), 0.01).flatten(1).sum(1) == 1).all()  # at least one patch


# ------------------------------------------------------------------------------------------------- packing
@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return create_backbone(ModelConfig(image_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=3,
                                       drop_path_rate=0.0)).eval()


def test_the_two_halves_of_the_forward_pass_are_forward_features(vit):
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(run_blocks(vit, embed_tokens(vit, x)), vit.forward_features(x))


@pytest.mark.parametrize("fused", [False, True], ids=["explicit", "sdpa"])
def test_packed_crops_give_the_tokens_of_one_pass_per_crop_size(vit, fused):
    for block in vit.blocks:
        block.attn.fused_attn = fused
    batch = 3
    global_views, local_views = torch.randn(2 * batch, 3, 16, 16), torch.randn(4 * batch, 3, 8, 8)
    packed = packed_forward(vit, [global_views, local_views], batch)
    torch.testing.assert_close(packed[0], vit.forward_features(global_views), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(packed[1], vit.forward_features(local_views), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_packed_crops_give_the_loss_and_gradients_of_separate_passes(method):
    torch.manual_seed(0)
    ssl = build(method, dino={"koleo_weight": 0.1})
    twin = copy.deepcopy(ssl)
    views = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    local = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    separate_loss, separate_logs = ssl.compute_gradients(ssl.student, views, local, TEMP)
    packed_loss, packed_logs = twin.compute_gradients(twin.student, views, local, TEMP, packed=True)
    assert packed_loss.item() == pytest.approx(separate_loss.item(), rel=1e-5)
    assert floats(packed_logs) == pytest.approx(floats(separate_logs), rel=1e-4, abs=1e-6)
    largest = max(p.grad.abs().max().item() for p in ssl.student.parameters())  # rounding scales with the largest
    for (name, p), q in zip(ssl.student.named_parameters(), twin.student.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5 * largest, msg=name)


def test_timing_packed_against_separate_crops_leaves_the_objective_untouched():
    from dinotwins.training.crop_packing import packed_is_faster

    torch.manual_seed(0)
    ssl = build("dino")
    before = {k: v.clone() for k, v in ssl.state_dict().items()}
    views = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    local = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    assert packed_is_faster(ssl, views, local, TEMP, contextlib.nullcontext) in (True, False)
    after = ssl.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights, teacher, DINO center
    assert all(p.grad is None for p in ssl.student.parameters())


@pytest.mark.parametrize("faster", [True, False])
def test_packed_crops_auto_keeps_the_measured_choice_in_the_run_config(tmp_path, monkeypatch, faster):
    import yaml

    from dinotwins.training import trainer
    from tests.conftest import smoke_config

    asked = []
    monkeypatch.setattr(trainer, "packed_is_faster", lambda *a, **k: asked.append(1) or faster)
    run = trainer.train(smoke_config("dino", packed_crops="auto"), tmp_path / "run", progress=False)
    assert asked == [1]
    assert yaml.safe_load((run / "config.yaml").read_text())["packed_crops"] is faster


def test_packed_crops_takes_only_true_false_or_auto():
    from tests.conftest import smoke_config

    assert smoke_config("dino", packed_crops="auto").packed_crops == "auto"
    assert smoke_config("dino", packed_crops=True).packed_crops is True
    with pytest.raises(UserError, match="packed_crops must be true, false or auto"):
        smoke_config("dino", packed_crops="sometimes")
    with pytest.raises(UserError, match="packed_crops"):
        smoke_config("dino", packed_crops=3)


# ------------------------------------------------------------------------------------------------- in the objectives
@pytest.mark.parametrize("method", ["dino", "hybrid"])
def test_every_ingredient_on_logs_its_term_and_splits_by_resolution_like_one_backward(method):
    settings = dict(dino={"koleo_weight": 0.1, "centering": "sinkhorn_knopp"}, ibot={"weight": 1.0, "mask_ratio": 0.4},
                    model={"drop_path_rate": 0.0})
    torch.manual_seed(0)
    ssl = build(method, **settings)
    twin = copy.deepcopy(ssl)
    assert "student.ibot_head.mask_token" in ssl.state_dict() and "teacher.ibot_head.head.last_layer" in ssl.state_dict()
    views = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    local = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    torch.manual_seed(1)  # the same iBOT masks in both
    split_loss, split_logs = ssl.compute_gradients(ssl.student, views, local, TEMP)
    torch.manual_seed(1)
    joint_loss, joint_logs = twin.compute_gradients(twin.student, views, local, TEMP, per_resolution=False)
    assert {"loss_koleo", "loss_ibot"} <= set(split_logs)
    assert split_loss.item() == pytest.approx(joint_loss.item(), rel=1e-6)
    largest = max(p.grad.abs().max().item() for p in ssl.student.parameters())
    for (name, p), q in zip(ssl.student.named_parameters(), twin.student.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6 * largest, msg=name)
    assert ssl.student.ibot_head.mask_token.grad.abs().sum() > 0  # the mask token learns
    assert torch.equal(ssl.center.center, torch.zeros_like(ssl.center.center))  # Sinkhorn-Knopp: no EMA center


def test_ibot_term_is_the_weighted_masked_loss_and_the_koleo_term_its_weight():
    torch.manual_seed(0)
    base = build("dino", model={"drop_path_rate": 0.0})
    views = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    plain, _ = copy.deepcopy(base).compute_gradients(base.student, views, [], TEMP)
    with_koleo = build("dino", model={"drop_path_rate": 0.0}, dino={"koleo_weight": 0.5})
    with_koleo.load_state_dict(base.state_dict())
    loss, logs = with_koleo.compute_gradients(with_koleo.student, views, [], TEMP)
    assert loss.item() == pytest.approx(plain.item() + 0.5 * float(logs["loss_koleo"]), rel=1e-5)


def test_the_default_settings_leave_the_objective_as_it_was():
    assert "loss_koleo" not in build("dino").compute_gradients(build("dino").student,
                                                                 [torch.randn(2, 3, 16, 16)] * 2, [], TEMP)[1]
    assert not any("ibot" in key for key in build("hybrid").state_dict())


@pytest.mark.parametrize("setting,needle", [({"dino": {"centering": "median"}}, "dino.centering"),
                                            ({"dino": {"koleo_weight": -1}}, "dino.koleo_weight"),
                                            ({"ibot": {"mask_ratio": 1.5}}, "ibot.mask_ratio"),
                                            ({"ibot": {"weight": -0.1}}, "ibot.weight")])
def test_bad_ingredient_settings_are_one_line_errors(setting, needle):
    with pytest.raises(UserError, match=needle):
        build("dino", **setting)


@pytest.mark.slow
def test_koleo_and_sinkhorn_knopp_under_torchrun_see_the_global_batch():
    r = torchrun("tests/ddp_dinov2_worker.py")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "global batch" in r.stdout


def test_dinov2_options_train_end_to_end(tmp_path):
    from dinotwins.training.trainer import train
    from tests.conftest import smoke_config

    cfg = smoke_config("hybrid", packed_crops=True, dino={"koleo_weight": 0.1, "centering": "sinkhorn_knopp"},
                       ibot={"weight": 1.0})
    run = train(cfg, tmp_path / "run", progress=False)
    rows = [line for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all('"loss_ibot"' in r and '"loss_koleo"' in r for r in rows)
