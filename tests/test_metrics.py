"""Evaluation maths on hand-checkable inputs (torchmetrics underneath, checked by hand)."""

import math

import numpy as np
import pytest

from flower_model.evaluation.metrics import (
    bootstrap_interval,
    confusion_matrix,
    mcnemar,
    per_class_scores,
    summarise,
)


def test_confusion_and_per_class_scores():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predictions = np.array([0, 0, 1, 1, 2, 2])
    matrix = confusion_matrix(labels, predictions, 3)
    assert matrix.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    scores = per_class_scores(labels, predictions, 3)
    assert np.allclose(scores["precision"], [1.0, 0.5, 0.5])
    assert np.allclose(scores["recall"], [2 / 3, 0.5, 1.0])
    assert np.allclose(scores["f1"], [0.8, 0.5, 2 / 3])
    assert scores["support"].tolist() == [3, 2, 1]


def test_a_class_never_predicted_scores_zero_not_nan():
    scores = per_class_scores(np.array([0, 1, 2]), np.array([0, 1, 1]), 3)
    assert scores["precision"][2] == 0 and scores["f1"][2] == 0
    assert np.isfinite(scores["precision"]).all()


def test_mcnemar_exact_values():
    labels = np.zeros(20, dtype=int)
    first = np.zeros(20, dtype=int)  # always right
    second = np.zeros(20, dtype=int)
    second[:8] = 1  # wrong on 8 photos the first gets right
    result = mcnemar(labels, first, second)
    assert (result["only_first_right"], result["only_second_right"]) == (8, 0)
    assert result["p_value"] == round(2 / 2**8, 6) and result["significant_at_0.05"]
    same = mcnemar(labels, first, first)
    assert same["p_value"] == 1.0 and not same["significant_at_0.05"]


@pytest.mark.parametrize(("only_first", "only_second"), [(0, 1), (3, 9), (12, 12), (25, 4)])
def test_mcnemar_equals_the_binomial_tail_sum(only_first, only_second):
    """Two-sided exact McNemar: twice the smaller binomial(n, 1/2) tail, capped at 1."""
    labels = np.zeros(only_first + only_second, dtype=int)
    first = np.r_[np.zeros(only_first, dtype=int), np.ones(only_second, dtype=int)]
    second = 1 - first
    discordant, smaller = only_first + only_second, min(only_first, only_second)
    tail = sum(math.comb(discordant, k) for k in range(smaller + 1)) / 2**discordant
    assert mcnemar(labels, first, second)["p_value"] == round(min(1.0, 2 * tail), 6)


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate():
    generator = np.random.default_rng(0)
    labels = generator.integers(0, 3, 300)
    predictions = np.where(generator.random(300) < 0.8, labels, (labels + 1) % 3)
    first = bootstrap_interval(labels, predictions, 3, samples=200, seed=5)
    assert first == bootstrap_interval(labels, predictions, 3, samples=200, seed=5)
    low, high = first["accuracy_ci95"]
    assert low < float((labels == predictions).mean()) < high and high - low < 0.15
    assert first != bootstrap_interval(labels, predictions, 3, samples=200, seed=6)


def test_bootstrap_leaves_the_global_torch_generator_alone():
    import torch

    torch.manual_seed(3)
    expected = torch.rand(1)
    torch.manual_seed(3)
    bootstrap_interval(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), 2, samples=20, seed=1)
    assert torch.rand(1) == expected


def test_summarise_reports_every_class():
    probs = np.eye(3)[[0, 1, 2, 2]]
    report = summarise(np.array([0, 1, 2, 1]), probs, ["a", "b", "c"], samples=50, seed=0)
    assert report["accuracy"] == 0.75
    assert set(report["per_class"]) == {"a", "b", "c"}
    assert report["per_class"]["b"]["recall"] == 0.5
    assert report["macro_f1"] == round((1 + 2 / 3 + 2 / 3) / 3, 6)
    assert report["confusion_matrix"] == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
