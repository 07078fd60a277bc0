"""`flower-model multirun`: DVC's grid and queue through our command, and the Slurm launcher.

The queue tests use a toy DVC project (one cheap stage, DVC's Hydra mode) so that they exercise
the real `dvc exp run --queue` / `dvc queue start` / `dvc exp show` cycle in seconds; `make
verify` runs the same command on the real pipeline. The Slurm tests run on the real local cluster
of scripts/slurm_cluster.sh (skipped, naming the install command, where Slurm is not installed).
"""

import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flower_model.config import validate
from flower_model.pipeline.multirun import (
    Combination,
    MultirunError,
    plan,
    progress_line,
    read_experiments,
    run_multirun,
    table,
)
from tests.conftest import REPO_ROOT, copy_pipeline, slurm_command

DVC = str(Path(sys.executable).with_name("dvc"))
FLOWER_MODEL = str(Path(sys.executable).with_name("flower-model"))
TOY_STAGE = """\
import json
import os
import time
from pathlib import Path

import yaml

params = yaml.safe_load(Path("params.yaml").read_text())
with open(os.environ["TOY_RUN_LOG"], "a") as log:  # outside the repo: counts real executions
    log.write(f"{params['train']['lr']} {params['model']['width']}\\n")
if params["train"]["lr"] == 0.3:
    raise SystemExit("error: toy stage: lr 0.3 fails on purpose")
if params["train"]["lr"] == 0.5:
    time.sleep(600)  # a job to cancel
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
JOB_WAIT_S = 300  # a toy job starts and ends in seconds; this bounds a stuck one
# Ctrl-C on a loaded machine (every core busy): the queue's processes go at once (SIGTERM, 3 s,
# SIGKILL; measured 3.1 s, against 13.7 s when they waited for `dvc exp show` and `dvc queue
# kill`), then DVC's bookkeeping (queue status, remove, kill) takes seconds per call.
PROCESS_STOP_LIMIT_S = 10
STOP_LIMIT_S = 90
POLL_S = 0.2
CPU_HOG = """\
import sys
import time

end = time.monotonic() + float(sys.argv[1])  # bounded, even if nobody stops it
while time.monotonic() < end:
    pass
"""


def _queued(project: Path) -> list[str]:
    """`dvc queue status` rows still queued or running."""
    status = subprocess.run(
        [DVC, "queue", "status"], cwd=project, capture_output=True, text=True, check=True
    ).stdout
    return [line for line in status.splitlines() if re.search(r"\b(Queued|Running)\b", line)]


@pytest.mark.slow  # DVC queues each combination: ~5 s each
def test_dvcs_grid_is_validated_before_anything_runs(config_project):
    combinations = plan(
        config_project,
        ["train.lr=0.001,0.003", "model=small_cnn,mobilenet_v3_small"],
        check=validate,
        adopt=("success",),
    )
    assert [item.label for item in combinations] == [
        "train.lr=0.001 model=small_cnn",
        "train.lr=0.001 model=mobilenet_v3_small",
        "train.lr=0.003 model=small_cnn",
        "train.lr=0.003 model=mobilenet_v3_small",
    ]
    assert combinations[2].params["train"]["lr"] == pytest.approx(0.003)
    assert len(_queued(config_project)) == 4, "DVC queued the grid"
    subprocess.run([DVC, "queue", "remove", "--queued"], cwd=config_project, check=True)
    for sweep, named in (
        (["train.lr=0.001,-1"], "train.lr=-1"),
        (["model=small_cnn,no_such_model"], "no_such_model"),
    ):
        with pytest.raises(MultirunError, match=re.escape(named)):
            plan(config_project, sweep, check=validate, adopt=("success",))
        assert _queued(config_project) == [], f"{sweep} left experiments in the queue"


def test_progress_and_table_show_states_params_and_metrics():
    metrics = {"reports/metrics.json": {"test": {"accuracy": 0.8, "macro_f1": 0.75}}}
    done = Combination("exp-a", {}, {"train.lr": "0.1"}, "success", metrics)
    running = Combination("exp-b", {}, {"train.lr": "0.2"}, "running")
    # DVC lists a failed experiment with the metrics file its workspace started from.
    failed = Combination("exp-c", {}, {"train.lr": "0.3"}, "failed", dict(metrics))
    assert progress_line([done, running]) == "[1/2 done] running: train.lr=0.2"
    lines = table([done, running, failed]).splitlines()
    assert lines[0].split() == ["experiment", "state", "train.lr", "test.accuracy", "test.macro_f1"]
    assert lines[1].split() == ["exp-a", "success", "0.1", "0.8000", "0.7500"]
    assert lines[2].split() == ["exp-b", "running", "0.2", "-", "-"]
    assert lines[3].split() == ["exp-c", "failed", "0.3", "-", "-"]


def _git(project: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=project, check=True, capture_output=True, timeout=60)


def _dvc_project(project: Path, monkeypatch) -> Path:
    """`project` as a committed git + DVC repository in DVC's Hydra mode (configs/config.yaml)."""
    for name, value in (("NAME", "test"), ("EMAIL", "test@localhost")):
        monkeypatch.setenv(f"GIT_AUTHOR_{name}", value)
        monkeypatch.setenv(f"GIT_COMMITTER_{name}", value)
    _git(project, "init", "-q")
    subprocess.run([DVC, "init", "-q"], cwd=project, check=True)
    for key, value in (("enabled", "true"), ("config_dir", "configs"), ("config_name", "config")):
        subprocess.run([DVC, "config", f"hydra.{key}", value], cwd=project, check=True)
    _git(project, "add", "-A")
    _git(project, "commit", "-qm", "project")
    return project


