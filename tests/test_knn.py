"""Weighted k-NN (DINO's protocol): the vote, top-k counting, and the FAISS search around them."""

import math

import numpy as np
import pytest

from dinotwins.evaluation.knn import knn_classify, knn_scores, knn_vote, topk_accuracy

# Four labeled vectors at angles 0, ~37, ~53 and 90 degrees (scaled by 3: the search must L2-normalize).
TRAIN = 3 * np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)
TRAIN_LABELS = np.array([0, 1, 1, 0])
QUERY = np.array([[1.0, 0.0]], dtype=np.float32)  # cosine similarities 1.0, 0.8, 0.6, 0.0


def test_knn_vote_sums_exp_similarity_over_temperature_per_class():
    scores = knn_vote(np.array([[0.9, 0.5, 0.1]]), np.array([[0, 1, 1]]), num_classes=3, temperature=0.1)
    assert scores == pytest.approx(np.array([[math.exp(9), math.exp(5) + math.exp(1), 0.0]]))


@pytest.mark.parametrize("temperature, expected", [
    (0.1, [math.exp(10), math.exp(8) + math.exp(6)]),  # sharp: the single closest neighbour outvotes two
    (1.0, [math.exp(1), math.exp(0.8) + math.exp(0.6)]),  # soft: the two label-1 neighbours win
])
def test_knn_scores_on_four_vectors_match_the_hand_computed_vote(temperature, expected):
    scores = knn_scores(TRAIN, TRAIN_LABELS, QUERY, k=3, temperature=temperature)
    assert scores == pytest.approx(np.array([expected]), rel=1e-5)


def test_knn_classify_top1_follows_the_temperature():
    sharp = knn_classify(TRAIN, TRAIN_LABELS, QUERY, np.array([0]), k=3, temperature=0.1)
    soft = knn_classify(TRAIN, TRAIN_LABELS, QUERY, np.array([0]), k=3, temperature=1.0)
    assert sharp == (1.0, 1.0)
    assert soft == (0.0, 1.0)  # class 0 is second of two: wrong at 1, right at 5


def test_top5_is_perfect_when_there_are_fewer_than_five_classes():
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(30, 8)), rng.normal(size=(10, 8))
    top1, top5 = knn_classify(train, rng.integers(0, 3, 30), test, rng.integers(0, 3, 10), k=5)
    assert 0.0 <= top1 <= 1.0 and top5 == 1.0


def test_classes_no_neighbour_voted_for_are_not_right_by_sort_order():
    # Ten classes, one vote for class 0: the true class 7 ties with eight others at zero.
    scores = np.zeros((1, 10))
    scores[0, 0] = 1.0
    assert topk_accuracy(scores, np.array([7]), 5) == 0.0
    assert topk_accuracy(scores, np.array([0]), 1) == 1.0
    assert topk_accuracy(np.array([[1.0, 1.0, 0.0]]), np.array([0]), 1) == 0.0  # an exact tie is not a win
    assert topk_accuracy(np.array([[1.0, 1.0, 0.0]]), np.array([0]), 2) == 1.0


def test_k_larger_than_the_labeled_pool_uses_every_labeled_vector():
    scores = knn_scores(TRAIN, TRAIN_LABELS, QUERY, k=50, temperature=1.0)
    assert scores.sum() == pytest.approx(math.exp(1) + math.exp(0.8) + math.exp(0.6) + math.exp(0), rel=1e-5)
