"""`flower-model multirun`: grid expansion, validation before queueing, and a real DVC queue.

The queue test uses a toy DVC project (one cheap stage, DVC's Hydra mode) so that it exercises
the real `dvc exp run --queue` / `dvc queue start` / `dvc exp show` cycle in seconds; `make
verify` runs the same command on the real pipeline.
"""

import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flower_model.pipeline.multirun import (
    Combination,
    MultirunError,
    expand_grid,
    plan,
    progress_line,
    read_experiments,
    run_multirun,
    table,
)
from tests.conftest import REPO_ROOT

DVC = str(Path(sys.executable).with_name("dvc"))
TOY_STAGE = """\
import json
import os
from pathlib import Path

import yaml

params = yaml.safe_load(Path("params.yaml").read_text())
with open(os.environ["TOY_RUN_LOG"], "a") as log:  # outside the repo: counts real executions
    log.write(f"{params['train']['lr']} {params['model']['width']}\\n")
if params["train"]["lr"] == 0.3:
    raise SystemExit("toy stage: lr 0.3 fails on purpose")
Path("reports").mkdir(exist_ok=True)
score = params["train"]["lr"] * params["model"]["width"]
Path("reports/metrics.json").write_text(json.dumps({"test": {"accuracy": score}}))
Path("out.txt").write_text(str(params))
"""
TOY_DVC_YAML = """\
stages:
  step:
    cmd: python step.py
    deps: [step.py]
    params: [train, model]
    outs: [out.txt]
    metrics: [{reports/metrics.json: {cache: false}}]
"""


def test_grid_is_the_cartesian_product_in_the_order_given():
    grid = expand_grid(["train.lr=0.001,0.003", "model=small_cnn,resnet18", "train.seed=1"])
    assert grid == [
        ["train.lr=0.001", "model=small_cnn", "train.seed=1"],
        ["train.lr=0.001", "model=resnet18", "train.seed=1"],
        ["train.lr=0.003", "model=small_cnn", "train.seed=1"],
        ["train.lr=0.003", "model=resnet18", "train.seed=1"],
    ]
    assert expand_grid(["train.max_epochs=range(1,4)"]) == [
        [f"train.max_epochs={epochs}"] for epochs in (1, 2, 3)
    ]


def test_every_combination_is_validated_before_anything_is_queued():
    combinations = plan(REPO_ROOT, ["train.lr=0.001,0.003", "model=small_cnn,mobilenet_v3_small"])
    assert [item.params["model"]["name"] for item in combinations] == [
        "small_cnn",
        "mobilenet_v3_small",
    ] * 2
    assert combinations[2].params["train"]["lr"] == pytest.approx(0.003)
    with pytest.raises(MultirunError, match="train.lr=-1"):
        plan(REPO_ROOT, ["train.lr=0.001,-1"])
    with pytest.raises(MultirunError, match="model=no_such_model"):
        plan(REPO_ROOT, ["model=small_cnn,no_such_model"])


def test_progress_and_table_show_states_params_and_metrics():
    done = Combination(["train.lr=0.1"], {}, "exp-a", "success", {"reports/metrics.json": {}})
    done.metrics["reports/metrics.json"] = {"test": {"accuracy": 0.8, "macro_f1": 0.75}}
    running = Combination(["train.lr=0.2"], {}, "exp-b", "running")
    # DVC lists a failed experiment with the metrics file its workspace started from.
    failed = Combination(["train.lr=0.3"], {}, "exp-c", "failed", dict(done.metrics))
    assert progress_line([done, running]) == "[1/2 done] running: train.lr=0.2"
    lines = table([done, running, failed]).splitlines()
    assert lines[0].split() == ["experiment", "state", "train.lr", "test.accuracy", "test.macro_f1"]
    assert lines[1].split() == ["exp-a", "success", "0.1", "0.8000", "0.7500"]
    assert lines[2].split() == ["exp-b", "running", "0.2", "-", "-"]
    assert lines[3].split() == ["exp-c", "failed", "0.3", "-", "-"]


def _git(project: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=project, check=True, capture_output=True, timeout=60)


@pytest.fixture
def toy_project(tmp_path, monkeypatch) -> Path:
    project = tmp_path / "toy"
    (project / "configs" / "model").mkdir(parents=True)
    (project / "configs" / "config.yaml").write_text(
        "defaults:\n  - model: narrow\n  - slurm: default\n  - _self_\ntrain:\n  lr: 0.1\n"
    )
    (project / "configs" / "slurm").mkdir()
    shutil.copy(REPO_ROOT / "configs" / "slurm" / "default.yaml", project / "configs" / "slurm")
    (project / "configs" / "model" / "narrow.yaml").write_text("width: 1\n")
    (project / "configs" / "model" / "wide.yaml").write_text("width: 2\n")
    (project / "step.py").write_text(TOY_STAGE)
    (project / "dvc.yaml").write_text(TOY_DVC_YAML)
    for name, value in (("NAME", "test"), ("EMAIL", "test@localhost")):
        monkeypatch.setenv(f"GIT_AUTHOR_{name}", value)
        monkeypatch.setenv(f"GIT_COMMITTER_{name}", value)
    monkeypatch.setenv("TOY_RUN_LOG", str(tmp_path / "runs.log"))
    _git(project, "init", "-q")
    subprocess.run([DVC, "init", "-q"], cwd=project, check=True)
    for key, value in (("enabled", "true"), ("config_dir", "configs"), ("config_name", "config")):
        subprocess.run([DVC, "config", f"hydra.{key}", value], cwd=project, check=True)
    _git(project, "add", "-A")
    _git(project, "commit", "-qm", "toy")
    yield project
    subprocess.run([DVC, "queue", "stop"], cwd=project, capture_output=True, timeout=120)