@pytest.fixture
def config_project(tmp_path, monkeypatch) -> Path:
    """The project's configs/, params.yaml and dvc.yaml in a DVC repository (nothing to run)."""
    project = tmp_path / "project"
    shutil.copytree(REPO_ROOT / "configs", project / "configs")
    shutil.copy(REPO_ROOT / "params.yaml", project / "params.yaml")
    copy_pipeline(project)
    yield _dvc_project(project, monkeypatch)
    subprocess.run([DVC, "queue", "remove", "--queued"], cwd=project, capture_output=True)


@pytest.fixture
def toy_project(tmp_path, monkeypatch) -> Path:
    project = tmp_path / "toy"
    (project / "configs" / "model").mkdir(parents=True)
    (project / "configs" / "config.yaml").write_text(
        "defaults:\n  - model: narrow\n  - slurm: default\n  - _self_\ntrain:\n  lr: 0.1\n"
    )
    (project / "configs" / "slurm").mkdir()
    shutil.copy(REPO_ROOT / "configs" / "slurm" / "default.yaml", project / "configs" / "slurm")
    (project / "configs" / "model" / "narrow.yaml").write_text("name: narrow\nwidth: 1\n")
    (project / "configs" / "model" / "wide.yaml").write_text("name: wide\nwidth: 2\n")
    (project / "step.py").write_text(TOY_STAGE)
    (project / "dvc.yaml").write_text(TOY_DVC_YAML)
    monkeypatch.setenv("TOY_RUN_LOG", str(tmp_path / "runs.log"))
    yield _dvc_project(project, monkeypatch)
    subprocess.run([DVC, "queue", "stop"], cwd=project, capture_output=True, timeout=120)


