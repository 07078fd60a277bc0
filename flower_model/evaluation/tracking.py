"""Log the evaluation to the MLflow run that trained the model (run id from train_run.json)."""

import hashlib
import json
import os
from pathlib import Path

from mlflow.exceptions import MlflowException
from requests.exceptions import RequestException

from flower_model.config import Config
from flower_model.io_utils import read_json

# What a tracking server that went away raises once MLflow's bounded retries are spent:
# MlflowException wrapping the HTTP error, or requests' own error unwrapped.
MLFLOW_GONE: tuple[type[BaseException], ...] = (MlflowException, RequestException)
TEST_DATA_TAG = "test_data_sha256"
EVALUATED_METRIC = "test/accuracy"  # a run that has it has been evaluated already
TRAINING_RUN_TAG = "training_run_id"  # on an evaluation run of an earlier training run


def _flat_metrics(result: dict) -> dict[str, float]:
    """One MLflow name per quantity: the headline test metrics once (not again under the shipped
    backend's name), the other backends' scores, and p50 latency per batch size. The headline's
    INT8 delta and p50 ms per image too, under their `dvc exp show` names: the runs table's
    default columns (RUNS_VIEW_COLUMNS) show them."""
    from flower_model.evaluation.evaluate import REFERENCE, REVIEWED_SECTION

    headline = result["metrics"]
    test = headline["test"]
    flat = {"test/accuracy": test["accuracy"], "test/macro_f1": test["macro_f1"]}
    flat["test/accuracy_reviewed"] = test["accuracy_reviewed"]
    flat["latency/p50_ms_per_image"] = headline["latency"]["p50_ms_per_image"]
    if "int8" in headline:
        flat["int8/accuracy_delta"] = headline["int8"]["accuracy_delta"]
    for name, section in result["detail"].items():
        if name in (REFERENCE, REVIEWED_SECTION) or not isinstance(section, dict):
            continue
        if "accuracy" in section:
            flat[f"eval/{name}/accuracy"] = section["accuracy"]
            flat[f"eval/{name}/macro_f1"] = section["macro_f1"]
    for name, rows in result["latency"]["backends"].items():
        for row in rows:
            flat[f"latency/{name}/bs{row['batch_size']}_p50_ms"] = row["p50_ms"]
    return flat


def evaluation_run(client, train_run_id: str) -> str:
    """The run this evaluation is logged to: the training run when it is this pipeline's (not
    yet evaluated, same DVC experiment), else a new run tagged `training_run_id`. A `dvc exp run`
    whose train stage came from DVC's run cache logged its scores into the older run before."""
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

    from flower_model.training.tracking import DVC_EXPERIMENT_VARIABLE, EXPERIMENT_TAG

    trained = client.get_run(train_run_id)
    experiment = os.environ.get(DVC_EXPERIMENT_VARIABLE)
    fresh = EVALUATED_METRIC not in trained.data.metrics
    if fresh and trained.data.tags.get(EXPERIMENT_TAG) == experiment:
        return train_run_id
    tags = {TRAINING_RUN_TAG: train_run_id, "mlflow.runName": f"evaluate {trained.info.run_name}"}
    if MLFLOW_GIT_COMMIT in trained.data.tags:  # the UI's Version column: the code evaluated
        tags[MLFLOW_GIT_COMMIT] = trained.data.tags[MLFLOW_GIT_COMMIT]
    if experiment:
        tags[EXPERIMENT_TAG] = experiment
    return client.create_run(trained.info.experiment_id, tags=tags).info.run_id


def log_evaluation(config: Config, root: Path, result: dict) -> str:
    """Log `evaluate`'s result (headline, detail, latency) and its files to the evaluation run
    (see evaluation_run), print the link to the experiment's runs table; return the run's id."""
    from mlflow.tracking import MlflowClient

    from flower_model.evaluation.evaluate import DETAIL_FILE, LATENCY_FILE, METRICS_FILE
    from flower_model.training.tracking import quiet_mlflow_links, runs_table_url, set_runs_view

    quiet_mlflow_links()
    train_run_id = read_json(root / config.paths.models_dir / "train_run.json")["mlflow_run_id"]
    client = MlflowClient(config.mlflow.tracking_uri)
    run_id = evaluation_run(client, train_run_id)
    for key, value in _flat_metrics(result).items():
        client.log_metric(run_id, key, float(value))
    reports, plots = root / config.paths.reports_dir, root / config.paths.plots_dir
    for path in (
        reports / METRICS_FILE,
        reports / DETAIL_FILE,
        reports / LATENCY_FILE,
        plots / "confusion.png",
        plots / "errors.png",
    ):
        client.log_artifact(run_id, str(path), artifact_path="evaluation")
    if run_id != train_run_id:
        client.set_terminated(run_id)
    experiment_id = client.get_run(run_id).info.experiment_id
    set_runs_view(client, experiment_id)
    url = runs_table_url(config.mlflow.tracking_uri, experiment_id)
    if url:
        print(f"mlflow: evaluation logged to run {run_id}; the runs table:\n  {url}", flush=True)
    return run_id


