"""Turn the extracted class folders into clean, deduplicated, split, memory-mappable uint8 arrays.

Everything that decides an output is ordered by content or by sorted names, never by directory
listing order or timing, so the same inputs and params give the same bytes on any machine.
"""

import hashlib
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from multiprocessing import get_context, resource_tracker
from multiprocessing.pool import Pool
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from flower_model.config import PreprocessConfig
from flower_model.constants import IMAGE_SUFFIXES, RESOLVED_CONFIG_NAME, SPLITS
from flower_model.data.images import ImageDecodeError, decode_image, resize_image
from flower_model.data.layout import (
    CLASSES_FILE,
    MANIFEST_FILE,
    MIN_CLASSES,
    images_path,
    labels_path,
    reviewed_labels_path,
)
from flower_model.data.reviews import apply_reviews, read_reviews
from flower_model.errors import FlowerModelError
from flower_model.io_utils import atomic_dir, csv_text, write_json, write_text

POOL_CHUNK = 16
DUPLICATE = "duplicate"
CROSS_CLASS_DUPLICATE = "cross_class_duplicate"
OUTSIDE_CLASS_FOLDER = "outside_class_folder"
NON_UTF8_NAME = "non_utf8_name"
NO_CLASS = -1


@dataclass(frozen=True)
class Decoded:
    file: str  # path relative to the dataset folder, POSIX separators
    label: int
    pixel_sha256: str = ""
    image: np.ndarray | None = None
    reason: str = ""
    detail: str = ""


def _seeded_key(seed: int, text: str) -> str:
    return hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()


def printable_name(file: str) -> str:
    """`file` as UTF-8 text: bytes that are not UTF-8 (kept by os.fsdecode as surrogates) are
    written as \\xNN escapes, so a report can name the file it could not use."""
    return file.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _non_utf8(relative: str, label: int) -> Decoded | None:
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError:
        detail = "the file name is not UTF-8 (the manifest could not name it): rename the file"
        return Decoded(printable_name(relative), label, reason=NON_UTF8_NAME, detail=detail)
    return None


def _loose_photos(dataset: Path) -> list[Decoded]:
    """Photos lying beside the class folders: no class to give them, so each is dropped with its
    reason. Other loose files (the dataset's LICENSE.txt, a README) are its documentation."""
    detail = "a photo outside any class folder has no label: move it into <class>/ or delete it"
    return [
        Decoded(printable_name(item.name), NO_CLASS, reason=OUTSIDE_CLASS_FOLDER, detail=detail)
        for item in sorted(dataset.iterdir())
        if item.is_file() and item.suffix.lower() in IMAGE_SUFFIXES
    ]


def list_dataset(
    dataset: Path, config: PreprocessConfig
) -> tuple[list[str], list[tuple[str, int]], list[Decoded]]:
    """Class names (sorted folder names), (relative file, label) pairs in sorted order, and the
    files that cannot be used whatever their content (with their reason)."""
    classes = sorted(item.name for item in dataset.iterdir() if item.is_dir())
    if not classes:
        raise FlowerModelError(
            f"{dataset} has no class folders: it must hold one folder of photos per class "
            "(<class>/*.jpg); rerun `flower-model download` or fix paths.raw_dir"
        )
    if len(classes) < MIN_CLASSES:
        raise FlowerModelError(
            f"{dataset} has one class folder ({classes[0]}): a classifier needs at least "
            f"{MIN_CLASSES}; add a folder of photos per class beside it"
        )
    files, unusable = [], _loose_photos(dataset)
    for label, name in enumerate(classes):
        found = sorted(item for item in (dataset / name).rglob("*") if item.is_file())
        relative = [item.relative_to(dataset).as_posix() for item in found]
        if config.max_images_per_class is not None:
            # A seeded, content-independent subset: representative, and cheap to compute.
            relative = sorted(relative, key=lambda item: _seeded_key(config.seed, item))
            relative = sorted(relative[: config.max_images_per_class])
        for item in relative:
            bad_name = _non_utf8(item, label)
            if bad_name:
                unusable.append(bad_name)
            else:
                files.append((item, label))
    return classes, files, unusable


