"""export_onnx -> build_trt -> evaluate on a tiny project, logging to a real MLflow server."""

import csv
import json
import os
import re
import shutil
import subprocess
import time

import pytest
from mlflow.tracking import MlflowClient

from flower_model.config import flatten
from flower_model.constants import CONSOLE_WIDTH
from pipeline_stages import build_trt, evaluate, export_onnx
from tests.conftest import (
    CLASS_NAMES,
    MLFLOW_REQUEST_VARIABLES,
    REPO_ROOT,
    TINY_SIZE,
    copy_pipeline,
    free_port,
    make_config,
)
from tests.helpers.cli import run_stage_script

PAGE_WIDTH_PX = 620  # half of `dvc plots diff`'s page: two revisions side by side, none cut off
VAL_LOSS = 1.234567  # the train stage's best val/loss, as reports/train.json gives it
# A Python warning as `warnings` prints it ("...: FutureWarning: ...") or a logged one ("WARNING").
# MLflow's own retries took 266 s before a traceback; bounded, the whole tiny evaluation is
# well under this (its tracking part: a refused connection, 2 retries with 1 s backoff).
TRACKING_GONE_LIMIT_S = 120
WARNING_LINE = re.compile(r"\w+Warning: |\bWARNING\b|^warning: ")


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
    (root / "reports").mkdir()
    (root / "reports" / "train.json").write_text(json.dumps({"best": {"val/loss": VAL_LOSS}}))
    overrides = [
        f"mlflow.tracking_uri={mlflow_server}",
        "evaluate.timed_iterations=3",
        "evaluate.bootstrap_samples=50",
        "mlflow.register_model=always",  # `auto` depends on this checkout's git state
    ]
    config = make_config(overrides, preprocess={"image_size": TINY_SIZE})
    export_onnx.run(config, root, {})
    build_trt.run(config, root, {})
    with pytest.MonkeyPatch.context() as patch:
        for name in MLFLOW_REQUEST_VARIABLES:  # evaluate sets them; later tests get them back
            patch.setenv(name, os.environ.get(name, ""))
        evaluate.run(config, root, {})
    return root, config, run.info.run_id


@pytest.mark.slow
def test_headline_metrics_and_the_detail_beside_them(evaluated):
    """reports/metrics.json (the DVC metric) holds seven headline scalars taken from the detail
    files, which hold everything else; with no label review, the reviewed accuracy equals the
    headline."""
    root, _, _ = evaluated
    metrics = flatten(json.loads((root / "reports" / "metrics.json").read_text()))
    assert set(metrics) == {
        "test.accuracy",
        "test.macro_f1",
        "val.loss",
        "latency.p50_ms_per_image",
        "int8.accuracy_delta",
        "test.accuracy_reviewed",
        "test.reviewed_photos",
    }
    detail = json.loads((root / "reports" / "evaluation.json").read_text())
    backends = {"torch", "onnx_fp32", "onnx_int8"}
    assert set(detail) == backends | {"reviewed_labels"}, "no engine here: no TensorRT"
    assert metrics["test.accuracy_reviewed"] == metrics["test.accuracy"]
    assert metrics["test.reviewed_photos"] == 0
    assert metrics["test.accuracy"] == detail["onnx_fp32"]["accuracy"]
    assert metrics["test.macro_f1"] == detail["onnx_fp32"]["macro_f1"]
    delta = detail["onnx_int8"]["accuracy"] - detail["onnx_fp32"]["accuracy"]
    assert metrics["int8.accuracy_delta"] == pytest.approx(delta, abs=1e-6)
    assert metrics["val.loss"] == VAL_LOSS
    low, high = detail["onnx_fp32"]["accuracy_ci95"]
    assert low <= metrics["test.accuracy"] <= high
    assert detail["torch"]["agreement_with_onnx_fp32"]["top1_agreement"] == 1.0
    assert "p_value" in detail["onnx_int8"]["mcnemar_vs_onnx_fp32"]
    latency = json.loads((root / "reports" / "latency.json").read_text())
    rows = latency["backends"]["onnx_fp32"]
    assert [row["batch_size"] for row in rows] == [1, 32]
    assert metrics["latency.p50_ms_per_image"] == rows[0]["p50_ms"]
    assert rows[1]["p50_ms_per_image"] == pytest.approx(rows[1]["p50_ms"] / 32, abs=1e-3)


