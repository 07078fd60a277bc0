"""Ctrl-C in a real stage process: exit 130 with one `interrupted` line, every process it started
gone, no semaphore left in /dev/shm, the previous outs kept.

Ctrl-C on a terminal signals the whole process group, so the tests start each run in its own
session and send SIGINT to that group, worker processes included.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import (
    REPO_ROOT,
    copy_pipeline,
    stop_process,
    tiny_console_overrides,
    train_stage_project,
)
from tests.helpers.photos import write_photo_set
from tests.test_fetch import S3_CREDENTIALS, SPEAK_LIMIT_S, silent_remote_project
from tests.test_multirun import DVC, FLOWER_MODEL, _dvc_project
from tests.test_multirun import _queued as queued_experiments

EXIT_INTERRUPTED = 130
READY_TIMEOUT_S = 300  # a loaded machine takes ~15 s to import torch; this only bounds a hang
EXIT_TIMEOUT_S = 60  # the promise: Ctrl-C ends a run within seconds; this bounds a hang
CLEANUP_TIMEOUT_S = 10  # orphaned helpers (the resource tracker) exit once their parent is gone
POLL_S = 0.05
PHOTOS_PER_CLASS = 300  # enough that decoding outlasts the interrupt
SHM = Path("/dev/shm")
SEMAPHORE_PREFIX = "sem.mp-"  # multiprocessing's named semaphores
DRAIN_REASON = "flower-model-test-drain"
QUEUE_RUN_S = 5.0  # after `dvc queue start`: its worker has taken up the sleeping experiment
SLEEPY_LR = 0.5  # the sleepy stage's combination that runs until it is stopped
SLEEPY_STAGE = f"""\
import time
from pathlib import Path

import yaml

lr = yaml.safe_load(Path("params.yaml").read_text())["train"]["lr"]
if lr == {SLEEPY_LR}:
    time.sleep(600)