@pytest.mark.slow
def test_queued_sweep_runs_once_resumes_and_reuses_the_run_cache(toy_project, tmp_path):
    runs_log = tmp_path / "runs.log"
    out = io.StringIO()
    sweep = ["train.lr=0.1,0.2", "model=narrow,wide"]
    first = run_multirun(toy_project, sweep, jobs=2, poll_s=0.5, check=None, out=out)
    assert [item.state for item in first] == ["success"] * 4
    assert sorted(runs_log.read_text().splitlines()) == ["0.1 1", "0.1 2", "0.2 1", "0.2 2"]
    report = out.getvalue()
    assert "[4/4 done]" in report and "queued" in report
    scores = {
        item.label: item.metrics["reports/metrics.json"]["test"]["accuracy"] for item in first
    }
    assert scores["train.lr=0.2 model=wide"] == pytest.approx(0.4)
    assert scores["train.lr=0.1 model=narrow"] == pytest.approx(0.1)

    # Started again (as after an interruption): nothing is queued or run a second time, and
    # nothing is left in DVC's queue.
    again = io.StringIO()
    second = run_multirun(toy_project, sweep, jobs=1, poll_s=0.5, check=None, out=again)
    assert "4 of 4 already have results: skipped" in again.getvalue()
    assert "queued" not in again.getvalue()
    assert [item.name for item in second] == [item.name for item in first]
    assert len(runs_log.read_text().splitlines()) == 4
    assert _queued(toy_project) == []

    # A failing combination is named with the stage's own error, and reads as failed (the CLI
    # exits non-zero on it); the others of the sweep are skipped.
    failing = io.StringIO()
    third = run_multirun(
        toy_project, ["train.lr=0.1,0.3", "model=wide"], poll_s=0.5, check=None, out=failing
    )
    assert [item.state for item in third] == ["success", "failed"], failing.getvalue()
    assert re.search(
        r"^failed: train.lr=0.3 model=wide: error: toy stage: lr 0.3 fails on purpose; "
        r"log: `dvc queue logs \S+`$",
        failing.getvalue(),
        re.MULTILINE,
    ), failing.getvalue()

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
    assert len(runs_log.read_text().splitlines()) == 5


SWEEP_SCRIPT = """\
import sys
from pathlib import Path

from flower_model.pipeline.multirun import run_multirun

run_multirun(Path.cwd(), sys.argv[1:], poll_s=0.5, check=None)
"""


def _project_processes(project: Path) -> set[int]:
    """Live processes working inside `project` (DVC's workers, exec-run, the stage)."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and Path(os.readlink(entry / "cwd")).is_relative_to(project):
                found.add(int(entry.name))
        except OSError:
            continue
    return found


def _group(group: int) -> set[int]:
    """The live processes of process group `group`."""
    found = set()
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            if entry.name.isdigit() and os.getpgid(int(entry.name)) == group:
                found.add(int(entry.name))
    return found


def _kill(pids: set[int]) -> None:
    """SIGKILL each pid and its process group (never ours): a failed test leaves nothing."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            group = os.getpgid(pid)
            if group != os.getpgid(0):
                os.killpg(group, signal.SIGKILL)
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_ctrl_c_stops_the_sweeps_queued_and_running_experiments(toy_project):
    """DVC's workers run detached: without our Ctrl-C handling they would go on. With every core
    busy beside it, Ctrl-C still stops the sweep within STOP_LIMIT_S and leaves no process."""
    project = toy_project.resolve()
    hogs = [  # a loaded machine: one busy loop per core, each bounded in time and killed by pid
        subprocess.Popen([sys.executable, "-c", CPU_HOG, str(JOB_WAIT_S)])
        for _ in range(os.cpu_count() or 1)
    ]
    sweep = subprocess.Popen(
        [sys.executable, "-c", SWEEP_SCRIPT, "train.lr=0.5,0.6"],  # 0.5 sleeps, 0.6 waits
        cwd=toy_project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own group, so that the cleanup below can kill it whole
    )
    try:
        deadline = time.monotonic() + JOB_WAIT_S
        while not any("Running" in line for line in _queued(toy_project)):
            assert time.monotonic() < deadline and sweep.poll() is None, "nothing started"
            time.sleep(1)
        started = _project_processes(project) - _group(sweep.pid)  # DVC's queue, not the sweep
        assert started, "the running experiment has processes in the project"
        interrupted = time.monotonic()
        sweep.send_signal(signal.SIGINT)
        while started & _project_processes(project) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        stopped = time.monotonic() - interrupted
        output = sweep.communicate(timeout=JOB_WAIT_S)[0]
        took = time.monotonic() - interrupted
        left = _project_processes(project)
    finally:
        _kill({hog.pid for hog in hogs} | {sweep.pid} | _project_processes(project))
        for process in (*hogs, sweep):
            process.wait(timeout=JOB_WAIT_S)
    assert "KeyboardInterrupt" in output, output
    assert stopped < PROCESS_STOP_LIMIT_S, f"the experiment ran {stopped:.0f} s after Ctrl-C"
    assert took < STOP_LIMIT_S, f"Ctrl-C took {took:.0f} s under load\n{output}"
    assert not left, f"processes left after Ctrl-C: {sorted(left)} of {sorted(started)}"
    assert _queued(toy_project) == [], output


