"""Ctrl-C on a local sweep: DVC's queue workers and everything they started stop within seconds,
loaded machine or not, and the sweep's experiments read as removed (queued) or failed (running).

DVC's workers are detached daemons (dvc_task's ManagedProcess, each in its own process group:
the spawning `dvc queue start` fork, the worker, its `dvc exp exec-run` and the stage's command).
`dvc queue kill` / `dvc queue stop --kill` ask them to stop through Celery, which under load took
minutes and left the stage's process running. So the processes go first, by the pids DVC records
under .dvc/tmp/exps (each process group, then any child left, SIGTERM then SIGKILL); DVC's
bookkeeping follows, every call bounded.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

PROCESS_INFO_DIR = Path(".dvc/tmp/exps")  # dvc_task's <name>.json files: {"pid": ..., ...}
PROC = Path("/proc")
KILL_GRACE_S = 3.0  # after SIGTERM, before SIGKILL
POLL_S = 0.1
DVC_CALL_TIMEOUT_S = 60.0  # one bookkeeping call of DVC's, on a loaded machine
STATUS_ROW = re.compile(r"^\S+\s+(\S+)\s+.*\b(Queued|Running)\s*$")


def _cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(PROC / str(pid) / "cwd"))
    except OSError:
        return None


def _parent(pid: int) -> int | None:
    try:  # /proc/PID/stat: "pid (comm) state ppid ...", comm may hold spaces
        return int((PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _ours(pid: int, root: Path) -> bool:
    """A live process working in this project: a recorded pid that was reused is not ours."""
    cwd = _cwd(pid)
    return cwd is not None and cwd.is_relative_to(root)


def queue_processes(root: Path) -> set[int]:
    """The live processes of this project's DVC queue: the recorded workers and experiment runs,
    their process groups and their descendants."""
    root = root.resolve()
    recorded = set()
    for info in (root / PROCESS_INFO_DIR).rglob("*.json"):
        try:
            pid = json.loads(info.read_text()).get("pid")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(pid, int) and pid > 0 and _ours(pid, root):
            recorded.add(pid)
    groups = set()
    for pid in recorded:
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            continue
    groups.discard(os.getpgid(0))  # never our own group (a worker is never in it)
    found = set(recorded)
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) in groups:
                    found.add(int(entry.name))
            except ProcessLookupError:
                continue
    return found | _descendants(found)


def _descendants(pids: set[int]) -> set[int]:
    parents = {
        int(entry.name): _parent(int(entry.name))
        for entry in PROC.iterdir()
        if entry.name.isdigit()
    }
    found, grew = set(), True
    while grew:
        new = {child for child, parent in parents.items() if parent in pids | found} - found - pids
        found |= new
        grew = bool(new)
    return found


def _signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            continue


def kill_processes(pids: set[int]) -> set[int]:
    """SIGTERM, a short grace, then SIGKILL; the pids still alive afterwards (none, normally)."""
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE_S
    while (alive := {pid for pid in pids if _cwd(pid) is not None}) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    _signal_all(alive, signal.SIGKILL)
    time.sleep(POLL_S)
    return {pid for pid in alive if _cwd(pid) is not None}


def _dvc(root: Path, *args: str) -> str:
    """A bounded DVC call; its output, or '' when it failed or took too long."""
    try:
        done = subprocess.run(
            [str(Path(sys.executable).with_name("dvc")), *args],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=DVC_CALL_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return ""
    return done.stdout if done.returncode == 0 else ""


def stop_queue(root: Path, names: set[str]) -> None:
    """Kill every process of the project's queue (a sweep owns it while it runs), then drop
    `names` still queued and mark every experiment that was running as failed (so starting the
    sweep again requeues it)."""
    kill_processes(queue_processes(root))
    states = {
        match[1]: match[2]
        for line in _dvc(root, "queue", "status").splitlines()
        if (match := STATUS_ROW.match(line))
    }
    queued = sorted(name for name in names if states.get(name) == "Queued")
    running = sorted(name for name, state in states.items() if state == "Running")
    if queued:
        _dvc(root, "queue", "remove", *queued)
    if running:
        _dvc(root, "queue", "kill", *running)
    kill_processes(queue_processes(root))  # a worker `dvc queue start` spawned meanwhile
