"""Evaluate every available backend on the test split: accuracy, speed, agreement, pictures."""

import csv
import os
from pathlib import Path

import numpy as np

from flower_model.config import Config
from flower_model.data.layout import (
    MANIFEST_FILE,
    read_classes,
    read_manifest_files,
    read_split,
    reviewed_labels_path,
)
from flower_model.data.reviews import EXCLUDED_LABEL
from flower_model.evaluation import eval_figures
from flower_model.evaluation.latency import Predictor, measure, thread_info
from flower_model.evaluation.metrics import mcnemar, summarise
from flower_model.export.runtime import compare
from flower_model.export.tensorrt import BUILD_FILE, PLAN_FILE
from flower_model.io_utils import (
    check_writable,
    csv_text,
    damaged,
    load_array,
    read_json,
    write_json,
    write_text,
)
from flower_model.models.classifier import load_classifier
from flower_model.pipeline.model_check import verify_out
from flower_model.serving.contract import run_probs, session

REFERENCE = "onnx_fp32"  # the shipped model: its numbers are the headline test metrics
QUANTIZED = "onnx_int8"
MODEL_FILES = ("model.ckpt", "model.onnx", "model.int8.onnx")  # what torch, fp32, int8 load
PREDICT_BATCH = 64
# reports/metrics.json is what `dvc exp show` and `dvc metrics diff` read: these few headline
# scalars only (258 columns before). Per-backend and per-class detail: reports/evaluation.json,
# timings: reports/latency.json; both are plain outs.
METRICS_FILE = "metrics.json"
DETAIL_FILE = "evaluation.json"
LATENCY_FILE = "latency.json"
TRAIN_REPORT = "train.json"
METRIC_DIGITS = 6  # decimals of the metrics written (the int8 delta, the reviewed accuracy)
REVIEWED_SECTION = "reviewed_labels"  # evaluation.json: test accuracy on the reviewed labels


def headline(detail: dict, latency: dict, train_report: dict) -> dict:
    """The handful of numbers a user compares experiments by; one name per quantity."""
    shipped = detail[REFERENCE]
    timings = latency["backends"][REFERENCE]
    smallest = min(timings, key=lambda row: row["batch_size"])
    metrics = {
        "test": {
            "accuracy": shipped["accuracy"],
            "macro_f1": shipped["macro_f1"],
            # beside the headline, never instead of it (data/reviews.py)
            "accuracy_reviewed": detail[REVIEWED_SECTION]["accuracy"],
            "reviewed_photos": detail[REVIEWED_SECTION]["reviewed"],
        },
        "val": {"loss": train_report["best"]["val/loss"]},
        "latency": {"p50_ms_per_image": smallest["p50_ms_per_image"]},
    }
    if QUANTIZED in detail:
        delta = detail[QUANTIZED]["accuracy"] - shipped["accuracy"]
        metrics["int8"] = {"accuracy_delta": round(delta, METRIC_DIGITS)}
    return metrics