@pytest.mark.slow
def test_sweep_on_slurm_lands_as_dvc_experiments(toy_project, tmp_path, slurm_cluster):
    """`--launcher slurm` with the default resources (configs/slurm/default.yaml fits the local
    cluster): one Slurm job per combination, each a `dvc exp run --temp`; a failing combination
    is reported with its job id and log and the other still succeeds; started again, the sweep
    submits nothing for what has results."""
    out = io.StringIO()
    sweep = ["train.lr=0.1,0.3", "model=wide"]
    result = run_multirun(toy_project, sweep, poll_s=0.5, check=None, out=out, launcher="slurm")
    report = out.getvalue()
    print(report)
    states = {item.label: item.state for item in result}
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
        r"failed: train.lr=0.3 model=wide: Slurm job (\d+): `dvc exp run` exited \d+ "
        r"\(error: toy stage: lr 0.3 fails on purpose\); log (\S+)",
        report,
    )
    assert failure and failure[1] in job_ids and Path(failure[2]).is_file(), report
    done = next(item for item in result if item.state == "success")
    assert done.metrics["reports/metrics.json"]["test"]["accuracy"] == pytest.approx(0.2)
    assert done.name in read_experiments(toy_project), "the result is a DVC experiment"
    assert _queued(toy_project) == [], "DVC's queue only expanded the grid"

    again = io.StringIO()
    run_multirun(
        toy_project,
        ["train.lr=0.1", "model=wide"],
        poll_s=0.5,
        check=None,
        out=again,
        launcher="slurm",
    )
    assert "1 of 1 already have results: skipped" in again.getvalue()
    assert "submitted" not in again.getvalue()


@pytest.mark.slow
def test_a_request_no_node_can_hold_is_refused_before_submitting(toy_project, slurm_cluster):
    from flower_model.pipeline.slurm_sweep import SlurmSweepError

    before = subprocess.run(["squeue", "-h"], capture_output=True, text=True, check=True).stdout
    with pytest.raises(
        SlurmSweepError, match=r"slurm.mem_gb=1000 fits no node of partition debug "
    ):
        run_multirun(
            toy_project, ["train.lr=0.1,0.2", "slurm.mem_gb=1000"], check=None, launcher="slurm"
        )
    with pytest.raises(SlurmSweepError, match=r"slurm.cpus_per_task=64 fits no node"):
        run_multirun(toy_project, ["slurm.cpus_per_task=64"], check=None, launcher="slurm")
    with pytest.raises(SlurmSweepError, match=r"slurm.partition=gpu: no such partition"):
        run_multirun(toy_project, ["slurm.partition=gpu"], check=None, launcher="slurm")
    after = subprocess.run(["squeue", "-h"], capture_output=True, text=True, check=True).stdout
    assert after == before, "nothing was submitted"
    assert _queued(toy_project) == [], "nothing was left queued"


