"""The objectives against references written here from the papers' pseudocode."""

import math

import pytest
import torch

from dinotwins.objectives.losses import (barlow_twins_loss, cross_correlation, dino_cross_entropy_sum, dino_loss,
                                         dino_pair_count, dino_teacher_probs, hybrid_loss)


def reference_dino(student_out, teacher_out, center, student_temp, teacher_temp):
    """DINO Algorithm 1 / DINOLoss.forward, written out pair by pair."""
    total, n = 0.0, 0
    for iq, t in enumerate(teacher_out):
        q = torch.softmax((t - center) / teacher_temp, dim=-1)
        for v, s in enumerate(student_out):
            if v == iq:
                continue
            total += (-(q * torch.log_softmax(s / student_temp, dim=-1)).sum(-1)).mean()
            n += 1
    return total / n


def reference_barlow(z1, z2, lambd):
    """Barlow Twins Algorithm 1: normalize along the batch, c = z1_norm.T @ z2_norm / N."""
    n = z1.shape[0]
    z1n = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + 1e-5)
    z2n = (z2 - z2.mean(0)) / torch.sqrt(z2.var(0, unbiased=False) + 1e-5)
    c = z1n.T @ z2n / n
    on = ((torch.diagonal(c) - 1) ** 2).sum()
    off = (c ** 2).sum() - (torch.diagonal(c) ** 2).sum()
    return on + lambd * off


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("n_local", [0, 3])
@pytest.mark.parametrize("temps", [(0.1, 0.04), (0.2, 0.07)])
def test_dino_loss_matches_reference(batch, n_local, temps):
    g = torch.Generator().manual_seed(batch * 10 + n_local)
    K = 17
    student = [torch.randn(batch, K, generator=g) for _ in range(2 + n_local)]
    teacher = [torch.randn(batch, K, generator=g) for _ in range(2)]
    center = torch.randn(1, K, generator=g)
    got = dino_loss(student, teacher, center, *temps)
    assert torch.allclose(got, reference_dino(student, teacher, center, *temps), atol=1e-6)


def test_dino_loss_pairs_each_teacher_view_only_with_other_student_views():
    K = 4
    same = torch.tensor([[10.0, 0, 0, 0]])
    other = torch.tensor([[0, 10.0, 0, 0]])
    # teacher view 0 confident in class 0, student view 0 agrees, student view 1 disagrees.
    loss = dino_loss([same, other], [same], torch.zeros(1, K), 0.1, 0.04)
    # only the (teacher 0, student 1) pair counts, and it is a confident disagreement
    assert loss.item() > 50


def test_dino_loss_is_ln_k_for_uniform_outputs():
    K = 64
    zeros = [torch.zeros(3, K) for _ in range(4)]
    loss = dino_loss(zeros, zeros[:2], torch.zeros(1, K), 0.1, 0.04)
    assert loss.item() == pytest.approx(math.log(K), rel=1e-6)


def test_dino_loss_gives_the_teacher_no_gradient():
    student = [torch.randn(2, 8, requires_grad=True) for _ in range(3)]
    teacher = [torch.randn(2, 8, requires_grad=True) for _ in range(2)]
    dino_loss(student, teacher, torch.zeros(1, 8), 0.1, 0.04).backward()
    assert all(t.grad is None for t in teacher)
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)


def test_dino_loss_refuses_a_single_student_view():
    with pytest.raises(ValueError):
        dino_loss([torch.zeros(2, 4)], [torch.zeros(2, 4)], torch.zeros(1, 4), 0.1, 0.04)


@pytest.mark.parametrize("batch,dim", [(2, 3), (16, 8), (64, 32)])
@pytest.mark.parametrize("lambd", [0.0051, 0.5])
def test_barlow_loss_matches_reference(batch, dim, lambd):
    g = torch.Generator().manual_seed(batch + dim)
    z1, z2 = torch.randn(batch, dim, generator=g), torch.randn(batch, dim, generator=g)
    assert torch.allclose(barlow_twins_loss(z1, z2, lambd), reference_barlow(z1, z2, lambd), rtol=1e-5, atol=1e-5)


def test_barlow_loss_is_unchanged_when_inputs_go_from_x_to_2x_plus_4():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(32, 16, generator=g), torch.randn(32, 16, generator=g)
    assert torch.allclose(barlow_twins_loss(z1, z2, 0.0051), barlow_twins_loss(2 * z1 + 4, 2 * z2 + 4, 0.0051),
                          rtol=1e-4)


def test_barlow_loss_is_near_zero_for_identical_decorrelated_views():
    # Orthogonal columns with zero mean: C is the identity, so both terms vanish.
    q, _ = torch.linalg.qr(torch.randn(64, 8, dtype=torch.float64))
    z = (q - q.mean(0)).float()
    c = cross_correlation(z, z)
    assert torch.allclose(torch.diagonal(c), torch.ones(8), atol=1e-3)
    assert barlow_twins_loss(z, z, 0.0051).item() < 0.05


def test_barlow_loss_refuses_a_batch_of_one():
    with pytest.raises(ValueError):
        barlow_twins_loss(torch.randn(1, 4), torch.randn(1, 4), 0.0051)


def test_hybrid_reduces_to_dino_at_weights_1_0_and_to_barlow_at_0_1():
    dino, barlow = torch.tensor(2.5), torch.tensor(700.0)
    assert hybrid_loss(dino, barlow, 1.0, 0.0, 1 / 2048) == dino
    assert hybrid_loss(dino, barlow, 0.0, 1.0, 1.0) == barlow
    assert hybrid_loss(dino, barlow, 1.0, 1.0, 0.01) == pytest.approx(2.5 + 7.0)


def test_dino_cross_entropy_summed_over_a_split_of_the_student_views_is_the_whole_sum():
    torch.manual_seed(0)
    teacher = [torch.randn(5, 16) for _ in range(2)]
    student = [torch.randn(5, 16) for _ in range(6)]
    probs = dino_teacher_probs(teacher, torch.zeros(16), 0.04)
    whole = dino_cross_entropy_sum(student, probs, 0.1)
    split = dino_cross_entropy_sum(student[:2], probs, 0.1) + dino_cross_entropy_sum(student[2:], probs, 0.1, 2)
    assert split.item() == pytest.approx(whole.item(), rel=1e-6)
    assert dino_pair_count(2, 6) == 10  # 2 x 6 pairs less the 2 where the teacher and student see one view
    assert (whole / 10).item() == pytest.approx(dino_loss(student, teacher, torch.zeros(16), 0.1, 0.04).item())
