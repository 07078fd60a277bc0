"""What a training run tells MLflow about where it came from: the DVC experiment's name, the data
version dvc.lock records, the dataset input (name, digest, source), and the metrics the README
lists, and what MLflow's UI needs to open on the runs table with the headline columns. One tiny
real run of `dvc exp run`'s train stage, logged to the session's MLflow server."""

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml
from mlflow.tracking import MlflowClient

from flower_model.errors import FlowerModelError
from flower_model.evaluation.evaluate import QUANTIZED, REFERENCE, headline
from flower_model.evaluation.tracking import _flat_metrics
from flower_model.pipeline.stage import reads
from flower_model.training.callbacks import EVENTS_FILE, EventLog
from flower_model.training.tracking import (
    HEADLINE_METRICS,
    RUNS_VIEW_COLUMNS,
    content_hash,
    require_tracking_server,
)
from flower_model.training.train import train_model
from scripts.plots_browser import find_chromium
from tests.conftest import MLFLOW_REQUEST_VARIABLES, REPO_ROOT, TINY_MODEL, free_port, make_config
from tests.test_plots_browser import _require

EXPERIMENT_NAME = "tidy-tulip"  # what DVC puts in DVC_EXP_NAME for a `dvc exp run`
TINY_TRAIN = {
    "batch_size": 16,
    "eval_batch_size": 32,
    "max_epochs": 2,
    "warmup_epochs": 1,
    "num_workers": 0,
}
TRAINING_PREFIXES = ("train", "val", "time")  # the training run's metric families
# A metric name as the README writes it: `train/loss`, `lr`, `time/epoch_s`.
README_NAME = re.compile(r"`([a-z_]+(?:/[a-z0-9_]+)*)`")
# The one MLflow line a training run prints (TolerantMLFlowLogger.end).
RUNS_LINK = re.compile(r"^mlflow: run (\w+) logged; the runs table:\n  (\S+)$", re.MULTILINE)
GIT_SHA = re.compile(r"[0-9a-f]{40}")
# Headless Chromium as the task's screenshots ran it; virtual time lets MLflow's UI load its runs.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # CI containers run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=2400,1000",
    "--virtual-time-budget=20000",
)
CHROMIUM_TIMEOUT_S = 120
TABLE_HEADER = re.compile(r'<div [^>]*role="columnheader"[^>]*col-id="([^"]+)"')


class TrainedRun(NamedTuple):
    config: object
    lock_md5: str  # the md5 the project's dvc.lock gives the preprocess outputs
    run: object  # the MLflow run
    stdout: str
    stderr: str
    root: Path  # the project folder


def _lock_md5(processed) -> str:
    """A directory hash in dvc.lock's form ("<32 hex>.dir"), made from the arrays' content."""
    return hashlib.md5(content_hash(processed).encode()).hexdigest() + ".dir"


@pytest.fixture(scope="module")
def experiment_run(tmp_path_factory, tiny_processed, mlflow_server):
    """A tiny training run made as a stage of `dvc exp run` (DVC_EXP_NAME set)."""
    root = tmp_path_factory.mktemp("experiment_run")
    shutil.copytree(tiny_processed / "data", root / "data")
    config = make_config(
        ["trainer.log_every_n_steps=1", "trainer.accelerator=cpu"],
        model=TINY_MODEL,
        train=TINY_TRAIN,
        mlflow={"tracking_uri": mlflow_server},
    )
    processed = config.paths.processed_dir
    lock_md5 = _lock_md5(root / processed)
    out = {"path": processed.as_posix(), "hash": "md5", "md5": lock_md5}
    lock = {"schema": "2.0", "stages": {"preprocess": {"cmd": "preprocess", "outs": [out]}}}
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DVC_EXP_NAME", EXPERIMENT_NAME)
        for name in MLFLOW_REQUEST_VARIABLES:
            patch.setenv(name, os.environ.get(name, ""))
        patch.delenv("FLOWER_MODEL_EVENTS", raising=False)
        output, errors = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(errors):
            train_model(config, root, reads("train", config, REPO_ROOT))
    run_id = json.loads((root / "models" / "train_run.json").read_text())["mlflow_run_id"]
    run = MlflowClient(mlflow_server).get_run(run_id)
    return TrainedRun(config, lock_md5, run, output.getvalue(), errors.getvalue(), root)