Path("out.txt").write_text(str(lr))
"""
SLEEPY_DVC_YAML = "stages:\n  step:\n    cmd: python step.py\n    deps: [step.py]\n" + (
    "    params: [train.lr]\n    outs: [out.txt]\n"
)


def descendants(pid: int) -> set[int]:
    """Every living process below `pid`."""
    found, frontier = set(), [pid]
    while frontier:
        listing = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(frontier.pop())], capture_output=True, text=True
        )
        children = {int(word) for word in listing.stdout.split()}
        frontier += children - found
        found |= children
    return found


def alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def semaphores() -> set[str]:
    return {item.name for item in SHM.glob(f"{SEMAPHORE_PREFIX}*")} if SHM.is_dir() else set()


def interrupt(
    command: list[str],
    cwd: Path,
    ready: Callable[[str, set[int]], bool],
    logs: Path,
    signum: int = signal.SIGINT,
) -> tuple[int, str, str, set[int]]:
    """Run `command`; once `ready(its output so far, its descendants)`, send SIGINT to its process
    group (as a terminal's Ctrl-C does) or another `signum` to the process alone (as `kill`);
    (exit code, stdout, stderr, every descendant PID seen)."""
    out_file, err_file = logs / "stdout.txt", logs / "stderr.txt"
    with out_file.open("w") as out, err_file.open("w") as err:
        process = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=err, start_new_session=True)
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while process.poll() is None and time.monotonic() < deadline:
            seen |= descendants(process.pid)
            said = out_file.read_text(errors="replace") + err_file.read_text(errors="replace")
            if ready(said, seen):
                break
            time.sleep(POLL_S)
        assert process.poll() is None, f"ended before the interrupt:\n{err_file.read_text()}"
        if signum == signal.SIGINT:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        seen |= descendants(process.pid)
        try:
            code = process.wait(timeout=EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            hung = subprocess.run(
                ["ps", "-o", "pid,stat,wchan:20,cmd", "-g", str(process.pid)],
                capture_output=True,
                text=True,
            ).stdout
            raise AssertionError(f"no exit {EXIT_TIMEOUT_S} s after {signum}:\n{hung}") from None
    finally:
        stop_process(process)
    return code, out_file.read_text(), err_file.read_text(), seen


def assert_nothing_left(pids: set[int], semaphores_before: set[str]) -> None:
    deadline = time.monotonic() + CLEANUP_TIMEOUT_S
    while time.monotonic() < deadline:
        left = {pid for pid in pids if alive(pid)}
        leaked = semaphores() - semaphores_before
        if not left and not leaked:
            return
        time.sleep(POLL_S)
    assert not left, f"processes left after the interrupt: {sorted(left)}"
    assert not leaked, f"semaphores left in {SHM}: {sorted(leaked)}"


def assert_interrupted(code: int, stderr: str) -> None:
    assert code == EXIT_INTERRUPTED, stderr
    assert "Traceback" not in stderr, stderr
    assert [line for line in stderr.splitlines() if "interrupted" in line] == ["interrupted"]


@pytest.fixture(scope="module")
def photo_project(tmp_path_factory) -> Path:
    """A project root with configs/, dvc.yaml and PHOTOS_PER_CLASS photos per class."""
    root = tmp_path_factory.mktemp("signals")
    shutil.copytree(REPO_ROOT / "configs", root / "configs")
    copy_pipeline(root)
    write_photo_set(root / "data" / "raw" / "flower_photos", PHOTOS_PER_CLASS)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("delay_s", [0.0, 0.3])
def test_ctrl_c_in_preprocess_stops_its_workers(photo_project, tmp_path, delay_s):
    """Ctrl-C while the decoding workers start (0 s: the window where a worker used to die holding
    the pool's lock, and the run hung) and while they decode."""
    previous = photo_project / "data" / "processed"
    previous.mkdir(parents=True, exist_ok=True)
    (previous / "classes.json").write_text('["previous"]\n')
    semaphores_before = semaphores()
    started: list[float] = []  # when the resource tracker and a first worker were there

    def ready(_: str, seen: set[int]) -> bool:
        if not started and len(seen) >= 2:
            started.append(time.monotonic())
        return bool(started) and time.monotonic() - started[0] >= delay_s

    script = REPO_ROOT / "pipeline_stages" / "preprocess.py"
    command = [sys.executable, str(script), "preprocess.num_workers=2", "preprocess.image_size=32"]
    code, _, stderr, pids = interrupt(command, photo_project, ready, tmp_path)
    assert_interrupted(code, stderr)
    assert len(pids) >= 2, "the decoding workers never started"
    assert_nothing_left(pids, semaphores_before)
    assert (previous / "classes.json").read_text() == '["previous"]\n'


@pytest.mark.slow
def test_ctrl_c_in_train_exits_130(tmp_path, tiny_processed, mlflow_server):
    """Lightning catches Ctrl-C and calls sys.exit(1); the stage still says `interrupted`, 130."""
    project = train_stage_project(tmp_path / "project", tiny_processed)
    script = REPO_ROOT / "pipeline_stages" / "train.py"
    command = [sys.executable, str(script), *tiny_console_overrides(mlflow_server, 50)]
    logs = tmp_path / "logs"
    logs.mkdir()
    code, _, stderr, pids = interrupt(command, project, lambda out, _: "epoch 1/" in out, logs)
    assert_interrupted(code, stderr)
    assert_nothing_left(pids, set())


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.fixture
def sleepy_project(tmp_path, monkeypatch) -> Path:
    """The project's configs/ (so the CLI's validation passes) in a DVC repository whose one stage
    sleeps at train.lr=SLEEPY_LR and is done at once otherwise."""
    project = tmp_path / "sleepy"
    shutil.copytree(REPO_ROOT / "configs", project / "configs")
    shutil.copy(REPO_ROOT / "params.yaml", project / "params.yaml")
    (project / "step.py").write_text(SLEEPY_STAGE)
    (project / "dvc.yaml").write_text(SLEEPY_DVC_YAML)
    yield _dvc_project(project, monkeypatch)
    # --kill: a failed test may have left the sleeping experiment running
    subprocess.run([DVC, "queue", "stop", "--kill"], cwd=project, capture_output=True, timeout=120)


STOPPED = {signal.SIGINT: ("interrupted", EXIT_INTERRUPTED), signal.SIGTERM: ("terminated", 143)}


@pytest.mark.slow
@pytest.mark.parametrize("signum", sorted(STOPPED))
def test_ctrl_c_or_sigterm_to_multirun_stops_its_experiments(sleepy_project, tmp_path, signum):
    """The local launcher: the running experiment (the toy stage sleeps at lr 0.5) is killed and
    the queued one removed, for `kill` as for Ctrl-C; one line, 130 or 143."""
    word, exit_code = STOPPED[signum]
    command = [FLOWER_MODEL, "multirun", f"train.lr={SLEEPY_LR},0.1", "--poll-s", "0.5"]
    started: list[float] = []  # when `dvc queue start` was seen running

    def running(_: str, seen: set[int]) -> bool:
        if not started and any(b"queue\0start" in _cmdline(pid) for pid in seen):
            started.append(time.monotonic())
        return bool(started) and time.monotonic() - started[0] >= QUEUE_RUN_S

    code, _, stderr, _ = interrupt(command, sleepy_project, running, tmp_path, signum)
    assert code == exit_code, stderr
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{word}: stopped the sweep's"), stderr
    assert queued_experiments(sleepy_project) == []


def _scontrol_node(node: str, *settings: str) -> None:
    subprocess.run(["scontrol", "update", f"NodeName={node}", *settings], check=True)


@pytest.mark.slow
def test_a_sweep_on_a_drained_node_says_why_and_sigterm_cancels_its_job(
    sleepy_project, tmp_path, slurm_cluster
):
    """Nothing can start on a drained node: after PENDING_NOTICE_S the sweep names squeue's
    reason and the drained node with its reason; `kill` then cancels the job as Ctrl-C does."""
    from flower_model.pipeline.slurm_queue import PENDING_NOTICE_S

    node = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    _scontrol_node(node, "State=DRAIN", f"Reason={DRAIN_REASON}")
    try:
        command = [FLOWER_MODEL, "multirun", "train.lr=0.1", "--launcher", "slurm"]
        code, out, stderr, _ = interrupt(
            [*command, "--poll-s", "0.5"],
            sleepy_project,
            lambda out, _: "has started after" in out,
            tmp_path,
            signal.SIGTERM,
        )
    finally:
        _scontrol_node(node, "State=RESUME")
    notice = next(line for line in out.splitlines() if "has started after" in line)
    waited = int(re.search(r"has started after (\d+) s", notice)[1])
    assert PENDING_NOTICE_S <= waited < SPEAK_LIMIT_S, notice
    assert "squeue: " in notice and f"node {node} " in notice and DRAIN_REASON in notice, notice
    assert code == 143 and stderr.strip().startswith("terminated: stopped the sweep's"), stderr
    job_id = re.search(r"submitted Slurm job (\d+)", out)[1]
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    while (state := _sacct_state(job_id)) in ("", "PENDING"):
        assert time.monotonic() < deadline, f"job {job_id} still {state or 'unaccounted'}"
        time.sleep(POLL_S)
    assert state.startswith("CANCELLED"), state


def _sacct_state(job_id: str) -> str:
    listed = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id], capture_output=True, text=True
    )
    return (listed.stdout.split() or [""])[0]


