"""The layout of the processed folder (`paths.processed_dir`): the file names preprocess writes
and later stages read. Its own module so those stages depend on the names, not on preprocess."""

from pathlib import Path

CLASSES_FILE = "classes.json"
MANIFEST_FILE = "manifest.csv"


def images_path(processed: Path, split: str) -> Path:
    return processed / f"{split}_images.npy"


def labels_path(processed: Path, split: str) -> Path:
    return processed / f"{split}_labels.npy"