@pytest.mark.slow
def test_the_run_is_tagged_with_the_dvc_experiment_and_the_locked_data_version(experiment_run):
    lock_md5, run = experiment_run.lock_md5, experiment_run.run
    assert run.data.tags["dvc_experiment"] == EXPERIMENT_NAME
    assert run.data.tags["data_dvc_md5"] == lock_md5


def test_the_dataset_input_names_the_preprocess_outputs(experiment_run):
    """MLflow's Datasets column: the data's name, the dvc.lock md5 as digest, and the folder the
    preprocess stage wrote as source."""
    config, lock_md5, run = experiment_run.config, experiment_run.lock_md5, experiment_run.run
    (item,) = run.inputs.dataset_inputs
    dataset = item.dataset
    assert dataset.name == config.data.name
    assert dataset.digest == lock_md5
    assert dataset.source_type == "local"
    assert json.loads(dataset.source)["uri"] == config.paths.processed_dir.as_posix()
    assert {tag.key: tag.value for tag in item.tags}["mlflow.data.context"] == "train"


def test_the_docs_list_the_metrics_a_training_run_logs(experiment_run):
    """docs/experiments.md's MLflow section names every metric the run has, and every training
    metric it names was logged (the list had lost `train/images_per_s`)."""
    run = experiment_run.run
    text = (REPO_ROOT / "docs" / "experiments.md").read_text()
    section = text.split("\n## MLflow\n", 1)[1].split("\n## ", 1)[0]
    documented = set(README_NAME.findall(section))
    logged = set(run.data.metrics)
    assert logged <= documented, f"not in the README: {sorted(logged - documented)}"
    training = {  # `train/...`, `val/...`, `time/...`; not the words `train` or `time`
        name for name in documented if "/" in name and name.split("/")[0] in TRAINING_PREFIXES
    }
    assert training <= logged, f"the README lists what is not logged: {training - logged}"


def test_the_printed_link_opens_the_runs_table_with_the_headline_columns(
    experiment_run, mlflow_server
):
    """The run prints one MLflow link: the experiment's runs route (not `#/experiments/<id>`,
    MLflow 3's GenAI overview), as model training, naming a shared view of the experiment whose
    columns are the git commit (the UI's Version column) and the headline metrics."""
    run, output = experiment_run.run, experiment_run.stdout
    assert "View experiment at" not in output, "MLflow's own link to the GenAI overview"
    ((run_id, url),) = RUNS_LINK.findall(output)
    assert run_id == run.info.run_id
    base, fragment = url.split("#", 1)
    route, query = fragment.split("?", 1)
    assert base == f"{mlflow_server}/"
    assert route == f"/experiments/{run.info.experiment_id}/runs"
    parameters = dict(urllib.parse.parse_qsl(query))
    assert parameters["workflowType"] == "machine_learning"
    experiment = MlflowClient(mlflow_server).get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    view_tag = "mlflow.sharedViewState." + parameters["viewStateShareKey"]
    view = json.loads(experiment.tags[view_tag])
    columns = ["attributes.`Version`"] + [f"metrics.`{name}`" for name in HEADLINE_METRICS]
    assert view["selectedColumns"] == view["columnOrder"] == columns


@pytest.mark.slow
def test_the_link_shows_the_runs_table_in_a_browser(experiment_run, mlflow_server, tmp_path):
    """MLflow's own UI at the printed link, in headless Chromium: the runs table with the view's
    columns, in the view's order (those of its metrics that some run of the experiment has: the
    session's server holds other tests' runs too), and no GenAI overview (which
    `#/experiments/<id>` showed: Traces, Token Usage)."""
    browser = _require(find_chromium(), "Chromium", "apt-get install chromium")
    (url,) = [link for _, link in RUNS_LINK.findall(experiment_run.stdout)]
    profile = tmp_path / "chromium-profile"
    page = subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=CHROMIUM_TIMEOUT_S,
        check=True,
    ).stdout
    runs = MlflowClient(mlflow_server).search_runs([experiment_run.run.info.experiment_id])
    logged = {f"metrics.`{name}`" for run in runs for name in run.data.metrics}
    expected = [column for column in RUNS_VIEW_COLUMNS if column in logged]
    assert "metrics.`val/loss`" in expected
    headers = [column for column in TABLE_HEADER.findall(page) if column in RUNS_VIEW_COLUMNS]
    # The UI leaves out a metric column that no run on the shown page has, and orders the
    # metric columns itself: the headers are the view's columns, Version first.
    assert headers[0] == "attributes.`Version`", TABLE_HEADER.findall(page)
    assert "metrics.`val/loss`" in headers and set(headers[1:]) <= set(expected), headers
    assert "Token Usage" not in page