@pytest.mark.slow
def test_queued_sweep_runs_once_resumes_and_reuses_the_run_cache(toy_project, tmp_path):
    runs_log = tmp_path / "runs.log"
    out = io.StringIO()
    sweep = ["train.lr=0.1,0.2", "model=narrow,wide"]
    first = run_multirun(toy_project, sweep, jobs=1, poll_s=0.5, check=None, out=out)
    assert [item.state for item in first] == ["success"] * 4
    assert sorted(runs_log.read_text().splitlines()) == ["0.1 1", "0.1 2", "0.2 1", "0.2 2"]
    report = out.getvalue()
    assert "[4/4 done]" in report and "queued" in report
    scores = {
        item.label(): item.metrics["reports/metrics.json"]["test"]["accuracy"] for item in first
    }
    assert scores["train.lr=0.2 model=wide"] == pytest.approx(0.4)
    assert scores["train.lr=0.1 model=narrow"] == pytest.approx(0.1)

    # Started again (as after an interruption): nothing is queued or run a second time.
    again = io.StringIO()
    second = run_multirun(toy_project, sweep, jobs=1, poll_s=0.5, check=None, out=again)
    assert "4 of 4 already have results: skipped" in again.getvalue()
    assert "queued" not in again.getvalue()
    assert [item.name for item in second] == [item.name for item in first]
    assert len(runs_log.read_text().splitlines()) == 4

    # A combination that already ran, run again as a new experiment: DVC's run cache restores
    # its outputs instead of executing the stage.
    rerun = subprocess.run(
        [DVC, "exp", "run", "-S", "train.lr=0.2", "-S", "model=wide"],
        cwd=toy_project,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "Stage 'step' is cached - skipping run" in rerun.stdout + rerun.stderr
    assert len(runs_log.read_text().splitlines()) == 4


@pytest.mark.slow
def test_sweep_on_slurm_lands_as_dvc_experiments(toy_project, tmp_path, slurm_cluster):
    """`--launcher slurm`: one Slurm job per combination, each a `dvc exp run --temp`; a failing
    combination is reported with its job id and log and the other still succeeds; started
    again, the sweep submits nothing for what has results."""
    out = io.StringIO()
    fits_here = ["slurm.gpus_per_node=0", "slurm.cpus_per_task=1", "slurm.mem_gb=1"]
    sweep = ["train.lr=0.1,0.3", "model=wide", *fits_here]
    result = run_multirun(toy_project, sweep, poll_s=0.5, check=None, out=out, launcher="slurm")
    report = out.getvalue()
    print(report)
    states = {item.label().split(" slurm.")[0]: item.state for item in result}
    assert states == {"train.lr=0.1 model=wide": "success", "train.lr=0.3 model=wide": "failed"}
    job_ids = re.findall(r"submitted Slurm job (\d+): ", report)
    assert len(job_ids) == 2, report
    accounted = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "JobID", "-j", ",".join(job_ids)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert sorted(accounted) == sorted(job_ids), "both ran as Slurm jobs"
    failure = re.search(
        r"failed: train.lr=0.3 model=wide slurm\S* \S* \S*: Slurm job (\d+): "
        r"`dvc exp run` exited \d+ .*; log (\S+)",
        report,
    )
    assert failure and failure[1] in job_ids and Path(failure[2]).is_file(), report
    done = next(item for item in result if item.state == "success")
    assert done.metrics["reports/metrics.json"]["test"]["accuracy"] == pytest.approx(0.2)
    names = {experiment["name"] for experiment in read_experiments(toy_project)}
    assert done.name in names, "the result is a DVC experiment"

    again = io.StringIO()
    run_multirun(
        toy_project,
        ["train.lr=0.1", "model=wide", *fits_here],
        poll_s=0.5,
        check=None,
        out=again,
        launcher="slurm",
    )
    assert "1 of 1 already have results: skipped" in again.getvalue()
    assert "submitted" not in again.getvalue()


def test_slurm_launcher_needs_sbatch_and_valid_resources(tmp_path, monkeypatch):
    from flower_model.pipeline.slurm_sweep import SlurmSweepError, resources

    with pytest.raises(MultirunError, match="--launcher must be one of local, slurm"):
        run_multirun(tmp_path, ["train.lr=0.1"], launcher="cloud")
    with pytest.raises(MultirunError, match="slurm.gpus_per_node"):
        plan(REPO_ROOT, ["slurm.gpus_per_node=-1"])
    (combination,) = plan(REPO_ROOT, ["slurm.partition=debug", "slurm.gpus_per_node=0"])
    assert resources(combination.params)["slurm_partition"] == "debug"
    with pytest.raises(SlurmSweepError, match="no `slurm` section"):
        resources({})
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    with pytest.raises(SlurmSweepError, match="no `sbatch` on PATH"):
        run_multirun(tmp_path, ["train.lr=0.1"], launcher="slurm")
