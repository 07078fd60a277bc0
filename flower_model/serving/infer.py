"""Classify photos with the exported ONNX model. Imports numpy, Pillow and onnxruntime only.

Everything needed to prepare a photo (size, resize mode, class names) is read from the model's
metadata, and the decode/resize code is the one preprocess used, so a photo is seen exactly as in
training.
"""

import glob
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flower_model.constants import IMAGE_SUFFIXES
from flower_model.data.images import ImageDecodeError, load_image
from flower_model.errors import FlowerModelError
from flower_model.io_utils import csv_text, write_stdout, write_text
from flower_model.serving.contract import (
    PROBS,
    MetadataError,
    ModelInfo,
    class_count_problem,
    missing_metadata,
    run_probs,
    session,
    session_metadata,
)

BATCH = 32
OUTPUT_FORMATS = (".csv", ".json")
GONE_REASON = "not_classified"  # the error word of photos left when the classifier went away


@dataclass
class Prediction:
    path: str
    predicted: str = ""
    probability: float = 0.0
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: str = ""


class ClassifierGone(FlowerModelError):
    """The classifier (a server) went away and did not come back in time: `classify` keeps the
    results it already has and marks the rest with this reason."""


def output_suffix(output: str | None) -> str:
    """The format of --output (.csv without one); a one-line error for any other suffix."""
    suffix = Path(str(output)).suffix.lower() if output else ".csv"
    if suffix not in OUTPUT_FORMATS:
        raise FlowerModelError(f"--output must end in .csv or .json, got {output}")
    return suffix


def expand_paths(items: list[str]) -> list[Path]:
    """Files as given, directories recursively (image suffixes only), globs expanded; sorted."""
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found += [
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            ]
        elif path.exists():
            found.append(path)
        else:
            matches = [Path(match) for match in glob.glob(item, recursive=True)]
            found += matches if matches else [path]  # a missing path is reported, not dropped
    return sorted(set(found))


def unusable_model(model: Path, reason: str) -> str:
    return (
        f"{model} is not a usable flower-model ONNX model ({reason}): rebuild it with "
        "`dvc repro export_onnx` (or `flower-model export_onnx`), or pass another --model"
    )


class OnnxClassifier:
    def __init__(self, model: Path, spinning: bool = True, threads: int = 0):
        """`spinning=False` stops idle ORT threads from busy-waiting for the next run;
        `threads` caps the threads one run uses (0: ORT's default, one per core)."""
        try:
            self.session = session(model, threads=threads, spinning=spinning)
        except Exception as error:  # ORT's own exception types (InvalidProtobuf, ...) subclass it
            raise FlowerModelError(unusable_model(model, str(error).splitlines()[0])) from None
        meta = session_metadata(self.session)
        missing = missing_metadata(meta)
        if missing:
            raise FlowerModelError(unusable_model(model, f"it lacks the metadata {missing}"))
        try:
            self.info = ModelInfo.parse(meta)
        except MetadataError as error:
            raise FlowerModelError(unusable_model(model, str(error))) from None
        widths = [item.shape[-1] for item in self.session.get_outputs() if item.name == PROBS]
        problem = class_count_problem(self.info, widths[0] if widths else None)
        if problem:
            raise FlowerModelError(unusable_model(model, problem))
        self.class_names: list[str] = self.info.class_names

    def load(self, path: Path) -> np.ndarray:
        return load_image(path, *self.info.image_settings)

    def probs(self, images: np.ndarray) -> np.ndarray:
        return run_probs(self.session, images)


def _rank(row: np.ndarray, class_names: list[str], top_k: int) -> list[tuple[str, float]]:
    order = np.argsort(-row, kind="stable")[:top_k]
    return [(class_names[k], round(float(row[k]), 6)) for k in order]


def classify(paths: list[Path], classifier, top_k: int, batch: int = BATCH) -> list[Prediction]:
    """One Prediction per path, in order; unreadable files get `error` and the rest still run.

    `classifier` has `load(path)`, `probs(items)` and `class_names`: in-process ONNX Runtime or
    TensorRT here, a Triton server in serving/client.py. When `probs` rejects a batch with an
    ImageDecodeError (a server decoding the files), its files are sent one by one to find which.
    When it raises ClassifierGone, the photos not yet classified get its reason as their error.
    """
    results = [Prediction(str(path)) for path in paths]
    ready: list[tuple[int, np.ndarray]] = []
    for index, path in enumerate(paths):
        try:
            if not path.is_file():
                raise ImageDecodeError("missing", "no such file")
            ready.append((index, classifier.load(path)))
        except ImageDecodeError as error:
            results[index].error = f"{error.reason}: {error.detail}"
    pending = [ready[start : start + batch] for start in range(0, len(ready), batch)]
    while pending:
        chunk = pending.pop(0)
        try:
            probs = classifier.probs(np.stack([item for _, item in chunk]))
        except ClassifierGone as error:
            for index, _ in [item for left in [chunk, *pending] for item in left]:
                results[index].error = f"{GONE_REASON}: {error}"
            break
        except ImageDecodeError as error:
            if len(chunk) > 1:
                pending[:0] = [[item] for item in chunk]
            else:
                results[chunk[0][0]].error = f"{error.reason}: {error.detail}"
            continue
        for (index, _), row in zip(chunk, probs):
            ranked = _rank(row, classifier.class_names, top_k)
            results[index].predicted, results[index].probability = ranked[0]
            results[index].top_k = ranked
    return results


def render(results: list[Prediction], suffix: str) -> str:
    if suffix == ".json":
        return json.dumps([result.__dict__ for result in results], indent=2) + "\n"
    rows = [
        [
            result.path,
            result.predicted,
            f"{result.probability:.6f}",
            ";".join(f"{name}:{prob:.4f}" for name, prob in result.top_k),
            result.error,
        ]
        for result in results
    ]
    return csv_text(["path", "predicted", "probability", "top_k", "error"], rows)


def run_infer(
    items: list[str], model: Path, output: Path | None, top_k: int, classifier=None
) -> int:
    """The `flower-model infer` command; returns the exit code (1 when any photo failed)."""
    output_suffix(str(output) if output is not None else None)
    classifier = classifier or OnnxClassifier(model)
    classes = len(classifier.class_names)
    if not 1 <= top_k <= classes:
        raise FlowerModelError(f"--top-k must be 1 to {classes} (the model's classes), got {top_k}")
    results = classify(expand_paths(items), classifier, top_k)
    if not results:
        print(f"error: no images found in {items}", file=sys.stderr)
        return 2
    text = render(results, output.suffix.lower() if output else ".csv")
    failed = [result for result in results if result.error]
    if output is None:
        write_stdout(text)
    else:
        write_text(output, text)
        print(
            f"wrote {output}: {len(results) - len(failed)} predicted, {len(failed)} failed "
            f"(of {len(results)} files)"
        )
    for result in failed:
        print(f"cannot classify {result.path}: {result.error}", file=sys.stderr)
    return 1 if failed else 0
