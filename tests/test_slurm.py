"""A real single-node Slurm cluster (scripts/slurm_cluster.sh): jobs through submitit, accounting,
several tasks per job, and Lightning DDP started by Slurm."""

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, slurm_command, tiny_ddp_overrides
from tests.helpers.slurm_jobs import train_in_task, where_am_i

JOB_TIMEOUT_S = 300  # a tiny job finishes in seconds; this bounds a stuck one
POLL_S = 0.5

pytestmark = pytest.mark.slow


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


def test_cluster_script_is_idempotent(slurm_cluster):
    assert "partition debug" in slurm_cluster
    again = slurm_command("up")
    assert again.returncode == 0 and "up in" in again.stdout
    status = slurm_command("status")
    assert status.stdout.startswith("up") and " idle " in status.stdout


def test_a_job_runs_through_submitit_and_is_accounted(slurm_cluster, tmp_path):
    job = _executor(tmp_path / "jobs", tasks_per_node=2, cpus_per_task=1).submit(where_am_i)
    results = job.results()  # one per task
    assert sorted(item["rank"] for item in results) == [0, 1]
    assert all(item["tasks"] == 2 for item in results)
    assert _sacct_state(job.job_id) == "COMPLETED"


def test_ddp_training_started_by_slurm(slurm_cluster, tmp_path, tiny_processed, mlflow_server):
    """Two Slurm tasks become Lightning's two DDP ranks (its SLURMEnvironment; gloo on CPU), and
    rank 0 alone writes the outs."""
    project = tmp_path / "project"
    shutil.copytree(tiny_processed / "data", project / "data")
    shutil.copytree(REPO_ROOT / "configs", project / "configs")
    shutil.copy(REPO_ROOT / "params.yaml", project / "params.yaml")
    overrides = tiny_ddp_overrides(mlflow_server)
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
