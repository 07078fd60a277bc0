"""A real single-node Slurm cluster (scripts/slurm_cluster.sh): jobs through submitit, accounting,
several tasks per job, and Lightning DDP started by Slurm; and that `make test` installs none of
it (nor Chromium, nor npm packages): `make ci-deps` does."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import (
    REPO_ROOT,
    SLURM_SCRIPT,
    _slurm_missing,
    copy_pipeline,
    slurm_command,
    tiny_ddp_overrides,
)
from tests.helpers.slurm_jobs import train_in_task, where_am_i

JOB_TIMEOUT_S = 300  # a tiny job finishes in seconds; this bounds a stuck one
POLL_S = 0.5

# System packages and npm; `make setup` (pip into the project's own .venv) is not the system.
INSTALLERS = ("apt-get", "npm")


def test_make_test_installs_nothing():
    """Not even the plots template when its recipe changed (-W: as if build_plots_template.py
    were new)."""
    planned = subprocess.run(
        ["make", "-n", "-W", "scripts/build_plots_template.py", "test"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert not [word for word in INSTALLERS if word in planned], planned
    assert "ci-deps" not in planned and "slurm_cluster.sh" not in planned, planned


def test_without_slurm_its_tests_skip_naming_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing of Slurm on PATH
    assert "`sudo make ci-deps` installs it" in _slurm_missing()


def test_cluster_script_up_installs_nothing(tmp_path):
    """`up` with a package missing refuses, naming `install`, and never calls apt-get."""
    calls = tmp_path / "calls"
    for name, status in (("dpkg", 1), ("apt-get", 0), ("id", 0)):
        fake = tmp_path / name
        fake.write_text(
            f'#!/bin/sh\necho {name} "$@" >>{calls}\n[ {name} = id ] && echo 0\nexit {status}\n'
        )
        fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    up = subprocess.run([str(SLURM_SCRIPT), "up"], capture_output=True, text=True, env=env)
    assert up.returncode != 0
    assert "run `sudo scripts/slurm_cluster.sh install` first" in up.stderr, up.stderr
    assert "apt-get" not in calls.read_text(), calls.read_text()


def _executor(folder: Path, **parameters):
    import submitit

    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(
        timeout_min=10,
        slurm_partition="debug",
        slurm_setup=[f"export PYTHONPATH={REPO_ROOT}"],  # the job imports this checkout
        **parameters,
    )
    return executor


def _sacct_state(job_id: str) -> str:
    """The job's final state in Slurm's accounting (a result file can come before the end)."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        state = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if state not in ("", "PENDING", "RUNNING", "COMPLETING") or time.monotonic() > deadline:
            return state
        time.sleep(POLL_S)


@pytest.mark.slow
def test_cluster_script_is_idempotent(slurm_cluster):
    assert "partition debug" in slurm_cluster
    again = slurm_command("up")
    assert again.returncode == 0 and "up in" in again.stdout
    status = slurm_command("status")
    assert status.stdout.startswith("up") and " idle " in status.stdout


@pytest.mark.slow
def test_a_job_runs_through_submitit_and_is_accounted(slurm_cluster, tmp_path):
    job = _executor(tmp_path / "jobs", tasks_per_node=2, cpus_per_task=1).submit(where_am_i)
    results = job.results()  # one per task
    assert sorted(item["rank"] for item in results) == [0, 1]
    assert all(item["tasks"] == 2 for item in results)
    assert _sacct_state(job.job_id) == "COMPLETED"


# Parity of DDP with one process. DistributedSampler gives rank r the items r, r+2, ... of the
# epoch's one permutation, so 2 ranks x 4 photos make exactly the single process's batches of 8,
# and DDP's averaged gradient is that batch's gradient. What still differs per rank is random: the
# augmentation draws (seeded by rank) and dropout, so both are off here, and BatchNorm uses its
# running statistics (train.freeze_bn_stats, the default recipe) rather than 4-photo batch ones.
# Left over is float summation order (gloo's all-reduce vs one batch mean): 2.4e-7 on the losses
# after 14 steps, measured; DDP_LOSS_TOLERANCE leaves room for 40x that. Accuracy and the step
# count must be equal.
DDP_PARITY = ["train.augment.enabled=false", "model.dropout=0"]
DDP_LOSS_TOLERANCE = 1e-5


def _epoch_rows(project: Path) -> list[dict]:
    import csv

    with (project / "plots" / "train" / "epochs.csv").open() as rows:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(rows)]


def _tiny_project(tiny_processed: Path, project: Path) -> Path:
    shutil.copytree(tiny_processed / "data", project / "data")
    shutil.copytree(REPO_ROOT / "configs", project / "configs")
    shutil.copy(REPO_ROOT / "params.yaml", project / "params.yaml")
    copy_pipeline(project)
    return project


@pytest.mark.slow
def test_ddp_training_started_by_slurm(slurm_cluster, tmp_path, tiny_processed, mlflow_server):
    """Two Slurm tasks become Lightning's two DDP ranks (its SLURMEnvironment; gloo on CPU), rank
    0 alone writes the outs, and the run equals one process training on the same global batch."""
    project = _tiny_project(tiny_processed, tmp_path / "project")
    overrides = tiny_ddp_overrides(mlflow_server, devices=2, batch_size=4) + DDP_PARITY
    executor = _executor(tmp_path / "jobs", tasks_per_node=2, cpus_per_task=1)
    job = executor.submit(train_in_task, str(project), overrides)
    assert sorted(job.results()) == [0, 1]
    assert _sacct_state(job.job_id) == "COMPLETED"
    for rank in (0, 1):
        log = job.task(rank).stderr() or ""
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in log, log[-2000:]
    assert json.loads((project / "reports" / "train.json").read_text())["epochs"] == 1
    assert (project / "models" / "model.ckpt").is_file()
    assert len(list((project / "models" / "checkpoints").glob("last*.ckpt"))) == 1

    single = _tiny_project(tiny_processed, tmp_path / "single")
    single_overrides = tiny_ddp_overrides(mlflow_server, devices=1, batch_size=8) + DDP_PARITY
    trained = subprocess.run(
        [sys.executable, str(REPO_ROOT / "pipeline_stages" / "train.py"), *single_overrides],
        cwd=single,
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S,
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    (ddp_row,), (single_row,) = _epoch_rows(project), _epoch_rows(single)
    assert ddp_row.keys() == single_row.keys()
    for key in ddp_row:
        tolerance = DDP_LOSS_TOLERANCE if "loss" in key else 0
        assert ddp_row[key] == pytest.approx(single_row[key], abs=tolerance), key