def _decode(job: tuple[Path, str, int, PreprocessConfig]) -> Decoded:
    dataset, file, label, config = job
    try:
        rgb = decode_image(dataset / file, config.max_image_pixels)
    except ImageDecodeError as error:
        return Decoded(file, label, reason=error.reason, detail=error.detail)
    digest = hashlib.sha256(f"{rgb.shape}".encode() + rgb.tobytes()).hexdigest()
    image = resize_image(rgb, config.image_size, config.resize_mode, config.pad_value)
    return Decoded(file, label, pixel_sha256=digest, image=image)


def _decode_all(
    dataset: Path, files: list[tuple[str, int]], config: PreprocessConfig
) -> Iterator[Decoded]:
    jobs = [(dataset, file, label, config) for file, label in files]
    if config.num_workers <= 1:
        yield from map(_decode, jobs)
        return
    # imap keeps input order, so the result does not depend on which worker finishes first.
    with _worker_pool(config.num_workers) as pool:
        yield from pool.imap(_decode, jobs, chunksize=POOL_CHUNK)


def _worker_pool(processes: int) -> Pool:
    """A spawn pool whose workers never see Ctrl-C: only this process handles it.

    A terminal's Ctrl-C reaches every process of the group. A worker that got it died with
    KeyboardInterrupt, sometimes while holding the task queue's lock, and then the pool's
    terminate() waited for that lock forever (zombie workers, this process on a futex, the
    semaphores never unlinked). So SIGINT is blocked while the workers start (a blocked mask is
    inherited through spawn's fork and exec, and Python leaves it so); a Ctrl-C meanwhile is
    delivered here as soon as it is unblocked, and terminate() then stops the workers itself.
    The resource tracker starts first: starting it unblocks SIGINT again.
    """
    resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        return get_context("spawn").Pool(processes)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def drop_duplicates(decoded: list[Decoded]) -> tuple[list[Decoded], list[Decoded]]:
    """Keep the first of identical images in a class; drop every copy filed under two classes."""
    labels_by_hash: dict[str, set[int]] = defaultdict(set)
    for item in decoded:
        labels_by_hash[item.pixel_sha256].add(item.label)
    kept, dropped, seen = [], [], set()
    for item in decoded:
        if len(labels_by_hash[item.pixel_sha256]) > 1:
            detail = "same pixels filed under several classes; label is ambiguous"
            dropped.append(
                Decoded(
                    item.file, item.label, item.pixel_sha256, None, CROSS_CLASS_DUPLICATE, detail
                )
            )
        elif item.pixel_sha256 in seen:
            dropped.append(
                Decoded(
                    item.file,
                    item.label,
                    item.pixel_sha256,
                    None,
                    DUPLICATE,
                    "same pixels as an earlier file",
                )
            )
        else:
            seen.add(item.pixel_sha256)
            kept.append(item)
    return kept, dropped


def split_stratified(kept: list[Decoded], config: PreprocessConfig) -> dict[str, list[Decoded]]:
    """Per class, order by a seeded hash of the content, then cut test / val / train."""
    by_label: dict[int, list[Decoded]] = defaultdict(list)
    for item in kept:
        by_label[item.label].append(item)
    splits: dict[str, list[Decoded]] = {split: [] for split in SPLITS}
    for label in sorted(by_label):
        items = sorted(
            by_label[label], key=lambda item: _seeded_key(config.seed, item.pixel_sha256)
        )
        n_test = max(1, round(len(items) * config.test_fraction))
        n_val = max(1, round(len(items) * config.val_fraction))
        splits["test"] += items[:n_test]
        splits["val"] += items[n_test : n_test + n_val]
        splits["train"] += items[n_test + n_val :]
    return {
        split: sorted(items, key=lambda item: (item.label, item.file))
        for split, items in splits.items()
    }


def _require_every_class(
    classes: list[str], kept: list[Decoded], failed: list[Decoded], dataset: Path
) -> None:
    """A class left with no usable photo is an error, not a silently smaller problem."""
    counts = Counter(item.label for item in kept)
    empty = [label for label in range(len(classes)) if not counts[label]]
    if empty:
        reasons = Counter(item.reason for item in failed if item.label in empty)
        detail = ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items()))
        names = ", ".join(repr(classes[label]) for label in empty)
        raise FlowerModelError(
            f"class {names} has no readable photo ({detail or 'no files'}): add photos to "
            f"{dataset / classes[empty[0]]} or remove the folder"
        )