def track_evaluation(config: Config, root: Path, result: dict) -> None:
    """Log the evaluation to MLflow and register the model when `registration` says so."""
    log_evaluation(config, root, result)
    reason = registration(config, root)
    name = config.mlflow.registered_model_name
    if reason is None:
        print(
            f"not registered in {name}: a DVC experiment or uncommitted code/params "
            "(mlflow.register_model=always registers anyway)"
        )
    else:
        aliases = register_onnx_model(config, root, result["metrics"]["test"]["accuracy"])
        print(f"model registry {name} ({reason}): aliases {aliases}")


def registration(config: Config, root: Path) -> str | None:
    """Why this evaluation registers its model, or None when it should not.

    `mlflow.register_model`: `always`, `never`, or `auto` (the default): only the committed
    pipeline registers, i.e. a `dvc repro` outside DVC experiments (no DVC_EXP_NAME) of code and
    params equal to their commit. Before, every throwaway `dvc exp run` added a version."""
    from flower_model.training.tracking import DVC_EXPERIMENT_VARIABLE, UNKNOWN, git_state

    setting = config.mlflow.register_model
    if setting != "auto":
        return "mlflow.register_model=always" if setting == "always" else None
    if os.environ.get(DVC_EXPERIMENT_VARIABLE):
        return None
    sha, dirty = git_state(root)
    return None if dirty or sha == UNKNOWN else f"committed pipeline at {sha[:12]}"


def test_data_digest(processed: Path) -> str:
    """sha256 of the test split's arrays: versions are ranked only against the same test data."""
    from flower_model.data.layout import images_path, labels_path

    digest = hashlib.sha256()
    for path in (images_path(processed, "test"), labels_path(processed, "test")):
        with path.open("rb") as handle:
            hashlib.file_digest(handle, lambda: digest)  # adds the bytes to the running digest
    return digest.hexdigest()


MODEL_DIGEST_TAG = "onnx_sha256"  # the registered ONNX file's bytes: a retrain of equal bytes
CLASS_NAMES_TAG = "class_names"  # JSON list, in the model's output order


def registered_version(client, name: str, model_digest: str, data_digest: str) -> str | None:
    """The version of `name` that holds these ONNX bytes scored on this test data, if any."""
    for item in client.search_model_versions(f"name='{name}'"):
        tags = item.tags
        if tags.get(MODEL_DIGEST_TAG) == model_digest and tags.get(TEST_DATA_TAG) == data_digest:
            return str(item.version)
    return None


def register_onnx_model(config: Config, root: Path, test_accuracy: float) -> dict[str, str]:
    """Register models/model.onnx, as the pyfunc of flower_model.serving.mlflow_pyfunc (photo
    bytes in, class names out), under the training run, and alias `best` to the version with the
    highest test accuracy among the versions evaluated on the same test data (tag
    `test_data_sha256`). The same ONNX bytes on the same test data (tag `onnx_sha256`: a retrain
    that gave identical bytes) keep their version instead of adding an identical one. `latest`
    needs no alias: MLflow reserves that name, and `models:/<name>/latest` already resolves to
    the newest version. Returns the versions {"latest": ..., "best": ...} resolve to."""
    import mlflow
    import numpy as np
    from mlflow.tracking import MlflowClient

    from flower_model.data.layout import images_path
    from flower_model.serving.mlflow_pyfunc import file_sha256, log_pyfunc_model
    from flower_model.training.tracking import quiet_mlflow_links

    quiet_mlflow_links()  # the run's end below printed MLflow's GenAI-overview link
    models, processed = root / config.paths.models_dir, root / config.paths.processed_dir
    onnx_path = models / "model.onnx"
    name = config.mlflow.registered_model_name
    client = MlflowClient(config.mlflow.tracking_uri)
    digest, model_digest = test_data_digest(processed), file_sha256(onnx_path)
    version = registered_version(client, name, model_digest, digest)
    if version is not None:
        print(
            f"mlflow: {onnx_path.name} is already {name} version {version} (same bytes, same "
            "test data): not registered again",
            flush=True,
        )
    else:
        run_id = read_json(models / "train_run.json")["mlflow_run_id"]
        example = np.load(images_path(processed, "test"), mmap_mode="r")[0]
        mlflow.set_tracking_uri(config.mlflow.tracking_uri)
        with mlflow.start_run(run_id=run_id):
            info = log_pyfunc_model(onnx_path, np.asarray(example), name)
        version = str(info.registered_model_version)
        tags = {
            "test_accuracy": f"{test_accuracy:.6f}",
            TEST_DATA_TAG: digest,
            MODEL_DIGEST_TAG: model_digest,
            CLASS_NAMES_TAG: json.dumps(info.metadata["class_names"]),
        }
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
    versions = client.search_model_versions(f"name='{name}'")
    scored = [
        (float(item.tags.get("test_accuracy", "-1")), int(item.version))
        for item in versions
        if item.tags.get(TEST_DATA_TAG) == digest
    ]
    best = str(max(scored)[1])
    client.set_registered_model_alias(name, "best", best)
    return {"latest": str(max(int(item.version) for item in versions)), "best": best}