def test_the_run_carries_what_the_runs_table_columns_show(experiment_run):
    """Version shows MLflow's git-commit tag: the SHA of the code that trained. Every headline
    column is a metric some stage logs: val/loss by training (this run), the others by evaluate
    (into the same run), under the names `dvc exp show` gives them."""
    run = experiment_run.run
    commit = run.data.tags["mlflow.source.git.commit"]
    assert GIT_SHA.fullmatch(commit) and commit == run.data.tags["git_sha"]
    detail = {REFERENCE: {"accuracy": 0.9, "macro_f1": 0.8}, QUANTIZED: {"accuracy": 0.85}}
    detail[QUANTIZED]["macro_f1"] = 0.84
    detail["reviewed_labels"] = {"accuracy": 0.91, "photos": 9, "reviewed": 1, "excluded": 1}
    latency = {"backends": {REFERENCE: [{"batch_size": 1, "p50_ms": 2.0, "p50_ms_per_image": 2.0}]}}
    result = {"metrics": headline(detail, latency, {"best": {"val/loss": 0.5}})}
    evaluated = _flat_metrics({**result, "detail": detail, "latency": latency})
    assert set(HEADLINE_METRICS) <= set(run.data.metrics) | set(evaluated)
    assert "val/loss" in run.data.metrics


def test_json_events_go_to_a_log_file_not_the_console(experiment_run):
    """The console gets human lines and one line naming the events file; the JSON events
    (train_start ... train_done, each naming the run) are in that file."""
    run, output = experiment_run.run, experiment_run.stdout
    shown = (experiment_run.config.paths.models_dir / EVENTS_FILE).as_posix()
    assert output.count(f"JSON events go to {shown}") == 1
    assert '{"' not in output and '{"' not in experiment_run.stderr, experiment_run.stderr
    path = experiment_run.root / shown
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert [event["event"] for event in events] == ["train_start", "train_done"]
    assert {event["run_id"] for event in events} == {run.info.run_id}


def test_events_reach_stderr_only_when_asked(tmp_path, capsys, monkeypatch):
    """FLOWER_MODEL_EVENTS=stderr: every event on stderr as well as in the file; otherwise the
    console gets the file's name once and stderr nothing."""
    events = EventLog(tmp_path / "models" / EVENTS_FILE, f"models/{EVENTS_FILE}")
    monkeypatch.delenv("FLOWER_MODEL_EVENTS", raising=False)
    events("train_start", run_id="a")
    events("train_done", run_id="a")
    quiet = capsys.readouterr()
    assert quiet.out.count(f"JSON events go to models/{EVENTS_FILE}") == 1 and not quiet.err
    monkeypatch.setenv("FLOWER_MODEL_EVENTS", "stderr")
    EventLog(tmp_path / "models" / EVENTS_FILE, EVENTS_FILE)("train_done", run_id="b")
    loud = capsys.readouterr()
    assert json.loads(loud.err) == {"event": "train_done", "run_id": "b"} and not loud.out
    lines = (tmp_path / "models" / EVENTS_FILE).read_text().splitlines()
    assert [json.loads(line)["run_id"] for line in lines] == ["a", "a", "b"], "appended"


def test_a_tracking_server_that_does_not_answer_is_one_line_naming_the_fix():
    """What `--dry-run` is to say before any work when nothing answers at mlflow.tracking_uri:
    one line with the URI and the commands that start the server."""
    uri = f"http://127.0.0.1:{free_port()}"
    config = make_config([f"mlflow.tracking_uri={uri}"])
    with pytest.raises(FlowerModelError) as raised:
        require_tracking_server(config.mlflow)
    message = str(raised.value)
    assert len(message.splitlines()) == 1 and uri in message
    assert "`make mlflow-server`" in message and "scripts/mlflow_server.sh ensure" in message


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_dry_run_says_when_the_tracking_server_does_not_answer(project, stage):
    """`--dry-run` said OK for an MLflow URI nothing answered on; the stage's preflight now asks
    the server, before looking at any input."""
    from tests.helpers.cli import run_in_process

    uri = f"http://127.0.0.1:{free_port()}"
    code, stdout, stderr = run_in_process(project, stage, "--dry-run", f"mlflow.tracking_uri={uri}")
    assert code == 2 and "dry run:" not in stdout
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and uri in lines[0] and "make mlflow-server" in lines[0]
