"""`resume=last` continues the run as it was made: its own config, and a new MLflow run (linked to
the old one by a tag) when the old run is not on the tracking server."""

import json

import pytest
import torch
from mlflow.tracking import MlflowClient

from flower_model.training.tracking import RESUMED_FROM_TAG
from tests.conftest import MLFLOW_REQUEST_VARIABLES, make_config, start_mlflow, stop_process
from tests.test_training import StopAfterFirstEpoch, _copy_project, _run, tiny_config

CUSTOM_LR_FACTOR = 3


@pytest.mark.slow
def test_resume_after_a_customised_config_uses_the_runs_own(
    tmp_path, tiny_processed, mlflow_server, capsys, monkeypatch
):
    for variable in MLFLOW_REQUEST_VARIABLES:
        monkeypatch.delenv(variable, raising=False)  # training sets them for its process
    project = _copy_project(tiny_processed, tmp_path / "project")
    custom_lr = make_config().train.lr * CUSTOM_LR_FACTOR  # as a customised params.yaml had it
    _run(project, tiny_config(mlflow_server, lr=custom_lr), callbacks=(StopAfterFirstEpoch(),))
    first_run = json.loads((project / "models" / "train_run.json").read_text())["mlflow_run_id"]
    capsys.readouterr()
    # `flower-model train resume=last` composes configs/: the default lr, another MLflow server.
    process, other_server = start_mlflow(tmp_path / "other-mlflow")
    try:
        resumed = tiny_config(other_server).model_copy(update={"resume": "last"})
        _run(project, resumed)
        new_run = json.loads((project / "models" / "train_run.json").read_text())["mlflow_run_id"]
        tags = MlflowClient(other_server).get_run(new_run).data.tags
        assert tags[RESUMED_FROM_TAG] == first_run and tags["resumed"] == "true"
    finally:
        stop_process(process)
        for variable in MLFLOW_REQUEST_VARIABLES:
            monkeypatch.delenv(variable, raising=False)
    out = capsys.readouterr().out
    assert f"continuing with the run's own train.lr={custom_lr!r}" in out
    assert f"MLflow run {first_run} is not on {other_server}" in out
    last = torch.load(project / "models" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["hyper_parameters"]["train"]["lr"] == custom_lr
    assert last["epoch"] == 1, "the second epoch ran"
    written = (project / "models" / "config.resolved.yaml").read_text()
    assert f"lr: {custom_lr}" in written
    assert new_run != first_run
    assert MlflowClient(mlflow_server).get_run(first_run)  # the old run stays where it was