def test_plots_and_pictures(evaluated):
    root, _, _ = evaluated
    f1 = list(csv.DictReader((root / "plots" / "per_class_f1.csv").open()))
    assert [row["class"] for row in f1] == CLASS_NAMES, "one bar per class: the shipped model's"
    latency = list(csv.DictReader((root / "plots" / "latency.csv").open()))
    assert len({row["run"] for row in latency}) == len(latency) == 3 * 2, "3 backends x 2 sizes"
    rows = list(csv.DictReader((root / "plots" / "confusion.csv").open()))
    predictions = list(csv.DictReader((root / "reports" / "predictions.csv").open()))
    assert len(rows) == len(predictions) > 0 and set(rows[0]) == {"actual", "predicted"}
    for picture in ("confusion.png", "errors.png"):
        assert (root / "plots" / picture).read_bytes()[:4] == b"\x89PNG"
    for picture in ("confusion.png", "errors.png"):
        header = (root / "plots" / picture).read_bytes()[16:24]  # PNG IHDR: width, height
        width = int.from_bytes(header[:4], "big")
        assert width <= PAGE_WIDTH_PX, f"{picture} is {width} px wide: cut off in DVC's page"
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
        "evaluation/evaluation.json",
        "evaluation/latency.json",
    } <= artifacts
    metrics = client.get_run(run_id).data.metrics
    assert "eval/onnx_fp32/accuracy" not in metrics, "test/accuracy is that number, once"
    assert "eval/onnx_int8/accuracy" in metrics
    name = config.mlflow.registered_model_name
    latest = client.get_model_version_by_alias(name, "latest")
    best = client.get_model_version_by_alias(name, "best")
    assert latest.run_id == run_id, "models:/<name>/latest resolves to this run's version"
    versions = client.search_model_versions(f"name='{name}'")
    top = max(float(item.tags["test_accuracy"]) for item in versions)
    assert float(best.tags["test_accuracy"]) == top


@pytest.mark.slow
def test_baseline_comparison(evaluated, tmp_path):
    root, config, _ = evaluated
    shutil.copy(root / "reports" / "predictions.csv", tmp_path / "baseline.csv")
    settings = config.evaluate.model_copy(
        update={"baseline_predictions": tmp_path / "baseline.csv"}
    )
    from flower_model.evaluation.evaluate import evaluate as run_evaluation

    result = run_evaluation(config.model_copy(update={"evaluate": settings}), root)
    baseline = result["detail"]["baseline"]
    assert baseline["only_first_right"] == baseline["only_second_right"] == 0
    assert baseline["p_value"] == 1.0 and not baseline["significant_at_0.05"]


