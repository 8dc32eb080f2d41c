"""Schedules at known points; the EMA update at its limits; the DINO center."""

import pytest
import torch
from torch import nn

from dinotwins.objectives.dino import Center
from dinotwins.objectives.ema import ema_update
from dinotwins.schedules import cosine, linear_warmup, scaled_lr
from dinotwins.training.trainer import Trainer
from tests.conftest import smoke_config


def test_cosine_schedule_at_known_points():
    assert cosine(0, 100, 1.0, 0.0) == pytest.approx(1.0)
    assert cosine(50, 100, 1.0, 0.0) == pytest.approx(0.5)
    assert cosine(100, 100, 1.0, 0.0) == pytest.approx(0.0)
    assert cosine(1000, 100, 1.0, 0.0) == pytest.approx(0.0)  # clamps past the end


def test_cosine_schedule_warms_up_linearly_then_decays():
    assert cosine(0, 110, 1.0, 0.0, warmup_steps=10) == 0.0
    assert cosine(5, 110, 1.0, 0.0, warmup_steps=10) == pytest.approx(0.5)
    assert cosine(10, 110, 1.0, 0.0, warmup_steps=10) == pytest.approx(1.0)
    assert cosine(60, 110, 1.0, 0.0, warmup_steps=10) == pytest.approx(0.5)


def test_teacher_momentum_goes_from_0996_to_1():
    assert cosine(0, 1000, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine(1000, 1000, 0.996, 1.0) == pytest.approx(1.0)


def test_teacher_temperature_warms_up_from_004_to_007():
    assert linear_warmup(0, 30, 0.04, 0.07) == pytest.approx(0.04)
    assert linear_warmup(15, 30, 0.04, 0.07) == pytest.approx(0.055)
    assert linear_warmup(30, 30, 0.04, 0.07) == pytest.approx(0.07)
    assert linear_warmup(99, 30, 0.04, 0.07) == pytest.approx(0.07)


def test_lr_scales_linearly_with_batch_size():
    assert scaled_lr(5e-4, 256) == pytest.approx(5e-4)
    assert scaled_lr(5e-4, 64) == pytest.approx(1.25e-4)


def _pair():
    torch.manual_seed(0)
    return nn.Linear(4, 3), nn.Linear(4, 3)


def test_ema_with_momentum_0_copies_the_student():
    teacher, student = _pair()
    ema_update(teacher, student, 0.0)
    for t, s in zip(teacher.parameters(), student.parameters()):
        assert torch.equal(t, s)


def test_ema_with_momentum_1_leaves_the_teacher():
    teacher, student = _pair()
    before = [p.clone() for p in teacher.parameters()]
    ema_update(teacher, student, 1.0)
    for t, b in zip(teacher.parameters(), before):
        assert torch.equal(t, b)


def test_ema_mixes_at_intermediate_momentum():
    teacher, student = _pair()
    expected = [0.9 * t + 0.1 * s for t, s in zip(teacher.parameters(), student.parameters())]
    ema_update(teacher, student, 0.9)
    for t, e in zip(teacher.parameters(), expected):
        assert torch.allclose(t, e)


def test_center_is_an_ema_of_the_teacher_batch_mean():
    center = Center(3, momentum=0.9)
    center.update([torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[3.0, 2.0, 1.0]])])
    assert torch.allclose(center.center, torch.tensor([[0.2, 0.2, 0.2]]))


def test_dino_last_layer_stays_frozen_for_a_tenth_of_a_short_run_then_learns(tmp_path):
    """freeze_last_layer_epochs is clipped to a tenth of the run: 1 epoch of a 20-step run freezes 2 steps."""
    cfg = smoke_config("dino", epochs=10, max_steps=20, dino={"freeze_last_layer_epochs": 1000.0})
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    assert trainer.objective.freeze_last_layer_steps(trainer.length) == 2
    last_layer = trainer.objective.student.dino_head.last_layer
    changed = []
    for step in range(3):
        before = last_layer.detach().clone()
        trainer.train_step(trainer.batch(step), step)
        changed.append(not torch.equal(before, last_layer.detach()))
    assert changed == [False, False, True]
