"""Label-fraction split (class-balanced, seeded) and the linear probe on frozen features."""

import numpy as np
import pytest

from dinotwins.errors import UserError
from dinotwins.evaluation.probe import label_fraction_split, linear_probe

LABELS = np.repeat([0, 1, 2], [100, 50, 7])


def test_label_fraction_split_keeps_the_fraction_of_every_class_and_at_least_one():
    chosen = label_fraction_split(LABELS, 0.1, seed=0)
    assert np.bincount(LABELS[chosen]).tolist() == [10, 5, 1]  # 0.7 rounds to 1
    assert np.bincount(LABELS[label_fraction_split(LABELS, 0.01, seed=0)]).tolist() == [1, 1, 1]
    assert len(np.unique(chosen)) == len(chosen) and np.all(np.diff(chosen) > 0)


def test_label_fraction_split_is_seeded():
    assert np.array_equal(label_fraction_split(LABELS, 0.1, seed=3), label_fraction_split(LABELS, 0.1, seed=3))
    assert not np.array_equal(label_fraction_split(LABELS, 0.1, seed=3), label_fraction_split(LABELS, 0.1, seed=4))


def test_label_fraction_one_takes_every_index():
    assert np.array_equal(label_fraction_split(LABELS, 1.0, seed=5), np.arange(len(LABELS)))


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_label_fraction_outside_zero_one_is_a_user_error(fraction):
    with pytest.raises(UserError, match="label fraction"):
        label_fraction_split(LABELS, fraction, seed=0)


def _clusters(n_per_class: int, num_classes: int, seed: int, spread: float = 0.3):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), n_per_class)
    centres = 3 * np.eye(num_classes)  # one direction per class
    return (centres[labels] + spread * rng.normal(size=(len(labels), num_classes))).astype(np.float32), labels


@pytest.mark.parametrize("n_per_class", [20, 200])  # 2 labeled per class (C = 1), 20 per class (C from the grid)
def test_linear_probe_separates_separable_clusters(n_per_class):
    train, train_labels = _clusters(n_per_class, 6, seed=0)
    test, test_labels = _clusters(30, 6, seed=1)
    assert linear_probe(train, train_labels, test, test_labels, label_fraction=0.1, seed=0) == (1.0, 1.0)


def test_linear_probe_with_one_labeled_class_predicts_it():
    train, test = np.random.default_rng(0).normal(size=(2, 10, 4))
    top1, top5 = linear_probe(train, np.zeros(10, int), test, np.array([0] * 5 + [1] * 5), label_fraction=0.5)
    assert (top1, top5) == (0.5, 1.0)


def test_a_fixed_c_skips_the_held_out_choice(monkeypatch):
    from dinotwins.evaluation import probe

    train, train_labels = _clusters(200, 6, seed=0, spread=2.0)  # overlapping: the regularization shows
    test, test_labels = _clusters(100, 6, seed=1, spread=2.0)
    args = (train, train_labels, test, test_labels)
    chosen = linear_probe(*args, label_fraction=0.1, seed=0)
    per_c = {c: linear_probe(*args, label_fraction=0.1, seed=0, c=c) for c in (1e-4, *probe.C_GRID)}
    assert chosen in [per_c[c] for c in probe.C_GRID] and per_c[1e-4] != per_c[1.0]
    monkeypatch.setattr(probe, "_choose_c", lambda *a: pytest.fail("a fixed C is not chosen again"))
    assert linear_probe(*args, label_fraction=0.1, seed=0, c=1.0) == per_c[1.0]