def _torch_predictor(checkpoint: Path) -> Predictor:
    import torch

    wrapper, _ = load_classifier(checkpoint)

    def predict(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return wrapper(torch.from_numpy(images))[1].numpy()

    return predict


def _onnx_predictor(model: Path) -> Predictor:
    runner = session(model, threads=os.cpu_count() or 1)
    return lambda images: run_probs(runner, images)


def backends(models: Path) -> dict[str, Predictor]:
    checkpoint, fp32, int8 = (models / name for name in MODEL_FILES)
    found = {
        "torch": _torch_predictor(checkpoint),
        "onnx_fp32": _onnx_predictor(fp32),
        "onnx_int8": _onnx_predictor(int8),
    }
    build = models / "trt" / BUILD_FILE
    if build.is_file() and read_json(build).get("status") == "built":
        import importlib

        from flower_model.export.tensorrt import EngineRunner

        found["tensorrt"] = EngineRunner(
            (models / "trt" / PLAN_FILE).read_bytes(), importlib.import_module("tensorrt")
        )
    return found


def _predict_all(predict: Predictor, images: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [
            predict(np.ascontiguousarray(images[start : start + PREDICT_BATCH]))
            for start in range(0, len(images), PREDICT_BATCH)
        ]
    )


def _baseline(
    path: Path, files: list[str], labels: np.ndarray, ours: np.ndarray, classes: list[str]
) -> dict:
    rows = {row["file"]: row[f"{REFERENCE}_predicted"] for row in csv.DictReader(path.open())}
    missing = [file for file in files if file not in rows]
    if missing:
        raise ValueError(
            f"baseline {path} lacks {len(missing)} test files (e.g. {missing[0]}): "
            "not the same split"
        )
    theirs = np.array([classes.index(rows[file]) for file in files])
    return {"path": str(path), **mcnemar(labels, ours, theirs)}


def _test_split(processed: Path) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """(images, labels, class names, file names) of the test split, in manifest order."""
    classes = read_classes(processed)
    images, labels = read_split(processed, "test", len(classes))
    files = read_manifest_files(processed, "test")
    if len(files) != len(labels):
        raise damaged(processed / MANIFEST_FILE, f"{len(files)} test rows for {len(labels)} photos")
    return images, labels, classes, files


def reviewed_accuracy(predictions: np.ndarray, labels: np.ndarray, reviewed: np.ndarray) -> dict:
    """Test accuracy on the reviewed labels (excluded photos left out), and how many test photos
    a review touched: the headline stays on the original labels."""
    scored = reviewed != EXCLUDED_LABEL
    hits = predictions[scored] == reviewed[scored]
    return {
        "accuracy": round(float(hits.mean()), METRIC_DIGITS) if hits.size else 0.0,
        "photos": int(scored.sum()),
        "reviewed": int((reviewed != labels).sum()),
        "excluded": int((~scored).sum()),
    }


def _score(probs: dict[str, np.ndarray], labels: np.ndarray, classes: list[str], settings) -> dict:
    """Per backend: the summary metrics, agreement with the shipped model and McNemar vs it."""
    reference = probs[REFERENCE].argmax(1)
    metrics: dict = {}
    for name, values in probs.items():
        section = summarise(labels, values, classes, settings.bootstrap_samples, settings.seed)
        section.pop("confusion_matrix")
        section["agreement_with_onnx_fp32"] = compare(probs[REFERENCE], values)
        if name != REFERENCE:
            section["mcnemar_vs_onnx_fp32"] = mcnemar(labels, reference, values.argmax(1))
        metrics[name] = section
    return metrics


def _write_plot_data(
    plots: Path, classes: list[str], labels: np.ndarray, reference: np.ndarray, detail, latency
) -> None:
    """The csv files dvc.yaml's plots draw."""
    confusion_rows = [[classes[label], classes[guess]] for label, guess in zip(labels, reference)]
    write_text(plots / "confusion.csv", csv_text(["actual", "predicted"], confusion_rows))
    # The shipped model's per-class scores; the other backends' agreement is in evaluation.json.
    per_class = detail[REFERENCE]["per_class"]
    f1_rows = [
        [cls, per_class[cls]["f1"], per_class[cls]["precision"], per_class[cls]["recall"]]
        for cls in classes
    ]
    write_text(
        plots / "per_class_f1.csv", csv_text(["class", "f1", "precision", "recall"], f1_rows)
    )
    # Per image, so batch 1 and batch 32 share one axis; bar plots add up rows that share a
    # label, so each row's label names backend and batch size.
    latency_rows = [
        [f"{name} · batch {row['batch_size']}", name, row["batch_size"]]
        + [row["p50_ms_per_image"], row["p50_ms"], row["images_per_s"]]
        for name, rows in latency["backends"].items()
        for row in rows
    ]
    columns = ["run", "backend", "batch_size", "p50_ms_per_image", "p50_ms", "images_per_s"]
    write_text(plots / "latency.csv", csv_text(columns, latency_rows))


def _write_predictions(path: Path, files, labels, classes, probs: dict[str, np.ndarray]) -> None:
    rows = [
        [file, classes[label]]
        + [
            item
            for name in probs
            for item in (classes[probs[name][i].argmax()], round(float(probs[name][i].max()), 6))
        ]
        for i, (file, label) in enumerate(zip(files, labels))
    ]
    header = ["file", "label"] + [
        item for name in probs for item in (f"{name}_predicted", f"{name}_confidence")
    ]
    write_text(path, csv_text(header, rows))


def evaluate(config: Config, root: Path) -> dict:
    paths, settings = config.paths, config.evaluate
    processed, models = root / paths.processed_dir, root / paths.models_dir
    reports, plots = root / paths.reports_dir, root / paths.plots_dir
    check_writable(reports, plots)  # before the work: never some outputs new, others old
    for name in MODEL_FILES:  # damaged bytes are refused before any work
        verify_out(models / name, root)
    images, labels, classes, files = _test_split(processed)
    reviewed = load_array(reviewed_labels_path(processed))
    predictors = backends(models)
    probs = {name: _predict_all(predict, images) for name, predict in predictors.items()}
    reference = probs[REFERENCE].argmax(1)
    detail = _score(probs, labels, classes, settings)
    detail[REVIEWED_SECTION] = reviewed_accuracy(reference, labels, reviewed)
    if settings.baseline_predictions is not None:
        detail["baseline"] = _baseline(
            root / settings.baseline_predictions, files, labels, reference, classes
        )
    latency = {"threads": thread_info(), "backends": {}}
    for name, predict in predictors.items():
        latency["backends"][name] = [
            measure(predict, images, size, settings.warmup_iterations, settings.timed_iterations)
            for size in settings.batch_sizes
        ]

    summary = headline(detail, latency, read_json(reports / TRAIN_REPORT))
    write_json(reports / DETAIL_FILE, detail)
    write_json(reports / LATENCY_FILE, latency)
    write_json(reports / METRICS_FILE, summary)
    _write_predictions(reports / "predictions.csv", files, labels, classes, probs)
    _write_plot_data(plots, classes, labels, reference, detail, latency)
    eval_figures.confusion_figure(labels, reference, classes, plots / "confusion.png")
    eval_figures.errors_gallery(
        images,
        labels,
        probs[REFERENCE],
        classes,
        files,
        settings.gallery_size,
        plots / "errors.png",
    )
    return {"metrics": summary, "detail": detail, "latency": latency}