def _git(folder, *words: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@localhost", *words],
        cwd=folder,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def committed_project(tmp_path):
    """A git checkout with code, params, a DVC-written lock and a committed metrics file whose
    path dvc.yaml templates from params, as the project's own does."""
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "params.yaml").write_text("train: {lr: 0.1}\npaths: {reports_dir: reports}\n")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  s:\n    cmd: x\n    metrics:\n      - ${paths.reports_dir}/metrics.json:\n"
        "          cache: false\n"
    )
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "metrics.json").write_text("{}\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "start")
    return tmp_path


@pytest.mark.parametrize(
    "setting, exp_name, change, registers",
    [
        ("auto", None, None, True),
        ("auto", None, ("dvc.lock", "reports/metrics.json"), True),  # what stages rewrite
        ("auto", None, ("params.yaml",), False),
        ("auto", None, ("code.py",), False),
        ("auto", "sunny-dune", None, False),  # `dvc exp run`
        ("always", "sunny-dune", ("code.py",), True),
        ("never", None, None, False),
    ],
)
def test_only_the_committed_pipeline_registers(
    committed_project, monkeypatch, setting, exp_name, change, registers
):
    from flower_model.evaluation.tracking import registration
    from flower_model.training.tracking import git_state

    for name in change or ():
        with (committed_project / name).open("a") as handle:
            handle.write("# changed\n")
    if exp_name:
        monkeypatch.setenv("DVC_EXP_NAME", exp_name)
    else:
        monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    config = make_config([f"mlflow.register_model={setting}"])
    assert (registration(config, committed_project) is not None) == registers
    if setting == "auto" and not exp_name:
        assert git_state(committed_project)[1] == (not registers), "git_dirty agrees"


@pytest.mark.slow
def test_a_second_evaluation_gets_its_own_run(evaluated, mlflow_server, monkeypatch):
    """Evaluating a model whose training run was already evaluated (a `dvc exp run` that took
    train from the run cache) logs to a new run linked by tag, not into the old one."""
    from flower_model.evaluation.tracking import log_evaluation

    root, config, run_id = evaluated
    monkeypatch.setenv("DVC_EXP_NAME", "cached-train")
    result = {
        "metrics": json.loads((root / "reports" / "metrics.json").read_text()),
        "detail": json.loads((root / "reports" / "evaluation.json").read_text()),
        "latency": json.loads((root / "reports" / "latency.json").read_text()),
    }
    client = MlflowClient(mlflow_server)
    before = len(client.get_metric_history(run_id, "test/accuracy"))
    second = log_evaluation(config, root, result)
    assert second != run_id
    run = client.get_run(second)
    assert run.data.tags["training_run_id"] == run_id
    assert run.data.tags["dvc_experiment"] == "cached-train"
    assert run.data.metrics["test/accuracy"] == result["metrics"]["test"]["accuracy"]
    assert len(client.get_metric_history(run_id, "test/accuracy")) == before


def _report_files(root) -> dict:
    """The evaluation result as log_evaluation takes it, read back from the report files."""
    return {
        "metrics": json.loads((root / "reports" / "metrics.json").read_text()),
        "detail": json.loads((root / "reports" / "evaluation.json").read_text()),
        "latency": json.loads((root / "reports" / "latency.json").read_text()),
    }


def _restore_tracking_uri():
    """register_onnx_model sets MLflow's process-wide tracking URI; put the previous one back."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    return lambda: mlflow.set_tracking_uri(previous)


@pytest.mark.slow
def test_evaluation_tracking_works_with_a_sqlite_store(evaluated, tmp_path, monkeypatch):
    """The README's serverless store, `sqlite:///<path>/mlflow.db`: the scores, files and the
    registry version with its `best` alias land there like on a server."""
    from flower_model.evaluation.tracking import log_evaluation, register_onnx_model
    from flower_model.training.tracking import require_tracking_server

    source, config, _ = evaluated
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment(
        config.mlflow.experiment_name, artifact_location=(tmp_path / "artifacts").as_uri()
    )
    run_id = client.create_run(experiment).info.run_id
    root = tmp_path / "project"
    shutil.copytree(source / "data", root / "data")
    shutil.copytree(source / "reports", root / "reports")
    shutil.copytree(source / "plots", root / "plots")
    (root / "models").mkdir()
    shutil.copy(source / "models" / "model.onnx", root / "models" / "model.onnx")
    (root / "models" / "train_run.json").write_text(json.dumps({"mlflow_run_id": run_id}))
    local = config.model_copy(
        update={"mlflow": config.mlflow.model_copy(update={"tracking_uri": uri})}
    )
    result = _report_files(root)
    require_tracking_server(local.mlflow)  # no server to ask, and a store MLflow accepts
    assert log_evaluation(local, root, result) == run_id, "logged into the training run"
    restore = _restore_tracking_uri()
    try:
        aliases = register_onnx_model(local, root, result["metrics"]["test"]["accuracy"])
    finally:
        restore()
    run = client.get_run(run_id)
    assert run.data.metrics["test/accuracy"] == result["metrics"]["test"]["accuracy"]
    artifacts = {item.path for item in client.list_artifacts(run_id, "evaluation")}
    assert "evaluation/metrics.json" in artifacts
    name = local.mlflow.registered_model_name
    assert str(client.get_model_version_by_alias(name, "best").version) == aliases["best"] == "1"


REGISTRY_TEST_MODEL = "flower_classifier_digest_test"  # its own name: other tests register too


def _registry_project(folder, tiny_processed, tiny_onnx, run_id: str, altered_test_data: bool):
    """A project root with the test split (one pixel changed when `altered_test_data`: other
    test data, so another digest), models/model.onnx and train_run.json naming `run_id`."""
    import numpy as np

    from flower_model.data.layout import images_path

    shutil.copytree(tiny_processed / "data", folder / "data")
    if altered_test_data:
        path = images_path(folder / "data" / "processed", "test")
        images = np.load(path)
        images.flat[0] ^= 1
        np.save(path, images)
    (folder / "models").mkdir()
    shutil.copy(tiny_onnx, folder / "models" / "model.onnx")
    (folder / "models" / "train_run.json").write_text(json.dumps({"mlflow_run_id": run_id}))
    return folder


def resave_onnx(onnx_path, target, doc_string: str) -> None:
    """The same network saved with another doc string: other bytes, as another training run."""
    import onnx

    model = onnx.load(str(onnx_path))
    model.doc_string = doc_string
    onnx.save(model, str(target))


@pytest.mark.slow
def test_best_is_chosen_among_versions_scored_on_the_same_test_data(
    tmp_path, tiny_processed, tiny_onnx, mlflow_server
):
    """A version scored higher on other test data (another digest) never becomes `best`, and
    among same-digest versions the highest accuracy wins, not the newest."""
    from flower_model.evaluation.tracking import (
        TEST_DATA_TAG,
        register_onnx_model,
        test_data_digest,
    )

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("flower-model") or client.get_experiment(
        client.create_experiment("flower-model")
    )
    run_id = client.create_run(experiment.experiment_id).info.run_id
    config = make_config(
        [
            f"mlflow.tracking_uri={mlflow_server}",
            f"mlflow.registered_model_name={REGISTRY_TEST_MODEL}",
        ]
    )
    ours = _registry_project(tmp_path / "ours", tiny_processed, tiny_onnx, run_id, False)
    other = _registry_project(tmp_path / "other", tiny_processed, tiny_onnx, run_id, True)
    processed = config.paths.processed_dir
    digest, other_digest = (test_data_digest(root / processed) for root in (ours, other))
    assert digest != other_digest
    # (project, test accuracy, the version `best` must then name: 1-based registration order)
    registrations = [(other, 0.9, 1), (ours, 0.6, 2), (ours, 0.55, 2), (ours, 0.7, 4)]
    restore = _restore_tracking_uri()
    try:
        for number, (root, accuracy, best) in enumerate(registrations):
            # Each its own training run's bytes: identical bytes would keep their version.
            resave_onnx(tiny_onnx, root / "models" / "model.onnx", f"training run {number}")
            aliases = register_onnx_model(config, root, accuracy)
            assert aliases["best"] == str(best), (accuracy, aliases)
    finally:
        restore()
    assert client.get_model_version_by_alias(REGISTRY_TEST_MODEL, "best").version == "4"
    versions = {
        item.version: item.tags[TEST_DATA_TAG]
        for item in client.search_model_versions(f"name='{REGISTRY_TEST_MODEL}'")
    }
    assert versions == {"1": other_digest, "2": digest, "3": digest, "4": digest}


CONSOLE_TEST_MODEL = "flower_classifier_console_test"


@pytest.mark.slow
def test_console_of_the_evaluate_stage(evaluated, tmp_path, mlflow_server):
    """What `dvc repro > log` shows for evaluate (output to pipes, not a terminal): the link to
    the runs table once, none of MLflow's own links (its GenAI overview), and no Python warning
    the project causes."""
    source, _, _ = evaluated
    for folder in ("data", "models", "reports"):
        shutil.copytree(source / folder, tmp_path / folder)
    shutil.copytree(REPO_ROOT / "configs", tmp_path / "configs")
    copy_pipeline(tmp_path)
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("flower-model")
    run_id = client.create_run(experiment.experiment_id).info.run_id  # a fresh training run
    (tmp_path / "models" / "train_run.json").write_text(json.dumps({"mlflow_run_id": run_id}))
    overrides = [
        f"mlflow.tracking_uri={mlflow_server}",
        f"preprocess.image_size={TINY_SIZE}",
        "evaluate.timed_iterations=3",
        "evaluate.bootstrap_samples=50",
        "mlflow.register_model=always",  # the registration is what opens a fluent run
        f"mlflow.registered_model_name={CONSOLE_TEST_MODEL}",  # `latest` of the others stays
    ]
    result = run_stage_script(tmp_path, "evaluate", *overrides)
    everything = result.stdout + result.stderr
    assert everything.count("the runs table:\n  http") == 1, everything
    assert "View run" not in everything and "View experiment" not in everything, everything
    warnings = [line for line in everything.splitlines() if WARNING_LINE.search(line)]
    assert not warnings, warnings
    wide = [line for line in everything.splitlines() if len(line) > CONSOLE_WIDTH]
    assert not wide, wide
    written = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    assert client.get_run(run_id).data.metrics["test/accuracy"] == written["test"]["accuracy"]


@pytest.mark.slow
def test_mlflow_gone_is_one_warning_and_the_reports_stay(evaluated, tmp_path, capsys):
    """The server answered the stage's preflight, then went away (nothing listens on its port
    now): one warning line, like train's, no traceback, and every report and plot written."""
    source, config, _ = evaluated
    for folder in ("data", "models"):
        shutil.copytree(source / folder, tmp_path / folder)
    (tmp_path / "reports").mkdir()
    shutil.copy(source / "reports" / "train.json", tmp_path / "reports" / "train.json")
    gone = f"http://127.0.0.1:{free_port()}"
    config = config.model_copy(
        update={"mlflow": config.mlflow.model_copy(update={"tracking_uri": gone})}
    )
    started = time.monotonic()
    with pytest.MonkeyPatch.context() as patch:
        for name in MLFLOW_REQUEST_VARIABLES:
            patch.setenv(name, os.environ.get(name, ""))
        evaluate.run(config, tmp_path, {})
    elapsed = time.monotonic() - started
    errors = capsys.readouterr().err
    warnings = [line for line in errors.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and f"MLflow at {gone} stopped answering" in warnings[0], errors
    assert "dvc repro -f evaluate" in warnings[0] and "Traceback" not in errors, errors
    assert elapsed < TRACKING_GONE_LIMIT_S, f"{elapsed:.0f} s"
    for written in ("reports/metrics.json", "reports/evaluation.json", "plots/confusion.png"):
        assert (tmp_path / written).is_file(), written


@pytest.mark.slow
def test_an_unwritable_plots_folder_stops_evaluate_before_any_report_changes(evaluated, tmp_path):
    from flower_model.errors import OutputError
    from flower_model.evaluation.evaluate import evaluate as evaluate_all

    source, config, _ = evaluated
    root = tmp_path / "root"
    shutil.copytree(source, root)
    shutil.rmtree(root / "plots")
    (root / "plots").write_text("a file where the plots folder should be\n")  # root ignores chmod
    before = {path.name: path.read_bytes() for path in (root / "reports").iterdir()}
    with pytest.raises(OutputError, match="plots"):
        evaluate_all(config, root)
    assert {path.name: path.read_bytes() for path in (root / "reports").iterdir()} == before
