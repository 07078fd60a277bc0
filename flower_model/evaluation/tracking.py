"""Log the evaluation to the MLflow run that trained the model (run id from train_run.json)."""

from pathlib import Path

from flower_model.config import Config
from flower_model.io_utils import read_json


def _flat_metrics(metrics: dict, latency: dict) -> dict[str, float]:
    flat = {
        "test/accuracy": metrics["test"]["accuracy"],
        "test/macro_f1": metrics["test"]["macro_f1"],
    }
    for name, section in metrics.items():
        if isinstance(section, dict) and "accuracy" in section and name != "test":
            flat[f"eval/{name}/accuracy"] = section["accuracy"]
            flat[f"eval/{name}/macro_f1"] = section["macro_f1"]
    for name, rows in latency["backends"].items():
        for row in rows:
            flat[f"latency/{name}/bs{row['batch_size']}_p50_ms"] = row["p50_ms"]
            flat[f"latency/{name}/bs{row['batch_size']}_images_per_s"] = row["images_per_s"]
    return flat


def log_evaluation(config: Config, root: Path, metrics: dict, latency: dict) -> str:
    from mlflow.tracking import MlflowClient

    run_id = read_json(root / config.paths.models_dir / "train_run.json")["mlflow_run_id"]
    client = MlflowClient(config.mlflow.tracking_uri)
    for key, value in _flat_metrics(metrics, latency).items():
        client.log_metric(run_id, key, float(value))
    reports, plots = root / config.paths.reports_dir, root / config.paths.plots_dir
    for path in (
        reports / "metrics.json",
        reports / "latency.json",
        plots / "confusion.png",
        plots / "errors.png",
    ):
        client.log_artifact(run_id, str(path), artifact_path="evaluation")
    return run_id


def register_onnx_model(config: Config, root: Path, test_accuracy: float) -> dict[str, str]:
    """Register models/model.onnx under the training run and alias `best` to the version with the
    highest test accuracy. `latest` needs no alias: MLflow reserves that name, and
    `models:/<name>/latest` already resolves to the newest version. Returns {name: version}."""
    import mlflow
    import onnx
    from mlflow.tracking import MlflowClient

    run_id = read_json(root / config.paths.models_dir / "train_run.json")["mlflow_run_id"]
    name = config.mlflow.registered_model_name
    mlflow.set_tracking_uri(config.mlflow.tracking_uri)
    model = onnx.load(str(root / config.paths.models_dir / "model.onnx"))
    with mlflow.start_run(run_id=run_id):
        # Explicit requirements: inferring them would import and probe the whole environment.
        info = mlflow.onnx.log_model(
            model,
            name="onnx_model",
            registered_model_name=name,
            pip_requirements=["onnxruntime", "numpy"],
        )
    client = MlflowClient(config.mlflow.tracking_uri)
    version = str(info.registered_model_version)
    client.set_model_version_tag(name, version, "test_accuracy", f"{test_accuracy:.6f}")
    versions = client.search_model_versions(f"name='{name}'")
    scored = [(float(item.tags.get("test_accuracy", "-1")), int(item.version)) for item in versions]
    best = str(max(scored)[1])
    client.set_registered_model_alias(name, "best", best)
    return {"latest": version, "best": best}
