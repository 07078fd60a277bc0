"""Evaluation pictures: confusion matrix with counts, misclassified photos."""

from pathlib import Path

import numpy as np

from flower_model.figures import plt, save_figure

# 3 columns keep the gallery under 600 px wide, so two revisions fit side by side in
# `dvc plots diff`'s 1280 px page (6 columns were 1452 px and the last was cut off even alone);
# each title holds file name, truth and prediction above its photo (it overlapped the photo above).
GALLERY_COLUMNS = 3
CONFUSION_INCHES = (5.2, 4.4)  # 572 x 484 px: two revisions side by side fit the page too
TILE_INCHES = (1.8, 2.4)  # width, height of one photo with its three-line title (at 110 dpi)
FILE_NAME_CHARS = 22


def confusion_figure(
    labels: np.ndarray, predictions: np.ndarray, class_names: list[str], target: Path
) -> None:
    """Confusion matrix with the count written in every cell (rows: actual, columns: predicted)."""
    count = len(class_names)
    matrix = np.zeros((count, count), dtype=int)
    np.add.at(matrix, (labels, predictions), 1)
    figure, axis = plt.subplots(figsize=CONFUSION_INCHES)
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis, fraction=0.046)
    threshold = matrix.max() / 2
    for row in range(count):
        for column in range(count):
            colour = "white" if matrix[row, column] > threshold else "black"
            axis.text(column, row, str(matrix[row, column]), ha="center", va="center", color=colour)
    axis.set_xticks(range(count), class_names, rotation=30, ha="right")
    axis.set_yticks(range(count), class_names)
    axis.set(xlabel="predicted", ylabel="actual", title=f"test confusion matrix (n={len(labels)})")
    figure.tight_layout()
    save_figure(figure, target)


def photo_gallery(
    images: np.ndarray, titles: list[str], title: str, empty: str, target: Path
) -> None:
    """Photos in GALLERY_COLUMNS columns, each under its (three-line) title."""
    columns = GALLERY_COLUMNS
    rows = max(1, -(-len(titles) // columns))
    width, height = TILE_INCHES
    figure, axes = plt.subplots(
        rows, columns, figsize=(columns * width, rows * height), squeeze=False
    )
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, text in zip(axes.flat, images, titles):
        axis.imshow(image)
        axis.set_title(text, fontsize=8, color="firebrick")
    if not titles:
        axes.flat[0].set_title(empty)
    figure.suptitle(title)
    figure.tight_layout()
    save_figure(figure, target)


def short_file_name(file: str) -> str:
    return file.rsplit("/", 1)[-1][:FILE_NAME_CHARS]


def errors_gallery(
    images: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: list[str],
    files: list[str],
    limit: int,
    target: Path,
) -> None:
    """The most confident mistakes first: photo, true and predicted label, confidence."""
    predictions = probs.argmax(axis=1)
    wrong = np.flatnonzero(predictions != labels)
    wrong = wrong[np.argsort(-probs[wrong, predictions[wrong]], kind="stable")][:limit]
    titles = [
        f"{short_file_name(files[index])}\n"
        f"true {class_names[labels[index]]}\n"
        f"predicted {class_names[predictions[index]]} {probs[index, predictions[index]]:.0%}"
        for index in wrong
    ]
    photo_gallery(
        images[wrong],
        titles,
        f"misclassified test photos ({len(wrong)} shown, most confident first)",
        "no misclassified test photos",
        target,
    )
