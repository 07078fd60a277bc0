"""The layout of the processed folder (`paths.processed_dir`): the file names preprocess writes
and later stages read, and the readers that check what they read. Its own module so those stages
depend on the names, not on preprocess.

A processed folder edited by hand or by another tool (garbage in manifest.csv or classes.json, an
image array of the wrong rank, labels beyond the class list) is one line naming the file and the
fix, before any work, never a traceback from deep inside training or evaluation.
"""

import csv
import json
from pathlib import Path

import numpy as np

from flower_model.io_utils import damaged, load_array

CLASSES_FILE = "classes.json"
MANIFEST_FILE = "manifest.csv"
MIN_CLASSES = 2  # a classifier needs two classes to tell apart
IMAGE_RANK = 4  # [N, H, W, 3]
RGB_CHANNELS = 3
MANIFEST_COLUMNS = ("split", "file")


def images_path(processed: Path, split: str) -> Path:
    return processed / f"{split}_images.npy"


def labels_path(processed: Path, split: str) -> Path:
    return processed / f"{split}_labels.npy"


def reviewed_labels_path(processed: Path) -> Path:
    """The test split's labels after the label reviews (-1: excluded); data/reviews.py."""
    return processed / "test_reviewed_labels.npy"


def read_classes(processed: Path) -> list[str]:
    """classes.json: a list of at least MIN_CLASSES distinct names."""
    path = processed / CLASSES_FILE
    try:
        classes = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as error:
        raise damaged(path, error) from None
    valid = isinstance(classes, list) and all(isinstance(name, str) for name in classes)
    if not valid or len(set(classes)) != len(classes) or len(classes) < MIN_CLASSES:
        raise damaged(path, f"not a list of {MIN_CLASSES}+ distinct class names")
    return classes


def read_split(
    processed: Path, split: str, num_classes: int, mmap: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, H, W, 3], integer labels [N] in 0..num_classes-1) of `split`."""
    images_file, labels_file = images_path(processed, split), labels_path(processed, split)
    images, labels = load_array(images_file, mmap=mmap), load_array(labels_file)
    if images.dtype != np.uint8 or images.ndim != IMAGE_RANK or images.shape[-1] != RGB_CHANNELS:
        raise damaged(images_file, f"{images.dtype} array of shape {images.shape}, not [N,H,W,3]")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0] or labels.dtype.kind not in "iu":
        raise damaged(labels_file, f"not {images.shape[0]} integer labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise damaged(labels_file, f"labels outside 0..{num_classes - 1} (classes.json)")
    return images, labels


def read_manifest_files(processed: Path, split: str) -> list[str]:
    """The file names of `split` in manifest order."""
    path = processed / MANIFEST_FILE
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise damaged(path, error) from None
    if not rows or any(column not in rows[0] for column in MANIFEST_COLUMNS):
        raise damaged(path, f"no {', '.join(MANIFEST_COLUMNS)} columns")
    return [row["file"] for row in rows if row["split"] == split]
