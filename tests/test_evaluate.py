"""export_onnx -> build_trt -> evaluate on a tiny project, logging to a real MLflow server."""

import csv
import json
import shutil

import pytest
from mlflow.tracking import MlflowClient

from pipeline_stages import build_trt, evaluate, export_onnx
from tests.conftest import TINY_SIZE, make_config


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_processed, tiny_checkpoint, mlflow_server):
    root = tmp_path_factory.mktemp("evaluated")
    shutil.copytree(tiny_processed / "data", root / "data")
    (root / "data" / "processed" / "config.resolved.yaml").write_text(
        "preprocess: {resize_mode: crop, pad_value: 0, max_image_pixels: 40000000}\n"
    )
    (root / "models").mkdir()
    shutil.copy(tiny_checkpoint, root / "models" / "model.ckpt")
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("flower-model") or client.get_experiment(
        client.create_experiment("flower-model")
    )
    run = client.create_run(experiment.experiment_id)
    (root / "models" / "train_run.json").write_text(json.dumps({"mlflow_run_id": run.info.run_id}))
    overrides = [
        f"mlflow.tracking_uri={mlflow_server}",
        "evaluate.timed_iterations=3",
        "evaluate.bootstrap_samples=50",
    ]
    config = make_config(overrides, preprocess={"image_size": TINY_SIZE})
    export_onnx.run(config, root)
    build_trt.run(config, root)
    evaluate.run(config, root)
    return root, config, run.info.run_id


def test_metrics_have_the_contract_keys(evaluated):
    root, _, _ = evaluated
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    assert set(metrics) >= {"test", "torch", "onnx_fp32", "onnx_int8"}
    assert metrics["test"]["accuracy"] == metrics["onnx_fp32"]["accuracy"]
    assert metrics["test"]["macro_f1"] == metrics["onnx_fp32"]["macro_f1"]
    low, high = metrics["onnx_fp32"]["accuracy_ci95"]
    assert low <= metrics["test"]["accuracy"] <= high
    assert metrics["torch"]["agreement_with_onnx_fp32"]["top1_agreement"] == 1.0
    assert "p_value" in metrics["onnx_int8"]["mcnemar_vs_onnx_fp32"]
    assert "tensorrt" not in metrics, "no engine was built here, so no TensorRT numbers"
    latency = json.loads((root / "reports" / "latency.json").read_text())
    assert [row["batch_size"] for row in latency["backends"]["onnx_fp32"]] == [1, 32]


def test_plots_and_pictures(evaluated):
    root, _, _ = evaluated
    rows = list(csv.DictReader((root / "plots" / "confusion.csv").open()))
    predictions = list(csv.DictReader((root / "reports" / "predictions.csv").open()))
    assert len(rows) == len(predictions) > 0 and set(rows[0]) == {"actual", "predicted"}
    for picture in ("confusion.png", "errors.png"):
        assert (root / "plots" / picture).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((root / "models" / "trt" / "build.json").read_text())["status"] == "skipped"
    assert (
        json.loads((root / "reports" / "onnx.json").read_text())["parity"]["top1_agreement"] == 1.0
    )


def test_mlflow_gets_metrics_pictures_and_registry_aliases(evaluated, mlflow_server):
    _, config, run_id = evaluated
    client = MlflowClient(mlflow_server)
    assert client.get_metric_history(run_id, "test/accuracy")
    artifacts = {item.path for item in client.list_artifacts(run_id, "evaluation")}
    assert {
        "evaluation/confusion.png",
        "evaluation/errors.png",
        "evaluation/metrics.json",
    } <= artifacts
    name = config.mlflow.registered_model_name
    latest = client.get_model_version_by_alias(name, "latest")
    best = client.get_model_version_by_alias(name, "best")
    assert latest.run_id == run_id, "models:/<name>/latest resolves to this run's version"
    versions = client.search_model_versions(f"name='{name}'")
    top = max(float(item.tags["test_accuracy"]) for item in versions)
    assert float(best.tags["test_accuracy"]) == top


def test_baseline_comparison(evaluated, tmp_path):
    root, config, _ = evaluated
    shutil.copy(root / "reports" / "predictions.csv", tmp_path / "baseline.csv")
    settings = config.evaluate.model_copy(
        update={"baseline_predictions": tmp_path / "baseline.csv"}
    )
    from flower_model.evaluation.evaluate import evaluate as run_evaluation

    result = run_evaluation(config.model_copy(update={"evaluate": settings}), root)
    baseline = result["metrics"]["baseline"]
    assert baseline["only_first_right"] == baseline["only_second_right"] == 0
    assert baseline["p_value"] == 1.0 and not baseline["significant_at_0.05"]
