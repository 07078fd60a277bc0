"""Ctrl-C in a real stage process: exit 130 with one `interrupted` line, every process it started
gone, no semaphore left in /dev/shm, the previous outs kept.

Ctrl-C on a terminal signals the whole process group, so the tests start each run in its own
session and send SIGINT to that group, worker processes included.
"""

import os
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

EXIT_INTERRUPTED = 130
READY_TIMEOUT_S = 300  # a loaded machine takes ~15 s to import torch; this only bounds a hang
EXIT_TIMEOUT_S = 60  # the promise: Ctrl-C ends a run within seconds; this bounds a hang
CLEANUP_TIMEOUT_S = 10  # orphaned helpers (the resource tracker) exit once their parent is gone
POLL_S = 0.05
PHOTOS_PER_CLASS = 120  # enough that decoding outlasts the interrupt
SHM = Path("/dev/shm")
SEMAPHORE_PREFIX = "sem.mp-"  # multiprocessing's named semaphores


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
    command: list[str], cwd: Path, ready: Callable[[str, set[int]], bool], logs: Path
) -> tuple[int, str, str, set[int]]:
    """Run `command`, send its process group SIGINT once `ready(stdout so far, its descendants)`;
    (exit code, stdout, stderr, every descendant PID seen)."""
    out_file, err_file = logs / "stdout.txt", logs / "stderr.txt"
    with out_file.open("w") as out, err_file.open("w") as err:
        process = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=err, start_new_session=True)
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while process.poll() is None and time.monotonic() < deadline:
            seen |= descendants(process.pid)
            if ready(out_file.read_text(errors="replace"), seen):
                break
            time.sleep(POLL_S)
        assert process.poll() is None, f"ended before the interrupt:\n{err_file.read_text()}"
        os.killpg(process.pid, signal.SIGINT)
        seen |= descendants(process.pid)
        try:
            code = process.wait(timeout=EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            hung = subprocess.run(
                ["ps", "-o", "pid,stat,wchan:20,cmd", "-g", str(process.pid)],
                capture_output=True,
                text=True,
            ).stdout
            raise AssertionError(f"no exit {EXIT_TIMEOUT_S} s after SIGINT:\n{hung}") from None
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
@pytest.mark.parametrize("delay_s", [0.0, 0.5])
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
