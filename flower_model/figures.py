"""Pictures for people: training curves, confusion matrix with counts, misclassified photos."""

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or CI
import matplotlib.pyplot as plt  # noqa: E402

from flower_model.io_utils import atomic_path  # noqa: E402

DPI = 110
# PNG metadata without the matplotlib version: the same figure gives the same bytes everywhere.
PNG_METADATA = {"Software": None}


def save_figure(figure, target: Path) -> None:
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI, metadata=PNG_METADATA)
    plt.close(figure)


def _column(rows: list[dict[str, str]], key: str) -> tuple[list[int], list[float]]:
    picked = [(int(row["epoch"]), float(row[key])) for row in rows if row.get(key)]
    return [epoch for epoch, _ in picked], [value for _, value in picked]


def training_curves(epochs_csv: Path, target: Path) -> None:
    """Loss and accuracy per epoch, train against validation."""
    rows = list(csv.DictReader(epochs_csv.open()))
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train/epoch_loss", "train"), ("val/loss", "val")):
        loss_axis.plot(*_column(rows, key), marker="o", markersize=3, label=label)
    for key, label in (("train/acc", "train"), ("val/acc", "val")):
        acc_axis.plot(*_column(rows, key), marker="o", markersize=3, label=label)
    loss_axis.set(title="loss", xlabel="epoch")
    acc_axis.set(title="accuracy", xlabel="epoch", ylim=(0, 1))
    for axis in (loss_axis, acc_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    save_figure(figure, target)