@pytest.mark.slow
def test_a_pull_from_a_silent_remote_speaks_and_ctrl_c_stops_it(
    tmp_path, silent_endpoint, monkeypatch
):
    """`flower-model pull` from an S3 endpoint that accepts and never answers (it used to wait
    over 6 minutes in silence): a line within SPEAK_LIMIT_S, and Ctrl-C ends it and DVC."""
    endpoint, _ = silent_endpoint
    project = silent_remote_project(tmp_path / "project", endpoint)
    for name, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "logs").mkdir()
    started = time.monotonic()
    code, _, stderr, pids = interrupt(
        [FLOWER_MODEL, "pull"],
        project,
        lambda said, _: "no data from the remote for" in said,
        tmp_path / "logs",
    )
    assert time.monotonic() - started < SPEAK_LIMIT_S + EXIT_TIMEOUT_S
    notices = [line for line in stderr.splitlines() if line.startswith("dvc pull: no data")]
    assert len(notices) == 1 and "Ctrl-C stops it now" in notices[0], stderr
    assert code == EXIT_INTERRUPTED and stderr.strip().splitlines()[-1] == "interrupted", stderr
    assert_nothing_left(pids, semaphores())


def _digest(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*")}


@pytest.mark.slow
def test_ctrl_c_in_dvc_repro_of_preprocess_restores_its_outs(photo_project, tmp_path, monkeypatch):
    """The reported case: Ctrl-C 3 s into `dvc repro -s preprocess` hung in 3 of 7 tries with its
    outs deleted. Now the stage says `interrupted`, the previous outs come back from the DVC
    cache, nothing is left running, and dvc.lock is still DVC's."""
    project = tmp_path / "project"
    shutil.copytree(photo_project / "data" / "raw", project / "data" / "raw")
    for folder in ("configs", "flower_model", "pipeline_stages"):  # the stage's deps
        ignored = shutil.ignore_patterns("__pycache__")
        shutil.copytree(REPO_ROOT / folder, project / folder, ignore=ignored)
    # the stage's `python` is this environment's, as with the venv activated
    monkeypatch.setenv(
        "PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    )
    params = (REPO_ROOT / "params.yaml").read_text().replace("image_size: 224", "image_size: 32")
    (project / "params.yaml").write_text(params)
    for command in (["git", "init", "-q"], [DVC, "init", "-q"]):
        subprocess.run(command, cwd=project, check=True, capture_output=True)
    subprocess.run([DVC, "add", "-q", "data/raw/flower_photos"], cwd=project, check=True)
    copy_pipeline(project, "preprocess")  # the photos are a `dvc add`ed folder here
    first = subprocess.run([DVC, "repro"], cwd=project, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    before = _digest(project / "data" / "processed")
    lock = (project / "dvc.lock").read_text()
    semaphores_before = semaphores()

    def ready(_: str, seen: set[int]) -> bool:
        return len(seen) >= 4  # dvc, the stage, its resource tracker and a worker

    command = [DVC, "repro", "-s", "-f", "preprocess"]
    code, _, stderr, pids = interrupt(command, project, ready, tmp_path)
    assert code != 0, stderr
    assert "interrupted" in stderr.splitlines(), stderr
    assert "restored the previous data/processed" in stderr, stderr
    assert "Traceback" not in stderr, stderr
    assert_nothing_left(pids, semaphores_before)
    assert _digest(project / "data" / "processed") == before
    assert (project / "dvc.lock").read_text() == lock