@pytest.mark.slow
def test_a_stopped_controller_is_one_line_before_any_work(config_project, slurm_cluster):
    pid_file = Path("/run/flower-slurm/slurmctld.pid")
    os.kill(int(pid_file.read_text()), signal.SIGTERM)
    try:
        deadline = time.monotonic() + JOB_WAIT_S
        while subprocess.run(["scontrol", "ping"], capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, "slurmctld did not stop"
            time.sleep(0.5)
        swept = subprocess.run(
            [FLOWER_MODEL, "multirun", "train.lr=0.001,0.003", "--launcher", "slurm"],
            cwd=config_project,
            capture_output=True,
            text=True,
            timeout=JOB_WAIT_S,
        )
    finally:
        restarted = slurm_command("up")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert swept.returncode != 0
    assert "Traceback" not in swept.stderr, swept.stderr
    lines = swept.stderr.strip().splitlines()
    assert len(lines) == 1 and "the Slurm controller does not answer" in lines[0], swept.stderr
    assert "slurm_cluster.sh up" in lines[0]
    assert _queued(config_project) == []


def _temp_workspaces(project: Path) -> list[Path]:
    """`dvc exp run --temp` workspaces (tmp*) and run records (run/<rev>/) under .dvc/tmp/exps/."""
    folder = project / ".dvc" / "tmp" / "exps" / "standalone"
    return [*folder.glob("tmp*"), *folder.glob("run/*")]


@pytest.mark.slow
def test_a_cancelled_job_is_named_cancelled_and_its_workspace_removed(toy_project, slurm_cluster):
    out = io.StringIO()
    sweep = threading.Thread(
        target=run_multirun,
        args=(toy_project, ["train.lr=0.5"]),
        kwargs={"poll_s": 0.5, "check": None, "out": out, "launcher": "slurm"},
    )
    sweep.start()
    deadline = time.monotonic() + JOB_WAIT_S
    while not (
        re.search(r"submitted Slurm job (\d+)", out.getvalue()) and _temp_workspaces(toy_project)
    ):
        assert time.monotonic() < deadline and sweep.is_alive(), out.getvalue()
        time.sleep(0.5)
    job_id = re.search(r"submitted Slurm job (\d+)", out.getvalue())[1]
    time.sleep(2)  # the stage is running (it sleeps)
    subprocess.run(["scancel", job_id], check=True)
    sweep.join(JOB_WAIT_S)
    report = out.getvalue()
    assert not sweep.is_alive(), report
    assert re.search(
        rf"^failed: train.lr=0.5: Slurm job {job_id} CANCELLED; log \S+$", report, re.M
    ), report
    assert "exited" not in report, report
    assert _temp_workspaces(toy_project) == [], "the cancelled run's temp workspace is left"


@pytest.mark.slow
def test_a_timed_out_job_is_named_timeout_and_its_workspace_removed(toy_project, slurm_cluster):
    out = io.StringIO()
    # The toy stage sleeps 10 minutes; submitit gives notice 90 s before a 1-minute limit: at once
    sweep = ["train.lr=0.5", "slurm.timeout_min=1"]
    (item,) = run_multirun(toy_project, sweep, poll_s=1, check=None, out=out, launcher="slurm")
    report = out.getvalue()
    assert item.state == "failed", report
    assert re.search(
        r"^failed: .*: Slurm job \d+ TIMEOUT: stopped at its time limit .*; log \S+$", report, re.M
    ), report
    assert _temp_workspaces(toy_project) == [], "the timed-out run's temp workspace is left"


@pytest.mark.parametrize(
    "words",
    [
        ["model=small_cnn", "train.lr=0.0031"],  # a config group with other keys, and a leaf
        ["model=mobilenet_v3_small", "model.dropout=0.15"],
        ["resume=models/absent.ckpt", "slurm.cpus_per_task=1"],  # a string, null before
    ],
)
def test_a_slurm_job_composes_exactly_its_combinations_params(words):
    """A Slurm job gets `++key=value`/`~key` overrides that DVC composes back into the very
    params DVC's grid composed (the skip-what-ran check compares them)."""
    from flower_model.config import compose_raw
    from flower_model.pipeline.slurm_sweep import hydra_overrides

    wanted, baseline = compose_raw(REPO_ROOT, words), compose_raw(REPO_ROOT)
    overrides = hydra_overrides(wanted, baseline)
    assert overrides and compose_raw(REPO_ROOT, overrides) == wanted
    removed = {"model": {**baseline["model"], "gone": [1, "a b"]}}
    assert "~model.gone" in hydra_overrides(baseline, {**baseline, **removed})


def test_slurm_launcher_needs_sbatch_and_valid_resources(tmp_path, monkeypatch):
    from flower_model.pipeline.slurm_sweep import SlurmSweepError, resources

    with pytest.raises(MultirunError, match="--launcher must be one of local, slurm"):
        run_multirun(tmp_path, ["train.lr=0.1"], launcher="cloud")
    with pytest.raises(SlurmSweepError, match="no `slurm` section"):
        resources({})
    assert resources({"slurm": {"partition": "debug", "mem_gb": 8}}) == {
        "slurm_partition": "debug",
        "mem_gb": 8,
    }
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    with pytest.raises(SlurmSweepError, match="no `sbatch` on PATH"):
        run_multirun(tmp_path, ["train.lr=0.1"], launcher="slurm")
