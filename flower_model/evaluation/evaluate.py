"""Evaluate every available backend on the test split: accuracy, speed, agreement, pictures."""

import csv
import json
import os
from pathlib import Path

import numpy as np

from flower_model.config import Config
from flower_model.data.preprocess import CLASSES_FILE, MANIFEST_FILE, images_path, labels_path
from flower_model.evaluation import eval_figures
from flower_model.evaluation.latency import Predictor, measure, thread_info
from flower_model.evaluation.metrics import mcnemar, summarise
from flower_model.export.onnx import ExportWrapper, compare, load_classifier, session
from flower_model.export.tensorrt import BUILD_FILE, PLAN_FILE
from flower_model.io_utils import csv_text, load_array, read_json, write_json, write_text

REFERENCE = "onnx_fp32"  # the shipped model: its numbers are the top-level test metrics
PREDICT_BATCH = 64


def _torch_predictor(checkpoint: Path) -> Predictor:
    import torch

    wrapper = ExportWrapper(load_classifier(checkpoint)[0]).eval()

    def predict(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return wrapper(torch.from_numpy(images))[1].numpy()

    return predict


def _onnx_predictor(model: Path) -> Predictor:
    runner = session(model, threads=os.cpu_count() or 1)
    return lambda images: runner.run(["probs"], {"images": images})[0]


def backends(models: Path) -> dict[str, Predictor]:
    found = {
        "torch": _torch_predictor(models / "model.ckpt"),
        "onnx_fp32": _onnx_predictor(models / "model.onnx"),
        "onnx_int8": _onnx_predictor(models / "model.int8.onnx"),
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


def evaluate(config: Config, root: Path) -> dict:
    paths, settings = config.paths, config.evaluate
    processed, models = root / paths.processed_dir, root / paths.models_dir
    reports, plots = root / paths.reports_dir, root / paths.plots_dir
    images = load_array(images_path(processed, "test"))
    labels = load_array(labels_path(processed, "test"))
    classes = json.loads((processed / CLASSES_FILE).read_text())
    files = [
        row["file"]
        for row in csv.DictReader((processed / MANIFEST_FILE).open())
        if row["split"] == "test"
    ]

    predictors = backends(models)
    probs = {name: _predict_all(predict, images) for name, predict in predictors.items()}
    reference = probs[REFERENCE].argmax(1)
    metrics: dict = {}
    for name, values in probs.items():
        section = summarise(labels, values, classes, settings.bootstrap_samples, settings.seed)
        section.pop("confusion_matrix")
        section["agreement_with_onnx_fp32"] = compare(probs[REFERENCE], values)
        if name != REFERENCE:
            section["mcnemar_vs_onnx_fp32"] = mcnemar(labels, reference, values.argmax(1))
        metrics[name] = section
    metrics["test"] = {key: metrics[REFERENCE][key] for key in ("accuracy", "macro_f1")}
    if settings.baseline_predictions is not None:
        metrics["baseline"] = _baseline(
            root / settings.baseline_predictions, files, labels, reference, classes
        )

    latency = {"threads": thread_info(), "backends": {}}
    for name, predict in predictors.items():
        latency["backends"][name] = [
            measure(predict, images, size, settings.warmup_iterations, settings.timed_iterations)
            for size in settings.batch_sizes
        ]

    write_json(reports / "metrics.json", metrics)
    write_json(reports / "latency.json", latency)
    prediction_rows = [
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
    write_text(reports / "predictions.csv", csv_text(header, prediction_rows))
    confusion_rows = [[classes[label], classes[guess]] for label, guess in zip(labels, reference)]
    write_text(plots / "confusion.csv", csv_text(["actual", "predicted"], confusion_rows))
    # Bar plots add up rows that share a label: one label per bar.
    f1_rows = [
        [f"{cls} ({name})", name, metrics[name]["per_class"][cls]["f1"]]
        for cls in classes
        for name in probs
    ]
    write_text(plots / "per_class_f1.csv", csv_text(["class", "backend", "f1"], f1_rows))
    latency_rows = [
        [f"{name} bs{row['batch_size']}", row["batch_size"], row["p50_ms"], row["p95_ms"]]
        + [row["images_per_s"]]
        for name, rows in latency["backends"].items()
        for row in rows
    ]
    write_text(
        plots / "latency.csv",
        csv_text(["backend", "batch_size", "p50_ms", "p95_ms", "images_per_s"], latency_rows),
    )
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
    return {"metrics": metrics, "latency": latency}
