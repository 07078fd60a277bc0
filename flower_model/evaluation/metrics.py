"""Classification metrics of the evaluated backends: torchmetrics, the same definitions training
logs (one macro-F1 everywhere), plus McNemar's test (scipy's exact binomial test), which
torchmetrics does not have."""

import numpy as np
import torch
from scipy.stats import binomtest
from torchmetrics import Metric
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)
from torchmetrics.wrappers import BootStrapper

CONFIDENCE = 0.95
# Multinomial resampling is the textbook bootstrap: each resample has exactly N photos (the
# Poisson default varies the test-set size).
BOOTSTRAP_SAMPLING = "multinomial"


def _score(metric: Metric, labels: np.ndarray, predictions: np.ndarray) -> torch.Tensor:
    metric.update(torch.as_tensor(predictions), torch.as_tensor(labels))
    return metric.compute()


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    return _score(MulticlassConfusionMatrix(num_classes), labels, predictions).numpy()


def per_class_scores(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int
) -> dict[str, np.ndarray]:
    """Precision, recall and F1 per class (0 where a class is never predicted), and support."""
    scores = {
        name: _score(metric(num_classes, average=None), labels, predictions).numpy()
        for name, metric in (
            ("precision", MulticlassPrecision),
            ("recall", MulticlassRecall),
            ("f1", MulticlassF1Score),
        )
    }
    scores["support"] = np.bincount(labels, minlength=num_classes).astype(float)
    return scores


def accuracy(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    return float(_score(MulticlassAccuracy(num_classes, average="micro"), labels, predictions))


def macro_f1(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    return float(_score(MulticlassF1Score(num_classes, average="macro"), labels, predictions))


def bootstrap_interval(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int, samples: int, seed: int
) -> dict[str, list[float]]:
    """Percentile 95% intervals of accuracy and macro-F1 over resampled test sets (torchmetrics'
    BootStrapper; it draws from torch's global generator, so that is seeded and restored here)."""
    tail = (1 - CONFIDENCE) / 2
    quantiles = torch.tensor([tail, 1 - tail])
    intervals = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, metric in (
            ("accuracy_ci95", MulticlassAccuracy(num_classes, average="micro")),
            ("macro_f1_ci95", MulticlassF1Score(num_classes, average="macro")),
        ):
            bootstrap = BootStrapper(
                metric,
                num_bootstraps=samples,
                mean=False,
                std=False,
                quantile=quantiles,
                sampling_strategy=BOOTSTRAP_SAMPLING,
            )
            bounds = _score(bootstrap, labels, predictions)["quantile"]
            intervals[name] = [round(float(value), 6) for value in bounds]
    return intervals


def mcnemar(labels: np.ndarray, first: np.ndarray, second: np.ndarray) -> dict[str, float]:
    """Exact (binomial) McNemar test: do two classifiers err on different test photos?"""
    first_right, second_right = first == labels, second == labels
    only_first = int((first_right & ~second_right).sum())
    only_second = int((~first_right & second_right).sum())
    discordant = only_first + only_second
    # Under the null hypothesis each discordant photo is equally likely to favour either model.
    p_value = float(binomtest(only_first, discordant, 0.5).pvalue) if discordant else 1.0
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
    scores = per_class_scores(labels, predictions, num_classes)
    return {
        "accuracy": round(accuracy(labels, predictions, num_classes), 6),
        "macro_f1": round(macro_f1(labels, predictions, num_classes), 6),
        **bootstrap_interval(labels, predictions, num_classes, samples, seed),
        "per_class": {
            name: {
                key: round(float(scores[key][i]), 6)
                for key in ("precision", "recall", "f1", "support")
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(labels, predictions, num_classes).tolist(),
    }
