"""Classification metrics with numpy only: per-class scores, bootstrap intervals, McNemar's test."""

import math

import numpy as np

CONFIDENCE = 0.95


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def per_class_scores(matrix: np.ndarray) -> dict[str, np.ndarray]:
    true_positive = np.diag(matrix).astype(float)
    predicted = matrix.sum(axis=0).astype(float)
    actual = matrix.sum(axis=1).astype(float)
    precision = np.divide(
        true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0
    )
    recall = np.divide(true_positive, actual, out=np.zeros_like(true_positive), where=actual > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": actual}


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    return float((labels == predictions).mean())


def macro_f1(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    return float(per_class_scores(confusion_matrix(labels, predictions, num_classes))["f1"].mean())


def bootstrap_interval(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int, samples: int, seed: int
) -> dict[str, list[float]]:
    """Percentile 95% intervals of accuracy and macro-F1 over resampled test sets."""
    generator = np.random.default_rng(seed)
    count = len(labels)
    accuracies, f1_scores = np.empty(samples), np.empty(samples)
    for i in range(samples):
        picked = generator.integers(0, count, count)
        accuracies[i] = accuracy(labels[picked], predictions[picked])
        f1_scores[i] = macro_f1(labels[picked], predictions[picked], num_classes)
    tail = (1 - CONFIDENCE) / 2 * 100
    bounds = (tail, 100 - tail)
    return {
        "accuracy_ci95": [round(float(value), 6) for value in np.percentile(accuracies, bounds)],
        "macro_f1_ci95": [round(float(value), 6) for value in np.percentile(f1_scores, bounds)],
    }


def mcnemar(labels: np.ndarray, first: np.ndarray, second: np.ndarray) -> dict[str, float]:
    """Exact (binomial) McNemar test: do two classifiers err on different test photos?"""
    first_right, second_right = first == labels, second == labels
    only_first = int((first_right & ~second_right).sum())
    only_second = int((~first_right & second_right).sum())
    discordant = only_first + only_second
    smaller = min(only_first, only_second)
    tail = (
        sum(math.comb(discordant, k) for k in range(smaller + 1)) / 2**discordant
        if discordant
        else 1.0
    )
    p_value = min(1.0, 2 * tail)
    return {
        "only_first_right": only_first,
        "only_second_right": only_second,
        "p_value": round(p_value, 6),
        "significant_at_0.05": bool(p_value < 1 - CONFIDENCE),
    }


def summarise(
    labels: np.ndarray, probs: np.ndarray, class_names: list[str], samples: int, seed: int
) -> dict:
    """Everything reported for one backend."""
    predictions = probs.argmax(axis=1)
    num_classes = len(class_names)
    matrix = confusion_matrix(labels, predictions, num_classes)
    scores = per_class_scores(matrix)
    return {
        "accuracy": round(accuracy(labels, predictions), 6),
        "macro_f1": round(float(scores["f1"].mean()), 6),
        **bootstrap_interval(labels, predictions, num_classes, samples, seed),
        "per_class": {
            name: {
                key: round(float(scores[key][i]), 6)
                for key in ("precision", "recall", "f1", "support")
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": matrix.tolist(),
    }
