"""What a training run tells MLflow about where it came from: the DVC experiment's name, the data
version dvc.lock records, the dataset input (name, digest, source), and the metrics the README
lists. One tiny real run of `dvc exp run`'s train stage, logged to the session's MLflow server."""

import hashlib
import json
import os
import re
import shutil

import pytest
import yaml
from mlflow.tracking import MlflowClient

from flower_model.pipeline.stage import reads
from flower_model.training.tracking import content_hash
from flower_model.training.train import train_model
from tests.conftest import MLFLOW_REQUEST_VARIABLES, REPO_ROOT, TINY_MODEL, make_config

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


def _lock_md5(processed) -> str:
    """A directory hash in dvc.lock's form ("<32 hex>.dir"), made from the arrays' content."""
    return hashlib.md5(content_hash(processed).encode()).hexdigest() + ".dir"


@pytest.fixture(scope="module")
def experiment_run(tmp_path_factory, tiny_processed, mlflow_server):
    """(config, the md5 the project's dvc.lock gives the preprocess outputs, the MLflow run) of a
    tiny training run made as a stage of `dvc exp run` (DVC_EXP_NAME set)."""
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
        train_model(config, root, reads("train", config, REPO_ROOT))
    run_id = json.loads((root / "models" / "train_run.json").read_text())["mlflow_run_id"]
    return config, lock_md5, MlflowClient(mlflow_server).get_run(run_id)


def test_the_run_is_tagged_with_the_dvc_experiment_and_the_locked_data_version(experiment_run):
    _, lock_md5, run = experiment_run
    assert run.data.tags["dvc_experiment"] == EXPERIMENT_NAME
    assert run.data.tags["data_dvc_md5"] == lock_md5


def test_the_dataset_input_names_the_preprocess_outputs(experiment_run):
    """MLflow's Datasets column: the data's name, the dvc.lock md5 as digest, and the folder the
    preprocess stage wrote as source."""
    config, lock_md5, run = experiment_run
    (item,) = run.inputs.dataset_inputs
    dataset = item.dataset
    assert dataset.name == config.data.name
    assert dataset.digest == lock_md5
    assert dataset.source_type == "local"
    assert json.loads(dataset.source)["uri"] == config.paths.processed_dir.as_posix()
    assert {tag.key: tag.value for tag in item.tags}["mlflow.data.context"] == "train"


def test_the_readme_lists_the_metrics_a_training_run_logs(experiment_run):
    """README.md's MLflow section names every metric the run has, and every training metric it
    names was logged (the list had lost `train/images_per_s`)."""
    _, _, run = experiment_run
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("\n### MLflow\n", 1)[1].split("\n### ", 1)[0]
    documented = set(README_NAME.findall(section))
    logged = set(run.data.metrics)
    assert logged <= documented, f"not in the README: {sorted(logged - documented)}"
    training = {  # `train/...`, `val/...`, `time/...`; not the words `train` or `time`
        name for name in documented if "/" in name and name.split("/")[0] in TRAINING_PREFIXES
    }
    assert training <= logged, f"the README lists what is not logged: {training - logged}"