def _write_processed(
    processed: Path,
    splits: dict[str, list[Decoded]],
    classes: list[str],
    resolved: dict,
    test_reviewed: list[int],
) -> None:
    """The processed folder, swapped in whole: arrays and labels per split, the test split's
    reviewed labels, the manifest, the class names and the settings they were made with."""
    manifest_rows = []
    with atomic_dir(processed) as staging:
        np.save(reviewed_labels_path(staging), np.array(test_reviewed, dtype=np.int64))
        for split, items in splits.items():
            np.save(images_path(staging, split), np.stack([item.image for item in items]))
            np.save(
                labels_path(staging, split),
                np.array([item.label for item in items], dtype=np.int64),
            )
            manifest_rows += [
                [split, index, item.file, classes[item.label], item.label, item.pixel_sha256]
                for index, item in enumerate(items)
            ]
        header = ["split", "index", "file", "class", "label", "pixel_sha256"]
        (staging / MANIFEST_FILE).write_text(csv_text(header, manifest_rows), encoding="utf-8")
        write_json(staging / CLASSES_FILE, classes)
        (staging / RESOLVED_CONFIG_NAME).write_text(
            yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8"
        )


def preprocess_dataset(
    dataset: Path,
    processed: Path,
    reports: Path,
    plots: Path,
    config: PreprocessConfig,
    resolved: dict,
    reviews_file: Path | None = None,
) -> dict:
    """Run the whole preprocessing; return the data report that is also written to reports/."""
    started = time.perf_counter()
    classes, files, unusable = list_dataset(dataset, config)
    reviews = read_reviews(reviews_file, classes, dataset) if reviews_file else {}  # before work
    decoded, failed = [], list(unusable)
    # closing: on Ctrl-C the worker pool is stopped here, before the error is reported.
    with closing(_decode_all(dataset, files, config)) as decoding:
        # disable=None: a bar on a terminal only; in a log the summary line below says it all.
        for item in tqdm(decoding, total=len(files), desc="decode", unit="img", disable=None):
            (failed if item.reason else decoded).append(item)
    kept, duplicates = drop_duplicates(decoded)
    _require_every_class(classes, kept, failed, dataset)
    splits, test_reviewed, applied, excluded = apply_reviews(
        split_stratified(kept, config), reviews, config.reviews_in_training
    )
    if any(not items for items in splits.values()):
        raise FlowerModelError(
            f"a split is empty ({ {k: len(v) for k, v in splits.items()} }); use more images "
            "(preprocess.max_images_per_class) or other split fractions"
        )

    _write_processed(processed, splits, classes, resolved, test_reviewed)

    dropped = sorted(failed + duplicates + excluded, key=lambda item: item.file)
    seen = len(files) + len(unusable)  # every file seen is either kept or in dropped.csv
    reasons = Counter(item.reason for item in dropped)
    counts = {
        split: {
            name: sum(item.label == label for item in items) for label, name in enumerate(classes)
        }
        for split, items in splits.items()
    }
    report = {
        "files_seen": seen,
        "kept": sum(len(items) for items in splits.values()),
        "dropped": {"total": len(dropped), **dict(sorted(reasons.items()))},
        "counts": {
            split: {**per_class, "total": sum(per_class.values())}
            for split, per_class in counts.items()
        },
        "image_size": config.image_size,
        "classes": classes,
    }
    write_json(reports / "data.json", report)
    reviewed_rows = [
        [item.file, split, classes[item.label], review.decision, review.note]
        for split, item, review in applied
    ]
    header = ["file", "split", "given", "decision", "note"]
    write_text(reports / "reviews.csv", csv_text(header, reviewed_rows))
    dropped_rows = [[item.file, item.reason, item.detail] for item in dropped]
    write_text(reports / "dropped.csv", csv_text(["file", "reason", "detail"], dropped_rows))
    distribution = [[name, split, counts[split][name]] for split in SPLITS for name in classes]
    write_text(
        plots / "data" / "class_distribution.csv",
        csv_text(["class", "split", "count"], distribution),
    )

    elapsed = time.perf_counter() - started
    print(
        f"preprocess: {seen} files -> {seen - len(dropped)} kept, {len(applied)} reviewed, "
        f"{len(dropped)} dropped ({dict(sorted(reasons.items()))}); {elapsed:.1f} s, "
        f"{seen / elapsed:.0f} images/s",
        flush=True,
    )
    return report
